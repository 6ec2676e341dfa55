"""``medcnn models``: the installed models, each described by its own bundle's metadata.

A model's input and headline numbers are written once, in its ``metadata.json``
(``medcnn.input``; ``medcnn.headline``: labels and the ``eval_metrics`` keys they show), so
the list cannot disagree with the model card's numbers.
"""

from __future__ import annotations

from medcnn.catalog import installed_models, model_list, read_metadata


def headline(metadata: dict) -> str:
    """The model's headline metrics, as "label value" pairs."""
    metrics = metadata.get("eval_metrics", {})
    parts = []
    for label, key in metadata.get("medcnn", {}).get("headline", []):
        value = metrics
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:.3f}")
    return "; ".join(parts) or "not measured"


def describe_models(paths_only: bool = False) -> list[str]:
    """One block of lines per installed model (or ``name<TAB>folder`` lines with
    ``paths_only``)."""
    folders = installed_models()
    lines = []
    for model in model_list():
        folder = folders[model["id"]]
        if paths_only:
            lines.append(f"{model['id']}\t{folder}")
            continue
        lines += [
            f"{model['id']} (version {model['version']})",
            f"  task:    {model['task']}",
            f"  input:   {model['input']}",
            f"  metrics: {headline(read_metadata(folder))}",
            f"  bundle:  {folder}",
        ]
    return lines

"""The MONAI bundle that ships the model: where it is, whether to trust it, and loading it.

A bundle's configs can run Python (``$`` expressions) and its weights are a pickle-based file,
so MedCNN loads only the bundle it ships, or one the user explicitly marks as trusted, and only
weights whose SHA-256 matches the bundle's ``metadata.json``, with ``weights_only=True``.

Which bundles are installed and where is ``medcnn.catalog``'s business (it needs no torch);
this module verifies and loads one. A click reads the bundle without MONAI (``load_engine``,
``load_patch_spec``): importing it is a third of a cold click.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from medcnn.catalog import (
    NODULE_MODEL,
    XRAY_MODEL,
    bundles_dir,
    default_bundle_dir,
    installed_models,
    model_of,
    read_metadata,
)
from medcnn.errors import ModelIntegrityError
from medcnn.nodule.grouped import GroupedEnsemble
from medcnn.nodule.network import ensemble_from_state_dict
from medcnn.nodule.preprocessing import PatchSpec
from medcnn.xray.preprocessing import RadiographSpec

__all__ = [
    "NODULE_MODEL",
    "XRAY_MODEL",
    "bundles_dir",
    "default_bundle_dir",
    "installed_models",
    "model_of",
    "read_metadata",
]

WEIGHTS = Path("models") / "model.pt"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sign_weights(bundle_dir: Path, state: Mapping[str, torch.Tensor]) -> str:
    """Save ``state`` as the bundle's weights and write their SHA-256 into its
    ``metadata.json``, the one check every load makes; returns the SHA-256.

    The only way MedCNN writes a bundle's weights (releases, benchmark bundles, test bundles),
    so the file and its checksum cannot be written apart.
    """
    weights = Path(bundle_dir) / WEIGHTS
    weights.parent.mkdir(parents=True, exist_ok=True)
    partial = weights.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(weights)
    digest = sha256_of(weights)
    metadata = read_metadata(bundle_dir)
    metadata.setdefault("medcnn", {})["weights_sha256"] = digest
    metadata_path = Path(bundle_dir) / "configs" / "metadata.json"
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
    return digest


def check_trusted(bundle_dir: Path, trusted: bool) -> None:
    """Only the shipped bundle runs unless the user said another one is trusted."""
    if trusted:
        return
    try:
        shipped = default_bundle_dir(model_of(Path(bundle_dir)))
    except ModelIntegrityError:
        shipped = None
    if Path(bundle_dir).resolve() != shipped:
        raise ModelIntegrityError(
            f"The bundle {bundle_dir} is not the one MedCNN ships; bundles can run code, so pass "
            "--trust-bundle if you trust it."
        )


def verified_weights_path(bundle_dir: Path) -> tuple[Path, str]:
    """The weights file, after its SHA-256 matched ``metadata.json``."""
    metadata = read_metadata(bundle_dir)
    expected = metadata.get("medcnn", {}).get("weights_sha256")
    path = Path(bundle_dir) / WEIGHTS
    if not path.exists():
        raise ModelIntegrityError(f"The model weights {path} are missing; reinstall MedCNN.")
    actual = sha256_of(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"The model weights {path} do not match the SHA-256 in the bundle's metadata.json "
            "(tampered or corrupted); reinstall MedCNN."
        )
    return path, actual


def _preprocessing(bundle_dir: Path | str | None, spec_type: type, model: str) -> Any:
    """The preprocessing definition of the bundle's ``inference.json`` (``preprocessing``), as
    ``spec_type`` (``PatchSpec``, ``RadiographSpec``).

    Read as plain JSON, as MONAI's ``ConfigParser`` reads a section of literal numbers; a value
    that is not a number (a ``@`` reference or ``$`` expression) is refused, not evaluated, and
    so is a missing one: the spec has no defaults to fall back on, so a bundle cannot silently
    run with numbers other than its own.
    """
    bundle_dir = Path(bundle_dir) if bundle_dir else default_bundle_dir(model)
    path = bundle_dir / "configs" / "inference.json"
    try:
        values = json.loads(path.read_text()).get("preprocessing", {})
        if not isinstance(values, dict):
            raise TypeError("its preprocessing is not a section of numbers")
    except (OSError, json.JSONDecodeError, AttributeError, TypeError) as error:
        raise ModelIntegrityError(
            f"The bundle's {path} cannot be read ({error}); reinstall MedCNN."
        ) from error
    spec: dict[str, Any] = {}
    missing = [field.name for field in fields(spec_type) if field.name not in values]
    if missing:
        raise ModelIntegrityError(
            f"The bundle's {path} lacks preprocessing.{', preprocessing.'.join(missing)}; "
            "write the number there (the shipped bundle's inference.json has them all)."
        )
    for field in fields(spec_type):
        value = values[field.name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelIntegrityError(
                f"The bundle's {path} gives preprocessing.{field.name} as {value!r}, not a "
                "number; write the number there."
            )
        spec[field.name] = value
    return spec_type(**spec)


def load_patch_spec(bundle_dir: Path | str | None = None) -> PatchSpec:
    """The lung nodule model's patch geometry and HU window."""
    return _preprocessing(bundle_dir, PatchSpec, NODULE_MODEL)


def load_radiograph_spec(bundle_dir: Path | str | None = None) -> RadiographSpec:
    """The chest X-ray model's input size and intensity scaling."""
    return _preprocessing(bundle_dir, RadiographSpec, XRAY_MODEL)


def network_arguments(bundle_dir: Path) -> dict[str, Any]:
    """The literal arguments of the bundle's ``network_def`` (its ``_target_`` and references
    left out), read as JSON: what the network is built with, by training as by a click."""
    path = Path(bundle_dir) / "configs" / "inference.json"
    try:
        section = json.loads(path.read_text())["network_def"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelIntegrityError(
            f"The bundle's {path} has no readable network_def ({error}); reinstall MedCNN."
        ) from error
    return {
        key: value
        for key, value in section.items()
        if not key.startswith("_") and not (isinstance(value, str) and value[:1] in "@$")
    }


def configured_class(bundle_dir: Path, section: str) -> type:
    """The class a section of the bundle's ``inference.json`` names by ``_target_``
    (``network_def``, ``preprocessing``, ``analyzer``): MedCNN's own classes only, imported
    here, as MONAI's ``ConfigParser`` would, but without running any of the config."""
    path = Path(bundle_dir) / "configs" / "inference.json"
    try:
        target = json.loads(path.read_text())[section]["_target_"]
        module_name, _, class_name = str(target).rpartition(".")
        if not module_name.startswith("medcnn."):
            raise ValueError(f"{target} is not one of MedCNN's classes")
        found = getattr(importlib.import_module(module_name), class_name)
    except (
        OSError,
        json.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        ImportError,
        AttributeError,
    ) as error:
        raise ModelIntegrityError(
            f"The bundle's {path} has no usable {section}._target_ ({error}); reinstall MedCNN."
        ) from error
    return found


def load_network(bundle_dir: Path, trusted: bool = False) -> tuple[torch.nn.Module, dict]:
    """The verified network of the bundle's ``network_def`` (its class and literal arguments),
    in eval mode, and the model's description."""
    state, info, path = _verified_state(bundle_dir, trusted)
    network_type = configured_class(bundle_dir, "network_def")
    try:
        model = network_type(**network_arguments(bundle_dir))
        model.load_state_dict(state)
    except Exception as error:
        raise _not_our_model(path, error) from error
    return model.eval(), info


def load_engine(bundle_dir: Path, trusted: bool = False) -> tuple[GroupedEnsemble, dict]:
    """The verified model as the engine runs it (``medcnn.nodule.grouped``), and its metadata.

    Loaded into ``medcnn.nodule.network``'s definition, which checks every key and shape, then
    regrouped once, here rather than on a click.
    """
    state, info, path = _verified_state(bundle_dir, trusted)
    window = load_patch_spec(bundle_dir).hu_window
    try:
        engine = GroupedEnsemble.of(ensemble_from_state_dict(state, window))
    except Exception as error:
        raise _not_our_model(path, error) from error
    return engine, info


def _verified_state(
    bundle_dir: Path, trusted: bool
) -> tuple[Mapping[str, torch.Tensor], dict, Path]:
    """The weights' state dict after the trust and SHA-256 checks, the model's description,
    and the weights' path."""
    check_trusted(bundle_dir, trusted)
    metadata = read_metadata(bundle_dir)
    path, sha = verified_weights_path(bundle_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError("not a state dict")
    except Exception as error:
        raise _not_our_model(path, error) from error
    info = {
        "id": model_of(Path(bundle_dir)),
        "name": metadata.get("name", "medcnn"),
        "version": metadata.get("version", "unknown"),
        "weights_sha256": sha,
        "threshold": float(metadata.get("medcnn", {}).get("threshold", 0.5)),
    }
    return state, info, path


def _not_our_model(path: Path, error: Exception) -> ModelIntegrityError:
    """A pickle, key or shape error: the file is not our model."""
    return ModelIntegrityError(
        f"The model weights {path} cannot be loaded ({type(error).__name__}); reinstall MedCNN."
    )

"""Every installed model behind one door: which model an input needs, and running it.

The input decides. A point in a 3D scan goes to the lung nodule model; a 2D radiograph, which
has no point, to the chest X-ray model. ``--model`` names one; a mismatch (a point on a
radiograph, a CT without a point) is refused in one sentence before anything is read.
Each model is loaded the first time it is needed and kept, so a worker or a batch pays for it
once. ``result.json`` says which model answered and why (``model.id``, ``model.chosen_because``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from medcnn.app.analysis import FileRequest, Progress
from medcnn.bundle import configured_class
from medcnn.catalog import default_bundle_dir, installed_models, model_of, needs_point
from medcnn.errors import UsageError
from medcnn.outputs.result import Result
from medcnn.outputs.writing import check_result_folder
from medcnn.reading.dimensions import is_two_dimensional


def available_models(bundle: Path | str | None = None) -> dict[str, Path]:
    """The installed models' bundles, ``bundle`` (``--bundle``) replacing the one of its model."""
    models = installed_models()
    if bundle is not None:
        models[model_of(Path(bundle))] = Path(bundle).resolve()
    return models


def takes_point(model: str, models: dict[str, Path] | None = None) -> bool:
    """Whether ``model`` judges a point (its ``metadata.json`` says)."""
    models = installed_models() if models is None else models
    if model not in models:
        raise UsageError(
            f"There is no model {model!r}; choose one of {', '.join(models)} (medcnn models "
            "lists them)."
        )
    return needs_point(models[model])


class ModelAnalyzer(Protocol):
    model_info: dict
    threshold: float

    def analyze_file(
        self,
        image: Path | str,
        point: Sequence[float] | None,
        out_dir: Path | str,
        lps: bool = False,
        progress: Progress | None = None,
        series_uid: str | None = None,
        overlay: bool = False,
        chosen_because: str | None = None,
        dicom: bool = False,
    ) -> Result: ...

    def analyze_files(self, requests: Sequence[FileRequest]) -> list[Result | Exception]: ...


def the_model_that(takes: bool, models: dict[str, Path] | None = None) -> str:
    """The one available model that takes a point (``takes``) or judges a whole image."""
    models = installed_models() if models is None else models
    found = [model for model in models if takes_point(model, models) == takes]
    what = "a point in a 3D scan" if takes else "a whole 2D image"
    if not found:
        raise UsageError(f"No installed model judges {what}; reinstall MedCNN.")
    if len(found) > 1:
        raise UsageError(
            f"Several installed models judge {what} ({', '.join(found)}); choose one with --model."
        )
    return found[0]


def choose_model(
    image: Path | str,
    point: Sequence[float] | None,
    model: str | None = None,
    models: dict[str, Path] | None = None,
) -> tuple[str, str]:
    """The model for an input, and why, in a sentence for ``result.json``; ``models`` are the
    available ones (default: the installed)."""
    two_d = is_two_dimensional(image)
    if model is None and point is None and two_d is False:
        raise UsageError(
            f"{image} is a 3D scan: the {the_model_that(True, models)} model judges a nodule at "
            "a point; give it with --point R A S."
        )
    wanted = model or the_model_that(point is not None, models)
    point_needed = takes_point(wanted, models)
    if point_needed and point is None:
        raise UsageError(
            f"The {wanted} model judges a nodule at a point; give it with --point R A S."
        )
    if not point_needed and point is not None:
        raise UsageError(
            f"The {wanted} model judges a whole radiograph and takes no point; leave out --point."
        )
    if point_needed and two_d is True:
        raise UsageError(
            f"{image} is a 2D radiograph, which the {the_model_that(False, models)} model "
            "judges whole; leave out --point (and --model)."
        )
    if model is not None:
        return wanted, f"--model {model} was given"
    if point_needed:
        return wanted, "a point was given in a 3D scan"
    return wanted, "no point was given and the image is a 2D radiograph"


class Engine:
    """The installed models, each loaded on first use.

    ``bundle`` replaces the shipped bundle of the model it is (``--bundle``, with
    ``trusted``)."""

    def __init__(self, bundle: Path | str | None = None, trusted: bool = False) -> None:
        self.bundle = Path(bundle).resolve() if bundle else None
        self.trusted = trusted
        self.models = available_models(self.bundle)
        self._loaded: dict[str, ModelAnalyzer] = {}

    def analyzer(self, model: str) -> ModelAnalyzer:
        if model not in self._loaded:
            if model not in self.models:
                raise UsageError(
                    f"The model {model} is not installed (installed: "
                    f"{', '.join(self.models)}); reinstall MedCNN."
                )
            bundle = (  # --bundle where it is of this model, else the model's installed one
                self.bundle if model_of_bundle(self.bundle) == model else default_bundle_dir(model)
            )
            # The code that runs a model is its bundle's choice: inference.json's analyzer.
            analyzer_type = configured_class(self.models[model], "analyzer")
            self._loaded[model] = analyzer_type(bundle, trusted=self.trusted)
        return self._loaded[model]

    def load_all(self) -> None:
        """Load every installed model now (a worker, so that no click pays for it)."""
        for model in self.models:
            self.analyzer(model)

    def describe(self) -> list[dict]:
        """The loaded models, as the worker's ``ready`` line lists them."""
        return [
            {
                **{k: analyzer.model_info[k] for k in ("id", "name", "version", "weights_sha256")},
                "threshold": analyzer.threshold,
                "needs_point": takes_point(model, self.models),
            }
            for model, analyzer in self._loaded.items()
        ]

    def analyze_file(
        self,
        image: Path | str,
        point: Sequence[float] | None,
        out_dir: Path | str,
        lps: bool = False,
        progress: Progress | None = None,
        series_uid: str | None = None,
        overlay: bool = False,
        model: str | None = None,
        dicom: bool = False,
    ) -> Result:
        """Choose the model for the input, run it, write its files; the result as written."""
        chosen, because = choose_model(image, point, model, self.models)
        check_result_folder(Path(out_dir))  # a folder that cannot take the result stops us now
        return self.analyzer(chosen).analyze_file(
            image,
            point,
            out_dir,
            lps,
            progress,
            series_uid,
            overlay,
            chosen_because=because,
            dicom=dicom,
        )

    def analyze_files(
        self, requests: Sequence[FileRequest], model: str | None = None
    ) -> list[Result | Exception]:
        """Each request through the model it needs, those of one model together."""
        outcomes: list[Result | Exception | None] = [None] * len(requests)
        by_model: dict[str, list[tuple[int, FileRequest]]] = {}
        for index, request in enumerate(requests):
            try:
                chosen, because = choose_model(request.image, request.point, model, self.models)
            except Exception as error:
                outcomes[index] = error
                continue
            with_reason = replace(request, chosen_because=because)
            by_model.setdefault(chosen, []).append((index, with_reason))
        for chosen, group in by_model.items():
            try:
                answers = self.analyzer(chosen).analyze_files([r for _, r in group])
            except Exception as error:  # the model itself cannot load: each of its rows says so
                answers = [error] * len(group)
            for (index, _), answer in zip(group, answers, strict=True):
                outcomes[index] = answer
        return outcomes  # type: ignore[return-value]


def model_of_bundle(bundle: Path | None) -> str | None:
    return model_of(bundle) if bundle is not None else None

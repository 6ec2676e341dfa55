"""The module's user settings, typed, and their round trip through a settings store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

AUTOMATIC = ""  # the model choice that lets the image decide (the engine's own rule)
AUTOMATIC_TITLE = "Automatic: the image decides"


class SettingsStore(Protocol):
    """What ``qt.QSettings`` offers (and a dict-backed stand-in can): ``value``/``setValue``."""

    def value(self, key: str, defaultValue: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...


@dataclass
class Parameters:
    """Which model answers, how results are shown and whether they are also saved as DICOM
    into Slicer's DICOM database (``saveDicom``); the analysis itself has no knobs: each
    model's bundle defines it. ``model`` is an installed model's id, or ``AUTOMATIC``."""

    heatmapOpacity: float = 0.5
    heatmapThreshold: float = 0.2
    centerViewsOnNodule: bool = True
    showSegmentation3D: bool = True
    model: str = AUTOMATIC
    saveDicom: bool = False

    PREFIX = "MedCNN/"

    def save(self, settings: SettingsStore) -> None:
        for name, value in asdict(self).items():
            settings.setValue(self.PREFIX + name, value)

    @classmethod
    def load(cls, settings: SettingsStore) -> Parameters:
        parameters = cls()
        for item in fields(cls):
            stored = settings.value(cls.PREFIX + item.name, None)
            if stored is None:
                continue
            default = getattr(parameters, item.name)
            try:
                if isinstance(default, bool):
                    value = stored if isinstance(stored, bool) else str(stored).lower() == "true"
                else:
                    value = type(default)(stored)
            except (TypeError, ValueError):
                continue
            setattr(parameters, item.name, value)
        parameters.heatmapOpacity = min(max(parameters.heatmapOpacity, 0.0), 1.0)
        parameters.heatmapThreshold = min(max(parameters.heatmapThreshold, 0.0), 1.0)
        return parameters

"""The radiograph model's answer: the members' probabilities and where they looked.

A radiograph goes through the ensemble whole (``preprocessing.to_model_input``); several go as
one batch (``predict_radiographs``, for ``medcnn batch``). The heatmap is the members' mean
GradCAM on the network's grid, scaled so that its brightest cell is 1 (GradCAM's usual
per-image scale: it shows where the network looked, not how sure it is; the probability says
that), then resized onto the radiograph's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medcnn.reading.radiograph import Radiograph
from medcnn.tensors import to_array
from medcnn.xray.network import RadiographEnsemble
from medcnn.xray.preprocessing import RadiographSpec, to_image_grid, to_model_input


@dataclass(frozen=True)
class RadiographPrediction:
    member_probabilities: np.ndarray
    # (rows, columns) of the radiograph, 0..1, brightest where the network looked.
    heatmap: np.ndarray

    @property
    def probability(self) -> float:
        return float(self.member_probabilities.mean())

    @property
    def uncertainty(self) -> float:
        """The members' standard deviation: how much models trained on different patients
        disagree."""
        return float(self.member_probabilities.std())


def model_input(radiograph: Radiograph, spec: RadiographSpec) -> torch.Tensor:
    """The network's (1, size, size) input of a radiograph (``preprocessing``)."""
    return to_model_input(radiograph.pixels, spec)


@torch.inference_mode()
def predict_inputs(
    model: RadiographEnsemble, inputs: list[torch.Tensor], shapes: list[tuple[int, int]]
) -> list[RadiographPrediction]:
    """The predictions of prepared inputs, the network run once over all of them."""
    batch = torch.stack(inputs).contiguous(memory_format=torch.channels_last)
    members, heatmaps = model.explain(batch)
    peaks = heatmaps.amax(dim=(1, 2), keepdim=True)
    heatmaps = torch.where(peaks > 0, heatmaps / peaks.clamp_min(1e-12), heatmaps)
    return [
        RadiographPrediction(
            to_array(members[:, i]).astype(float),
            np.clip(to_image_grid(heatmaps[i], *shape), 0.0, 1.0),
        )
        for i, shape in enumerate(shapes)
    ]


def predict_radiographs(
    model: RadiographEnsemble, radiographs: list[Radiograph], spec: RadiographSpec
) -> list[RadiographPrediction]:
    """Every radiograph's prediction, the network run once over all of them."""
    inputs = [model_input(r, spec) for r in radiographs]
    return predict_inputs(model, inputs, [r.shape for r in radiographs])

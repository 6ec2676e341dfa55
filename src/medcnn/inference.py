"""The network's answer for one point: find the nodule's context box, then judge it.

The training volumes of interest show the network only a box around each nodule, so in use
the box is found the same way: segment with a small box, take the nodule's extent plus the
margin, segment again until the box settles (usually two or three passes), then judge the
nodule with test-time flips. Everything here is in patch space; ``analysis`` maps it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medcnn.measure import component_nearest_centre
from medcnn.network import NoduleEnsemble
from medcnn.preprocessing import Patch, PatchSpec, context_box, network_input

MAX_BOX_PASSES = 4
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))


@dataclass(frozen=True)
class Prediction:
    """The ensemble's answer in patch space."""

    member_probabilities: np.ndarray
    member_features: np.ndarray
    segmentation: np.ndarray
    network_input: np.ndarray
    patch: Patch
    box_passes: int

    @property
    def probability(self) -> float:
        return float(self.member_probabilities.mean())

    @property
    def uncertainty(self) -> float:
        """Standard deviation of the members' probabilities: their honest disagreement."""
        return float(self.member_probabilities.std())


def _segment(model: NoduleEnsemble, x: np.ndarray) -> np.ndarray:
    out = model.member_outputs(torch.from_numpy(x)[None])
    return out["segmentation"][0].mean(0).numpy()


def _with_flips(model: NoduleEnsemble, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Member features and probabilities, and the mean segmentation, over the flipped copies."""
    batch = torch.from_numpy(x)[None]
    flipped = torch.cat([batch.flip(dims) if dims else batch for dims in FLIPS])
    out = model.member_outputs(flipped)
    segs = [
        s.flip([d - 1 for d in dims]) if dims else s
        for s, dims in zip(out["segmentation"].mean(1, keepdim=True), FLIPS, strict=True)
    ]
    features = out["features"].mean(0)
    probabilities = model.combine(features)
    return features.numpy(), probabilities.numpy(), torch.stack(segs).mean(0)[0].numpy()


@torch.inference_mode()
def predict(model: NoduleEnsemble, patch: Patch, spec: PatchSpec) -> Prediction:
    """The ensemble's answer for a patch cut with ``sample_patch``."""
    box = context_box(None, spec)
    passes = 0
    while passes < MAX_BOX_PASSES:
        passes += 1
        segmentation = _segment(model, network_input(patch, box, spec))
        new_box = context_box(_central_component(segmentation), spec)
        if np.array_equal(new_box, box):
            break
        box = new_box
    x = network_input(patch, box, spec)
    features, probabilities, segmentation = _with_flips(model, x)
    return Prediction(probabilities, features, segmentation, x, patch, passes)


def _central_component(probability: np.ndarray) -> np.ndarray:
    """The segmented blob at (or nearest to) the centre, ignoring other structures."""
    return component_nearest_centre(probability > 0.5).astype(np.float32)

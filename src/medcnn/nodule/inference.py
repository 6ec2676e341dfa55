"""The network's answer for one point: find the nodule's context box, then judge it.

The training volumes of interest show the network only a box around each nodule, so in use
the box is found the same way: segment the whole cube, take the nodule's extent plus the
margin, segment again until the box settles, then judge the nodule. Everything here is in
patch space; ``analysis`` maps it back.

Two measured choices keep this to two passes for most nodules. On ``lidc_voi``'s 811 nodules
they halve the member passes (13.2 -> 6.4 per nodule), and the cross-validated metrics stay
within the folds' noise:
- The first pass only has to find the nodule in the whole cube, so one member
  (``LOCALISER_MEMBER``) does it; every later pass, and so the judgement, is the ensemble's.
- A box has settled when none of its faces moved by more than ``SETTLED_WITHIN_VOXELS``
  (1 mm). Training draws the box's margin anywhere in 1-6 mm, so the network was taught to
  ignore such a change; asking for the very same box made one nodule in seven swing between
  two boxes a voxel apart until the pass limit.

The box passes run the members together as one grouped network (``medcnn.nodule.grouped``), and the
last box pass, whose input is the judged input itself, is the judgement: the same numbers as
running each member on its own, at a fraction of the cost.

Test-time flips (``FLIPS``) are off in the shipped model, a measured choice: on the patient
folds of ``lidc_voi`` the three flipped copies changed the cross-validated AUC by less than
0.002 and Dice by 0.003-0.006, and cost as much network time as everything else together.
Setting ``FLIPS`` to several axis tuples turns them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from medcnn.nodule.grouped import GroupedEnsemble, GroupedOutputs, as_engine, ensemble_outputs
from medcnn.nodule.measure import component_nearest_centre
from medcnn.nodule.preprocessing import Patch, PatchSpec, context_box, network_input

if TYPE_CHECKING:
    from medcnn.nodule.network import NoduleEnsemble

MAX_BOX_PASSES = 4
LOCALISER_MEMBER = 0
SETTLED_WITHIN_VOXELS = 1
# The unflipped input only; ((), (2,), (3,), (2, 3)) would add three flipped copies.
FLIPS: tuple[tuple[int, ...], ...] = ((),)


@dataclass(frozen=True)
class Prediction:
    """The ensemble's answer in patch space."""

    member_probabilities: np.ndarray
    member_features: np.ndarray
    segmentation: np.ndarray
    network_input: np.ndarray
    patch: Patch
    box_passes: int
    activations: tuple[torch.Tensor, torch.Tensor] | None = None
    """The unflipped input's deepest encoder and ``dec2`` feature maps (grouped layout), from
    which ``explain`` computes the heatmap without running the network again."""

    @property
    def probability(self) -> float:
        return float(self.member_probabilities.mean())

    @property
    def uncertainty(self) -> float:
        """Standard deviation of the members' probabilities: their honest disagreement."""
        return float(self.member_probabilities.std())


def _with_flips(
    engine: GroupedEnsemble, x: np.ndarray, unflipped: GroupedOutputs | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, GroupedOutputs]:
    """Member features and probabilities, and the mean segmentation, over the flipped copies.

    ``unflipped`` is the last context-box pass's answer when it ran on this very input, so only
    the three flipped copies still need the network (a batch, where the members run faster one
    by one than grouped). Returns the unflipped copy's outputs too: the heatmap's activations.
    """
    batch = torch.from_numpy(x)[None]
    if unflipped is None:
        unflipped = ensemble_outputs(engine, batch)
    segmentations, features = unflipped.segmentation, unflipped.features
    if len(FLIPS) > 1:
        flipped = ensemble_outputs(engine, torch.cat([batch.flip(dims) for dims in FLIPS[1:]]))
        segmentations = torch.cat([segmentations, flipped.segmentation])
        features = torch.cat([features, flipped.features])
    segs = [
        s.flip([d - 1 for d in dims]) if dims else s
        for s, dims in zip(segmentations.mean(1, keepdim=True), FLIPS, strict=True)
    ]
    features = features.mean(0)
    probabilities = engine.combine(features)
    segmentation = torch.stack(segs).mean(0)[0]
    return features.numpy(), probabilities.numpy(), segmentation.numpy(), unflipped


@torch.inference_mode()
def predict(model: GroupedEnsemble | NoduleEnsemble, patch: Patch, spec: PatchSpec) -> Prediction:
    """The ensemble's answer for a patch cut with ``sample_patch``."""
    return predict_many(model, [patch], spec)[0]


@torch.inference_mode()
def predict_many(
    model: GroupedEnsemble | NoduleEnsemble, patches: list[Patch], spec: PatchSpec
) -> list[Prediction]:
    """The answers for several patches, the same as ``predict`` on each, computed together.

    Each context-box pass runs the nodules whose box has not settled yet as one batch, which
    is what makes ``medcnn batch`` faster per nodule than one click at a time.
    """
    engine = as_engine(model)
    boxes = [context_box(None, spec) for _ in patches]
    settled: list[GroupedOutputs | None] = [None] * len(patches)
    passes = [0] * len(patches)
    pending = list(range(len(patches)))
    while pending:
        # Every pending nodule is at the same pass: all at the first, or all past it.
        net = localiser(engine) if passes[pending[0]] == 0 else engine
        inputs = np.stack([network_input(patches[i], boxes[i], spec) for i in pending])
        out = ensemble_outputs(net, torch.from_numpy(inputs))
        still = []
        for row, i in enumerate(pending):
            passes[i] += 1
            segmentation = out.segmentation[row].mean(0).numpy()
            new_box = context_box(_central_component(segmentation), spec)
            if net is engine and box_settled(new_box, boxes[i]):
                settled[i] = out.take(row)  # the judged input below is exactly this pass's input
            elif passes[i] < MAX_BOX_PASSES:
                boxes[i] = new_box
                still.append(i)
            else:
                boxes[i] = new_box  # judged with the last box found, in a pass of its own
        pending = still
    predictions = []
    for i, patch in enumerate(patches):
        x = network_input(patch, boxes[i], spec)
        features, probabilities, segmentation, unflipped = _with_flips(engine, x, settled[i])
        activations = (unflipped.encoder, unflipped.decoder)
        predictions.append(
            Prediction(probabilities, features, segmentation, x, patch, passes[i], activations)
        )
    return predictions


def localiser(engine: GroupedEnsemble) -> GroupedEnsemble:
    """The ensemble's ``LOCALISER_MEMBER`` alone (the ensemble itself if it has one member)."""
    return engine if engine.n_members == 1 else engine.subset([LOCALISER_MEMBER])


def box_settled(new_box: np.ndarray, box: np.ndarray) -> bool:
    """Whether no face of ``new_box`` lies more than ``SETTLED_WITHIN_VOXELS`` from ``box``'s."""
    return bool(np.abs(_box_faces(new_box) - _box_faces(box)).max() <= SETTLED_WITHIN_VOXELS)


def _box_faces(box: np.ndarray) -> np.ndarray:
    """(first, last) voxel index of a box mask along each axis, six numbers."""
    faces = []
    for axis in range(3):
        inside = np.flatnonzero(box.any(axis=tuple(a for a in range(3) if a != axis)))
        faces += [inside[0], inside[-1]]
    return np.array(faces)


def _central_component(probability: np.ndarray) -> np.ndarray:
    """The segmented blob at (or nearest to) the centre, ignoring other structures."""
    return component_nearest_centre(probability > 0.5).astype(np.float32)

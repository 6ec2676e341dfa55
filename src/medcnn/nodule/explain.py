"""The heatmap: where the network looked when it called the nodule malignant.

GradCAM (Selvaraju et al.) on each ensemble member's malignancy logit, at the decoder's 8-voxel
level (``dec2``), which feeds the classifier directly and is fine enough to outline a nodule; the
members' maps are averaged, as their probabilities are.

It is MONAI's ``monai.visualize.GradCAM`` computed without running the network again and
without importing MONAI (a third of a cold click): the logit depends on ``dec2``'s activations
only through their spatial mean, so their gradient needs just the classifier head, applied here
to the activations the prediction already computed, for all members and inputs in one backward
pass. Each member's map is then upsampled trilinearly (what MONAI's ``default_upsampler`` does)
and scaled to [0, 1] as MONAI's normaliser does, but the right way up (``_scaled_to_unit``);
``tests/test_speed_equivalence.py`` checks the maps against MONAI's ``GradCAM``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medcnn.nodule.grouped import GroupedEnsemble
from medcnn.tensors import to_array, to_tensor


def malignancy_heatmap(
    engine: GroupedEnsemble,
    x: np.ndarray,
    activations: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> np.ndarray:
    """Class-activation map for the malignant class, in [0, 1], on the input's grid.

    ``activations`` are ``Prediction.activations`` of this input (deepest encoder level and
    ``dec2``); without them the network runs once to get them.
    """
    if activations is None:
        with torch.inference_mode():
            out = engine(to_tensor(x)[None])
        activations = (out.encoder, out.decoder)
    return malignancy_heatmaps(engine, [activations], x.shape[1:])[0]


def malignancy_heatmaps(
    engine: GroupedEnsemble,
    activations: list[tuple[torch.Tensor, torch.Tensor]],
    spatial: tuple[int, ...],
) -> np.ndarray:
    """The maps of several inputs at once, (B, *spatial): each exactly ``malignancy_heatmap``'s,
    since every input's logit depends on its own activations only."""
    encoder = torch.cat([a[0] for a in activations])
    decoder = torch.cat([a[1] for a in activations])
    heat = to_array(_member_gradcams(engine, encoder, decoder, tuple(spatial)).mean(1))
    low = heat.min(axis=tuple(range(1, heat.ndim)), keepdims=True)
    span = heat.max(axis=tuple(range(1, heat.ndim)), keepdims=True) - low
    scaled = np.divide(heat - low, span, out=np.zeros_like(heat), where=span > 0)
    return scaled.astype(np.float32)


def _member_gradcams(
    engine: GroupedEnsemble, encoder: torch.Tensor, decoder: torch.Tensor, spatial: tuple[int, ...]
) -> torch.Tensor:
    """Each member's GradCAM map (B, M, *spatial), as MONAI's ``GradCAM(member's logit,
    "net.dec2")`` gives it.

    A member's logit is its classifier head on the spatial means of its own channels of both
    maps, so one backward pass over the sum of all logits gives every member's gradient at
    ``d2`` (dec2's output, where MONAI's backward hook would read it).
    """
    with torch.inference_mode(False), torch.enable_grad():
        acti = decoder.clone().requires_grad_(True)
        logits = engine.member_logits(encoder.clone(), acti)
        (grad,) = torch.autograd.grad(logits.sum(), acti)
    acti = acti.detach()
    batch, members, rest = grad.shape[0], engine.n_members, grad.shape[2:]
    weights = grad.reshape(batch, grad.shape[1], -1).mean(2).view(batch, -1, *[1] * len(rest))
    weighted = (weights * acti).reshape(batch, members, -1, *rest)
    cam = F.relu(weighted.sum(2))
    up = F.interpolate(cam, size=spatial, mode="trilinear", align_corners=False)
    return _scaled_to_unit(up.reshape(batch * members, 1, *spatial)).reshape(up.shape)


def _scaled_to_unit(cam: torch.Tensor) -> torch.Tensor:
    """Each map of the batch scaled from (min, max) to (0, 1): one minus MONAI's
    ``default_normalizer``, whose (1, 0) puts 1 where the network looked least. A constant map
    ``c`` becomes ``1 - c``, as there."""
    flat = cam.reshape(cam.shape[0], -1)
    shape = (-1, *[1] * (cam.ndim - 1))
    low, high = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    span = high - low
    return torch.where(span > 0, (cam - low) / torch.where(span > 0, span, 1.0), 1.0 - cam)

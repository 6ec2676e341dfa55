"""The heatmap: where the network looked when it called the nodule malignant.

GradCAM (Selvaraju et al.) on each ensemble member's malignancy logit, at the decoder's 8-voxel
level (``dec2``), which feeds the classifier directly and is fine enough to outline a nodule; the
members' maps are averaged, as their probabilities are.

It is MONAI's ``monai.visualize.GradCAM`` computed without running the network again: the
logit depends on ``dec2``'s activations only through their spatial mean, so their gradient
needs just the classifier head, applied here to the activations the prediction already
computed. MONAI's own upsampler then finishes each member's map, and its normaliser's scaling
is done for the whole batch at once (``_scaled_to_unit``; MONAI's takes a map at a time, a
twentieth of a batch nodule's time); ``tests/test_speed_equivalence.py`` checks the maps
against MONAI's ``GradCAM``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize.visualizer import default_upsampler

from medcnn.grouped import ensemble_outputs
from medcnn.network import NoduleEnsemble, NoduleNet

TARGET_LAYER = "net.dec2"


def malignancy_heatmap(
    model: NoduleEnsemble,
    x: np.ndarray,
    activations: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> np.ndarray:
    """Class-activation map for the malignant class, in [0, 1], on the input's grid.

    ``activations`` are ``Prediction.activations`` of this input (deepest encoder level and
    ``dec2``); without them the network runs once to get them.
    """
    if activations is None:
        with torch.inference_mode():
            out = ensemble_outputs(model, torch.from_numpy(x)[None])
        activations = (out.encoder, out.decoder)
    return malignancy_heatmaps(model, [activations], x.shape[1:])[0]


def malignancy_heatmaps(
    model: NoduleEnsemble,
    activations: list[tuple[torch.Tensor, torch.Tensor]],
    spatial: tuple[int, ...],
) -> np.ndarray:
    """The maps of several inputs at once, (B, *spatial): each exactly ``malignancy_heatmap``'s,
    since every input's logit depends on its own activations only."""
    encoder = torch.cat([a[0] for a in activations])
    decoder = torch.cat([a[1] for a in activations])
    n = len(model.members)
    maps = [
        _member_gradcam(
            member, _member_part(encoder, index, n), _member_part(decoder, index, n), spatial
        )
        for index, member in enumerate(model.members)
    ]
    heat = np.mean(maps, axis=0)
    low = heat.min(axis=tuple(range(1, heat.ndim)), keepdims=True)
    span = heat.max(axis=tuple(range(1, heat.ndim)), keepdims=True) - low
    scaled = np.divide(heat - low, span, out=np.zeros_like(heat), where=span > 0)
    return scaled.astype(np.float32)


def _member_part(grouped: torch.Tensor, member: int, n_members: int) -> torch.Tensor:
    """Member ``member``'s channels of a feature map in the grouped layout."""
    channels = grouped.shape[1] // n_members
    return grouped[:, member * channels : (member + 1) * channels]


def _member_gradcam(
    member: NoduleNet, encoder: torch.Tensor, decoder: torch.Tensor, spatial: tuple[int, ...]
) -> np.ndarray:
    """One member's GradCAM map, as MONAI's ``GradCAM(member's logit, "net.dec2")`` gives it.

    ``NoduleNet.forward`` computes the logit as ``malignancy(head([pool(s3), pool(d2)]))``;
    the same modules run here on the member's saved activations, and autograd gives the
    gradient at ``d2`` (dec2's output, where MONAI's backward hook would read it).
    """
    with torch.inference_mode(False), torch.enable_grad():
        acti = decoder.clone().requires_grad_(True)
        pooled = torch.cat([member.pool(encoder.clone()), member.pool(acti)], 1)
        logit = member.malignancy(member.head(pooled))
        (grad,) = torch.autograd.grad(logit[:, 0].squeeze().sum(), acti)
    acti = acti.detach()
    b, c, *rest = grad.shape
    weights = grad.reshape(b, c, -1).mean(2).view(b, c, *[1] * len(rest))
    cam = F.relu((weights * acti).sum(1, keepdim=True))
    return _scaled_to_unit(default_upsampler(spatial)(cam))[:, 0].numpy()


def _scaled_to_unit(cam: torch.Tensor) -> torch.Tensor:
    """Each map of the batch scaled from (min, max) to (0, 1): one minus MONAI's
    ``default_normalizer``, whose (1, 0) puts 1 where the network looked least. A constant map
    ``c`` becomes ``1 - c``, as there."""
    flat = cam.reshape(cam.shape[0], -1)
    shape = (-1, *[1] * (cam.ndim - 1))
    low, high = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    span = high - low
    return torch.where(span > 0, (cam - low) / torch.where(span > 0, span, 1.0), 1.0 - cam)

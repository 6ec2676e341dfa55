"""The naive MONAI reference pipeline: what one writes first with MONAI's transforms.

Load the whole scan (``LoadImage``), orient it to RAS, resample all of it to the network's 1 mm
(``Spacing``), crop the 32^3 cube around the point, then the same inference algorithm as MedCNN
(context-box passes) run the straightforward way, each member on its own, and MONAI's
``GradCAM`` with its own forward and backward per member. It is the baseline of the
"naive / MedCNN" ratio; its numbers are not MedCNN's (resampling the whole scan first blurs the
patch slightly differently).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from monai.transforms import EnsureChannelFirst, LoadImage, Orientation, SpatialCrop, SpatialPad
from monai.transforms import Spacing as SpacingTransform
from monai.visualize import GradCAM
from torch import nn

from medcnn.nodule.inference import (
    LOCALISER_MEMBER,
    MAX_BOX_PASSES,
    _central_component,
    box_settled,
)
from medcnn.nodule.network import NoduleEnsemble
from medcnn.nodule.preprocessing import HU_AIR, Patch, PatchSpec, context_box, network_input


def naive_analyze(
    model: NoduleEnsemble, image: str, point_ras: np.ndarray, spec: PatchSpec
) -> tuple[dict, dict[str, float]]:
    """Probability and heatmap at a point, and the time of each stage."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    scan = LoadImage(image_only=True, reader="ITKReader")(image)
    scan = EnsureChannelFirst()(scan)
    timings["read"] = time.perf_counter() - started

    started = time.perf_counter()
    scan = Orientation(axcodes="RAS")(scan)
    scan = SpacingTransform(pixdim=(spec.spacing_mm,) * 3, mode="bilinear", padding_mode="zeros")(
        scan.float()
    )
    affine = np.asarray(scan.affine, dtype=float)
    centre = np.rint(np.linalg.inv(affine) @ np.append(point_ras, 1.0))[:3].astype(int)
    cube = SpatialCrop(roi_center=centre.tolist(), roi_size=spec.shape)(scan)
    cube = SpatialPad(spatial_size=spec.shape, value=HU_AIR)(cube)
    hu = cube[0].numpy().astype(np.float32)
    patch = Patch(hu=hu, coverage=np.ones(spec.shape, dtype=np.float32), affine=np.eye(4))
    timings["preprocess"] = time.perf_counter() - started

    started = time.perf_counter()
    probabilities, x = _predict_member_by_member(model, patch, spec)
    timings["network"] = time.perf_counter() - started

    started = time.perf_counter()
    heat = _gradcam(model, x)
    timings["heatmap"] = time.perf_counter() - started
    return {"probability": float(probabilities.mean()), "heatmap_max": float(heat.max())}, timings


def _predict_member_by_member(
    model: NoduleEnsemble, patch: Patch, spec: PatchSpec
) -> tuple[np.ndarray, np.ndarray]:
    localiser = model.members[LOCALISER_MEMBER]
    with torch.inference_mode():
        box = context_box(None, spec)
        for step in range(MAX_BOX_PASSES):
            x = torch.from_numpy(network_input(patch, box, spec))[None]
            if step == 0:
                segmentation = torch.sigmoid(localiser(x)["segmentation"])[0, 0].numpy()
            else:
                segmentation = model.member_outputs(x)["segmentation"][0].mean(0).numpy()
            new_box = context_box(_central_component(segmentation), spec)
            if (step > 0 or len(model.members) == 1) and box_settled(new_box, box):
                break
            box = new_box
        x = network_input(patch, box, spec)
        out = model.member_outputs(torch.from_numpy(x)[None])
        probabilities = model.combine(out["features"][0]).numpy()
    return probabilities, x


class _MalignancyLogit(nn.Module):
    """One member's malignancy logit alone, the single score GradCAM explains."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["malignancy"]


def _gradcam(model: NoduleEnsemble, x: np.ndarray) -> np.ndarray:
    batch = torch.from_numpy(x)[None]
    maps = []
    for member in model.members:
        cam = GradCAM(nn_module=_MalignancyLogit(member).eval(), target_layers="net.dec2")
        with torch.enable_grad():
            maps.append(cam(batch, class_idx=0)[0, 0].detach().numpy())
    return np.mean(maps, axis=0)

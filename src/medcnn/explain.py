"""The heatmap: where the network looked when it called the nodule malignant.

MONAI's GradCAM on each ensemble member's malignancy logit, at the decoder's 8-voxel level,
which feeds the classifier directly and is fine enough to outline a nodule; the members' maps
are averaged, as their probabilities are.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.visualize import GradCAM

from medcnn.network import MalignancyLogit, NoduleEnsemble

TARGET_LAYER = "net.dec2"


def malignancy_heatmap(model: NoduleEnsemble, x: np.ndarray) -> np.ndarray:
    """Class-activation map for the malignant class, in [0, 1], on the input's grid."""
    batch = torch.from_numpy(x)[None]
    maps = []
    for member in model.members:
        wrapped = MalignancyLogit(member).eval()
        cam = GradCAM(nn_module=wrapped, target_layers=TARGET_LAYER)
        with torch.enable_grad():
            maps.append(cam(batch, class_idx=0)[0, 0].detach().numpy())
    heat = np.mean(maps, axis=0)
    span = float(heat.max() - heat.min())
    return ((heat - heat.min()) / span if span > 0 else np.zeros_like(heat)).astype(np.float32)

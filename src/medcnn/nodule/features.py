"""What a segmented nodule looks like in HU: its size, density, calcification and shape.

The readers who labelled LIDC-IDRI judged a nodule by its size and by what they could see in it.
Out of the eight descriptors they recorded, calcification adds the most to size: about a third of
the benign nodules are calcified, and almost no malignant one is. A calcified voxel is simply
bright (above about 200 HU). The CNN, trained on 800 nodules, does not learn that reliably, but
it can be read straight off the HU values under the network's own segmentation. So each member
reports these measurements of its segmentation beside its logits, and the combining head
(``medcnn.training.calibration``), fitted on out-of-fold predictions, weighs them.

Everything is computed in patch space (1 mm voxels) from the network's input and one member's
segmentation probabilities, weighted by those probabilities, so it is the same in training,
evaluation and use, and smooth in the segmentation.
"""

from __future__ import annotations

import torch

from medcnn.nodule.measure import CALCIFIED_HU

NAMES = (
    "log_volume",
    "log_axial_area",
    "mean_hu",
    "hu_spread",
    "calcified_share",
    "brightest_hu",
    "ground_glass_share",
    "compactness",
)
GROUND_GLASS_HU = -400.0


def nodule_features(
    window: torch.Tensor,
    segmentation: torch.Tensor,
    hu_min: float,
    hu_max: float,
    calcified_hu: float = CALCIFIED_HU,
    ground_glass_hu: float = GROUND_GLASS_HU,
) -> torch.Tensor:
    """(B, N, N, N) input channel 0 (scaled HU), (B, M, N, N, N) probabilities -> (B, M, F).

    The largest axial cross-section stands for the diameter the readers measured on axial slices.
    Densities are in HU, up to the input's ``measured_hu_max`` (``medcnn.nodule.preprocessing``), so
    calcium keeps its real density rather than the CNN window's top. Compactness is
    volume^(2/3) over surface area: highest for a sphere, lower for a lobulated or spiculated
    outline. A member that segments nothing gets finite values.

    ``hu_min`` and ``hu_max`` are the window the input was scaled with (``PatchSpec.hu_window``,
    the bundle's preprocessing): the same numbers that made the input turn it back into HU.
    """
    hu_range = hu_max - hu_min
    calcified_window = (calcified_hu - hu_min) / hu_range
    ground_glass_window = (ground_glass_hu - hu_min) / hu_range
    w = segmentation
    value = window[:, None].expand_as(w)
    volume = w.sum((2, 3, 4))
    weight = volume.clamp_min(1e-3)
    mean = (w * value).sum((2, 3, 4)) / weight
    spread = ((w * (value - mean[..., None, None, None]) ** 2).sum((2, 3, 4)) / weight).sqrt()
    calcified = (w * (value > calcified_window)).sum((2, 3, 4)) / weight
    ground_glass = (w * (value < ground_glass_window)).sum((2, 3, 4)) / weight
    inside = torch.where(w > 0.5, value, torch.zeros_like(value)).amax((2, 3, 4))
    brightest = torch.where(volume > 0.5, inside, mean)
    surface = (
        w.diff(dim=2).abs().sum((2, 3, 4))
        + w.diff(dim=3).abs().sum((2, 3, 4))
        + w.diff(dim=4).abs().sum((2, 3, 4))
    )
    compactness = weight ** (2 / 3) / (surface + 1.0)
    axial_area = w.sum((2, 3)).amax(-1)  # the patch's last axis is S: its slices are axial
    return torch.stack(
        [
            torch.log1p(volume),
            torch.log1p(axial_area),
            mean * hu_range + hu_min,
            spread * hu_range,
            calcified,
            brightest * hu_range + hu_min,
            ground_glass,
            compactness,
        ],
        -1,
    )

"""Volumes as SimpleITK images, for tests that write a scan the way ITK-based tools do (LPS)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medcnn.volume import LPS_TO_RAS, Volume


def to_itk_image(volume: Volume) -> sitk.Image:
    """The same voxels at the same world positions, as ITK stores them: (k, j, i) and LPS."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return image

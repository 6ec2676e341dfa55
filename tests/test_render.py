"""The overlay picture (``medcnn analyze --overlay``, the README's top image): what it draws at a
pixel is what the scan holds at that world position, in the radiological convention (the
patient's right on the image's left, anterior at the top), whatever the scan's orientation."""

from __future__ import annotations

import numpy as np
import pytest
from test_geometry import blob_scan, scan_affine

from medcnn.outputs.render import axial_plane
from medcnn.volume import Volume, apply_affine

FOV_MM, PIXEL_MM = 60.0, 0.5


@pytest.mark.parametrize(
    ("flips", "angles", "spacing"),
    [
        ((1, 1, 1), (0.0, 0.0, 0.0), (0.7, 0.7, 2.5)),  # RAS, thick slices
        ((-1, -1, 1), (0.0, 0.0, 0.0), (0.8, 0.6, 1.0)),  # LPS, as DICOM stores it
        ((-1, 1, -1), (0.3, -0.2, 0.15), (0.9, 0.9, 1.25)),  # flipped and oblique
    ],
)
def test_a_structure_is_drawn_where_it_is_in_the_patient(flips, angles, spacing) -> None:
    shape = (90, 90, 40)
    affine = scan_affine(flips, angles, spacing, (-30.0, 40.0, -120.0))
    point = apply_affine(affine, np.array([[45.0, 45.0, 20.0]]))[0]
    # a ball 12 mm to the patient's right of the point and 8 mm anterior, in the point's plane
    ball = point + np.array([12.0, 8.0, 0.0])
    scan = blob_scan(affine, shape, np.linalg.solve(affine[:3, :3], ball - affine[:3, 3]))

    plane = axial_plane(scan, point, FOV_MM, PIXEL_MM, fill=-1000.0)

    centre = (plane.shape[0] - 1) / 2
    bright = np.argwhere(plane > -450)
    row, column = bright.mean(axis=0)
    assert row == pytest.approx(centre - 8.0 / PIXEL_MM, abs=1.0)  # anterior is up
    assert column == pytest.approx(centre - 12.0 / PIXEL_MM, abs=1.0)  # patient's right is left
    assert len(bright) * PIXEL_MM**2 == pytest.approx(np.pi * 3.0**2, rel=0.25)  # its 6 mm disc


def test_outside_the_scan_is_drawn_as_air() -> None:
    scan = Volume(np.zeros((20, 20, 20), np.float32), np.eye(4))  # soft tissue, R 0..19 mm
    point = np.array([2.0, 10.0, 10.0])
    plane = axial_plane(scan, point, FOV_MM, PIXEL_MM, fill=-1000.0)
    row = plane[plane.shape[0] // 2]

    def at_r(r_mm: float) -> float:  # column of a world R on the centre row
        return row[int(round((FOV_MM / 2 - PIXEL_MM / 2 - (r_mm - point[0])) / PIXEL_MM))]

    assert at_r(10.0) == 0.0 and at_r(2.0) == 0.0  # in the scan
    assert at_r(25.0) == -1000.0 and at_r(-10.0) == -1000.0  # beyond it on either side: air

"""The network's contract: shapes, the bundle-style forward, the one-member view."""

from __future__ import annotations

import torch

from medcnn.bundle import load_patch_spec
from medcnn.nodule.grouped import ensemble_outputs
from medcnn.nodule.network import (
    DESCRIPTORS,
    NODULE_FEATURES,
    NoduleEnsemble,
    NoduleNet,
    member_subset,
    pixel_shuffle_3d,
)

WINDOW = load_patch_spec().hu_window  # the shipped bundle's preprocessing


def test_nodule_net_outputs() -> None:
    out = NoduleNet().eval()(torch.rand(2, 2, 32, 32, 32))
    assert out["malignancy"].shape == (2, 1)
    assert out["descriptors"].shape == (2, len(DESCRIPTORS))
    assert out["segmentation"].shape == (2, 1, 32, 32, 32)


def test_pixel_shuffle_places_each_channel_in_its_subvoxel() -> None:
    x = torch.zeros(1, 8, 2, 2, 2)
    x[0, 5, 1, 0, 1] = 1.0  # channel 5 = (a, b, c) = (1, 0, 1)
    y = pixel_shuffle_3d(x)
    assert y.shape == (1, 1, 4, 4, 4)
    assert torch.nonzero(y)[0].tolist() == [0, 0, 3, 0, 3]


def test_ensemble_forward_is_two_class_probabilities_and_views_share_weights() -> None:
    model = NoduleEnsemble(n_members=3, hu_window=WINDOW).eval()
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        probs = model(x)
        per_member = model.member_outputs(x)["probability"]
        view = member_subset(model, [1]).member_outputs(x)["probability"]
    assert probs.shape == (1, 2)
    assert torch.allclose(probs.sum(1), torch.ones(1))
    assert torch.allclose(probs[:, 1], per_member.mean(1))
    assert torch.allclose(view[:, 0], per_member[:, 1])


def test_the_cnn_sees_the_window_and_only_the_measurements_see_above_it() -> None:
    """HU above the window's top (input above 1) changes the brightest-HU measurement but
    nothing the CNN computes, in the plain and the grouped ensemble alike."""
    torch.manual_seed(0)
    model = NoduleEnsemble(n_members=2, hu_window=WINDOW).eval()
    window = torch.rand(1, 2, 32, 32, 32) * 0.9
    window[:, 1] = 1.0
    dense = window.clone()
    dense[0, 0, 12:20, 12:20, 12:20] = 1.0
    denser = dense.clone()
    denser[0, 0, 14:18, 14:18, 14:18] = 1.5  # 1100 HU: calcium
    cnn = 2 + len(DESCRIPTORS)  # logit, rating, descriptors; then the measurements
    brightest = cnn + NODULE_FEATURES.index("brightest_hu")
    with torch.no_grad():
        for outputs in (model.member_outputs, lambda x: ensemble_outputs(model, x).__dict__):
            a, b = outputs(dense), outputs(denser)
            assert torch.equal(a["segmentation"], b["segmentation"])
            assert torch.equal(a["features"][..., :cnn], b["features"][..., :cnn])
            assert (b["features"][..., brightest] > a["features"][..., brightest]).all()

"""The network's contract: shapes, the bundle-style forward, the one-member view."""

from __future__ import annotations

import torch

from medcnn.network import DESCRIPTORS, NoduleEnsemble, NoduleNet, member_subset, pixel_shuffle_3d


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
    model = NoduleEnsemble(n_members=3).eval()
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        probs = model(x)
        per_member = model.member_outputs(x)["probability"]
        view = member_subset(model, [1]).member_outputs(x)["probability"]
    assert probs.shape == (1, 2)
    assert torch.allclose(probs.sum(1), torch.ones(1))
    assert torch.allclose(probs[:, 1], per_member.mean(1))
    assert torch.allclose(view[:, 0], per_member[:, 1])

"""The network's contract: shapes, the bundle-style forward, the one-member view, and that the
plain-PyTorch definition is the MONAI-built network of old, key for key and number for number."""

from __future__ import annotations

import pytest
import torch
from monai_reference import MonaiNoduleNet, member_subset

from medcnn.bundle import default_bundle_dir, load_patch_spec
from medcnn.nodule.grouped import GroupedEnsemble
from medcnn.nodule.network import (
    DESCRIPTORS,
    NODULE_FEATURES,
    NoduleEnsemble,
    NoduleNet,
    ensemble_from_state_dict,
    pixel_shuffle_3d,
)

WINDOW = load_patch_spec().hu_window  # the shipped bundle's preprocessing
SHIPPED_WEIGHTS = default_bundle_dir() / "models" / "model.pt"


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


def test_pixel_shuffle_keeps_each_group_of_eight_channels_apart() -> None:
    """Grouped members' logits (B, M * 8, ...) shuffle into one channel a member."""
    x = torch.rand(2, 24, 3, 3, 3)
    y = pixel_shuffle_3d(x)
    assert y.shape == (2, 3, 6, 6, 6)
    for member in range(3):
        part = pixel_shuffle_3d(x[:, 8 * member : 8 * (member + 1)])
        assert torch.equal(y[:, member : member + 1], part)


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Batch-norm statistics and PReLU slopes that are not the defaults, so each counts."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.0, 0.5)
    return net.eval()


def assert_same_outputs(plain: torch.nn.Module, monai: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        a, b = plain(x), monai(x)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def test_the_plain_network_is_the_monai_built_one() -> None:
    """Same state-dict keys and shapes, the same initial weights from the same seed, and the
    same outputs, to the bit, on the same (non-default) weights."""
    torch.manual_seed(3)
    plain = NoduleNet()
    torch.manual_seed(3)
    monai = MonaiNoduleNet()
    plain_state, monai_state = plain.state_dict(), monai.state_dict()
    assert list(plain_state) == list(monai_state)
    for key in plain_state:
        assert torch.equal(plain_state[key], monai_state[key]), key
    randomized(monai)
    plain.load_state_dict(monai.state_dict())
    assert_same_outputs(plain.eval(), monai, torch.rand(2, 2, 32, 32, 32) * 1.2)


def test_the_shipped_weights_load_unchanged_and_give_the_monai_built_answers() -> None:
    if not SHIPPED_WEIGHTS.exists():
        pytest.skip("no trained weights in the bundle yet (the release puts them there)")
    state = torch.load(SHIPPED_WEIGHTS, weights_only=True)
    model = ensemble_from_state_dict(state, WINDOW)
    assert set(model.state_dict()) == set(state)
    x = torch.rand(1, 2, 32, 32, 32)
    for index, member in enumerate(model.members):
        monai = MonaiNoduleNet()
        monai.load_state_dict(member.state_dict())
        assert_same_outputs(member, monai.eval(), x)
        if index == 1:
            break  # two members are proof enough; each takes a second on a laptop


def test_weights_of_another_network_are_refused() -> None:
    state = dict(NoduleEnsemble(n_members=2, hu_window=WINDOW).state_dict())
    del state["members.1.dec2.adn.N.running_var"]
    with pytest.raises(RuntimeError, match="running_var"):
        ensemble_from_state_dict(state, WINDOW)


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
        engine = GroupedEnsemble.of(model)
        for outputs in (model.member_outputs, lambda x: engine(x).__dict__):
            a, b = outputs(dense), outputs(denser)
            assert torch.equal(a["segmentation"], b["segmentation"])
            assert torch.equal(a["features"][..., :cnn], b["features"][..., :cnn])
            assert (b["features"][..., brightest] > a["features"][..., brightest]).all()

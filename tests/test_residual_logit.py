"""Training the malignancy logit beside the measurements: the offset learns what they say,
touches neither them nor the shipped network, and leaves nothing behind in ``model.pt``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medcnn.bundle import load_patch_spec
from medcnn.nodule.features import NAMES
from medcnn.nodule.network import NoduleNet
from medcnn.nodule.preprocessing import normalize_hu
from medcnn.training.residual_logit import MeasurementOffset, ResidualTraining

SPEC = load_patch_spec()  # the shipped bundle's preprocessing


def _balls(radii: list[float], n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij"))
    distance = np.sqrt((grid**2).sum(0))
    masks = np.stack([(distance <= r).astype(np.float32) for r in radii])
    hu = np.where(masks > 0, 30.0, -850.0).astype(np.float32)
    return torch.from_numpy(normalize_hu(hu, SPEC)), torch.from_numpy(masks)[:, None]


def test_the_offset_starts_at_zero_and_sends_no_gradient_to_the_measurements() -> None:
    window, mask = _balls([3.0, 5.0, 8.0, 10.0])
    window.requires_grad_(True)
    mask.requires_grad_(True)
    offset = MeasurementOffset(SPEC.hu_window)
    shift = offset(window, mask)
    assert shift.shape == (4, 1) and bool((shift == 0).all())
    shift.sum().backward()
    assert window.grad is None and mask.grad is None


def test_the_offset_learns_that_larger_nodules_are_malignant() -> None:
    radii = [2.0, 3.0, 4.0, 5.0, 7.0, 8.0, 9.0, 10.0]
    window, mask = _balls(radii)
    label = torch.tensor([[0.0]] * 4 + [[1.0]] * 4)
    offset = MeasurementOffset(SPEC.hu_window)
    optimizer = torch.optim.AdamW(offset.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):
        loss = F.binary_cross_entropy_with_logits(offset(window, mask), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert float(offset.linear.weight.detach()[0, NAMES.index("log_volume")]) > 0


def test_the_trained_logit_is_the_networks_plus_the_offset() -> None:
    torch.manual_seed(0)
    net = NoduleNet().eval()
    residual = ResidualTraining(net, MeasurementOffset(SPEC.hu_window)).eval()
    torch.nn.init.constant_(residual.offset.linear.bias, 0.7)
    window, mask = _balls([4.0, 6.0])
    x = torch.stack([window, torch.ones_like(window)], 1)
    with torch.no_grad():
        plain, trained = net(x), residual(x, mask)
    torch.testing.assert_close(
        trained["malignancy"], plain["malignancy"] + 0.7 * residual.offset.gain
    )
    torch.testing.assert_close(trained["segmentation"], plain["segmentation"])
    assert set(residual.state_dict()) - set(f"net.{k}" for k in net.state_dict()) == {
        f"offset.{k}" for k in residual.offset.state_dict()
    }

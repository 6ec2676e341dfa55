"""The radiograph networks: MedCNN's, and the founding document's as the baseline to beat.

``FoundingCNN`` is the worked example that MedCNN's founding document teaches, layer for layer:
two 3x3 convolution + 2x2 max-pooling blocks of 32 and 64 filters, a dense layer of 128 and one
output, on 64 x 64 x 3 inputs (the grey radiograph repeated in the three channels).

``RadiographNet`` is MedCNN's: a small residual CNN on the 128 x 128 grey radiograph whose last
feature map (16 x 16) is pooled into one linear output. With a global average pool straight
into the output, GradCAM's channel weights are the output layer's own, so a heatmap needs no
backward pass (class activation mapping, the special case of GradCAM for this head).

``RadiographEnsemble`` holds the members (one per cross-validation fold) and the calibration
fitted on their out-of-fold predictions; the probability is the members' mean, the uncertainty
their spread.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class FoundingCNN(nn.Module):
    """The founding document's network: conv 32, pool, conv 64, pool, dense 128, one output."""

    input_size = 64
    input_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dense = nn.Linear(64 * 14 * 14, 128)
        self.out = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of pneumonia for a batch of (B, 3, 64, 64) inputs."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.out(F.relu(self.dense(x.flatten(1))))[:, 0]


class _Residual(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (strided 1x1 where the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class RadiographNet(nn.Module):
    """MedCNN's member: 128 x 128 grey in, a 16 x 16 feature map, one logit out."""

    input_channels = 1

    def __init__(self, channels: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        first, second, third, last = channels
        self.stem = nn.Sequential(
            nn.Conv2d(1, first, 3, 2, 1, bias=False), nn.BatchNorm2d(first), nn.ReLU()
        )
        self.blocks = nn.Sequential(
            _Residual(first, second, 2),
            _Residual(second, third, 2),
            _Residual(third, last, 1),
            _Residual(last, last, 1),
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(last, 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last (B, C, size/8, size/8) feature map, which the heatmap reads."""
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of pneumonia for a batch of (B, 1, size, size) inputs."""
        return self.out(self.dropout(self.feature_map(x).mean(dim=(2, 3))))[:, 0]

    def logit_and_heatmap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit and its GradCAM map (B, size/8, size/8): the output layer's weights over
        the feature map, rectified, in logit units per position."""
        features = self.feature_map(x)
        contribution = torch.einsum("bchw,c->bhw", features, self.out.weight[0])
        logit = contribution.mean(dim=(1, 2)) + self.out.bias[0]
        return logit, F.relu(contribution)


class RadiographEnsemble(nn.Module):
    """The members and the calibration: probability = mean of the members' calibrated
    probabilities, uncertainty = their standard deviation."""

    def __init__(self, n_members: int, channels: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            RadiographNet(tuple(channels), dropout) for _ in range(n_members)
        )
        # Platt scaling fitted on the members' out-of-fold logits: p = sigmoid(a * logit + b).
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        a, b = self.calibration[0], self.calibration[1]  # type: ignore[index]
        return torch.sigmoid(a * logits + b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities (B, 2) of no pneumonia and pneumonia, as MONAI bundles give."""
        probability = self.explain(x)[0].mean(dim=0)
        return torch.stack([1 - probability, probability], dim=1)

    @torch.jit.export
    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(members, B) calibrated probabilities and the members' mean GradCAM (B, h, w)."""
        logits: list[torch.Tensor] = []
        heatmaps: list[torch.Tensor] = []
        for member in self.members:
            logit, heatmap = member.logit_and_heatmap(x)  # type: ignore[operator]
            logits.append(logit)
            heatmaps.append(heatmap)
        return self.calibrated(torch.stack(logits)), torch.stack(heatmaps).mean(dim=0)


def for_inference(model: RadiographEnsemble) -> RadiographEnsemble:
    """A copy of the ensemble as a click runs it: batch norms folded into the convolutions
    before them (in eval mode a batch norm is a per-channel scale and shift) and the weights in
    channels-last order, where oneDNN's convolutions are fastest; 1.6 times faster per
    radiograph here, the same answers up to rounding (``tests/test_radiograph_bundle.py``)."""
    fused = copy.deepcopy(model).eval()
    for member in fused.members:
        assert isinstance(member, RadiographNet)
        member.stem = nn.Sequential(_fold(member.stem[0], member.stem[1]), member.stem[2])
        for block in member.blocks:
            assert isinstance(block, _Residual)
            block.conv1 = _fold(block.conv1, block.norm1)
            block.conv2 = _fold(block.conv2, block.norm2)
            block.norm1, block.norm2 = nn.Identity(), nn.Identity()  # type: ignore[assignment]
            if isinstance(block.shortcut, nn.Sequential):
                block.shortcut = _fold(block.shortcut[0], block.shortcut[1])
    return fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _fold(conv: nn.Module, norm: nn.Module) -> nn.Conv2d:
    assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
    return fuse_conv_bn_eval(conv, norm)

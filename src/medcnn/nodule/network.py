"""The network: one small 3D encoder-decoder that segments the nodule and judges it.

One network, not two: the segmentation decoder and the malignancy head share an encoder, so the
masks of all 811 training nodules (rating 3 included) teach the features the classifier uses, and
one forward pass on a laptop CPU answers both questions.

Defined here once, in plain PyTorch, for everything that builds it: training, the bundle's
``network_def``, the TorchScript export and a click (``medcnn.nodule.grouped`` regroups these
modules' weights for speed). A click never imports MONAI, a third of a cold start. The blocks
are MONAI's ``Convolution`` and ``ResidualUnit`` as the network uses them, with their submodule
names, so the state dict is the one the MONAI-built network of releases up to 0.3.4 saved
(``tests/monai_reference.py`` holds that construction and checks the two agree).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from medcnn.nodule.features import NAMES as NODULE_FEATURES
from medcnn.nodule.features import nodule_features

DESCRIPTORS = (
    "calcification",
    "internal_structure",
    "lobulation",
    "margin",
    "sphericity",
    "spiculation",
    "subtlety",
    "texture",
)


class ConvBlock(nn.Sequential):
    """A 3x3x3 convolution (transposed to double the size), batch norm, PReLU; ``conv``,
    ``adn.N`` and ``adn.A`` as MONAI's ``Convolution(norm="batch", act="prelu")`` names them."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, transposed: bool = False
    ) -> None:
        conv: nn.Module
        if transposed:  # output_padding makes the output exactly ``stride`` times the input
            conv = nn.ConvTranspose3d(
                in_channels, out_channels, 3, stride, padding=1, output_padding=stride - 1
            )
        else:
            conv = nn.Conv3d(in_channels, out_channels, 3, stride, padding=1)
        norm_act = nn.Sequential(
            OrderedDict([("N", nn.BatchNorm3d(out_channels)), ("A", nn.PReLU())])
        )
        super().__init__(OrderedDict([("conv", conv), ("adn", norm_act)]))


class StridedResidualUnit(nn.Module):
    """Two ``ConvBlock``s, the first strided, plus a strided 3x3x3 convolution of the input:
    MONAI's ``ResidualUnit(strides=2, subunits=2)``, with its names (``conv.unit0``,
    ``conv.unit1``, ``residual``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        units = [
            ("unit0", ConvBlock(in_channels, out_channels, stride)),
            ("unit1", ConvBlock(out_channels, out_channels)),
        ]
        self.conv = nn.Sequential(OrderedDict(units))
        self.residual = nn.Conv3d(in_channels, out_channels, 3, stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.residual(x)


class NoduleNet(nn.Module):
    """Input (B, 2, N, N, N): windowed HU and the context box. N divisible by 8.

    Returns a dict: ``malignancy`` logit (B, 1), ``rating`` (B, 1) and ``descriptors`` (B, 8)
    auxiliary regressions on a 0-1 scale, ``segmentation`` logits (B, 1, N, N, N), and the two
    feature maps the classifier pools, which the heatmap explains: ``encoder`` (the deepest
    encoder level, B, 64, N/8, N/8, N/8) and ``decoder`` (``dec2``, B, 32, N/4, N/4, N/4).
    """

    def __init__(
        self,
        in_channels: int = 2,
        channels: tuple[int, int, int, int] = (8, 16, 32, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.stem = ConvBlock(in_channels, c0)
        self.enc1 = StridedResidualUnit(c0, c1)
        self.enc2 = StridedResidualUnit(c1, c2)
        self.enc3 = StridedResidualUnit(c2, c3)
        self.up3 = ConvBlock(c3, c2, stride=2, transposed=True)
        self.dec2 = ConvBlock(2 * c2, c2)
        self.up2 = ConvBlock(c2, c1, stride=2, transposed=True)
        self.dec1 = ConvBlock(2 * c1, c1)
        # Full-resolution segmentation without a full-resolution decoder: each half-resolution
        # voxel predicts its 2x2x2 children (a 3D pixel shuffle), which keeps training on CPUs fast.
        self.seg_out = nn.Conv3d(c1, 8, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c3 + c2, 64), nn.PReLU()
        )
        self.malignancy = nn.Linear(64, 1)
        self.rating = nn.Linear(64, 1)
        self.descriptors = nn.Linear(64, len(DESCRIPTORS))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s0 = self.stem(x.clamp(max=1.0))  # the window's top; above it is for the measurements
        s1 = self.enc1(s0)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        d2 = self.dec2(torch.cat([self.up3(s3), s2], 1))
        d1 = self.dec1(torch.cat([self.up2(d2), s1], 1))
        features = self.head(torch.cat([self.pool(s3), self.pool(d2)], 1))
        return {
            "malignancy": self.malignancy(features),
            "rating": self.rating(features),
            "descriptors": self.descriptors(features),
            "segmentation": pixel_shuffle_3d(self.seg_out(d1)),
            "encoder": s3,
            "decoder": d2,
        }


def pixel_shuffle_3d(x: torch.Tensor) -> torch.Tensor:
    """(B, 8 * K, n, n, n) -> (B, K, 2n, 2n, 2n): channel 8k + (a, b, c) of each group of eight
    becomes sub-voxel (a, b, c) of output channel k (one channel a member when grouped)."""
    b, c, d, h, w = x.shape
    x = x.reshape(b, c // 8, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c // 8, 2 * d, 2 * h, 2 * w)


def combined_probability(
    features: torch.Tensor,
    feature_mean: torch.Tensor,
    feature_std: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
) -> torch.Tensor:
    """The combining head, a logistic regression: member features (..., F) -> calibrated
    probabilities (...)."""
    z = (features - feature_mean) / feature_std
    return torch.sigmoid(z @ head_weight + head_bias)


class NoduleEnsemble(nn.Module):
    """The shipped model: one NoduleNet per cross-validation fold, plus the head that combines
    each member's outputs into a calibrated probability.

    ``forward`` gives what a MONAI classification bundle gives, calibrated class probabilities
    (B, 2) for benign and malignant. ``member_outputs`` gives everything per member, which the
    engine uses for the segmentation, the heatmap and the spread of the members (uncertainty).

    The combining head is a logistic regression, fitted on out-of-fold predictions, over what
    each member sees in the image: its malignancy logit, its estimates of the readers' rating
    and eight descriptors, and the size, density, calcification and shape of its segmentation
    (``medcnn.nodule.features``). With its default weights it is the plain sigmoid of the
    malignancy logit.

    ``hu_window`` is the bundle's preprocessing window (``PatchSpec.hu_window``), with which the
    measurements turn the input back into HU; the network itself sees only the scaled input.
    """

    n_features: int = 2 + len(DESCRIPTORS) + len(NODULE_FEATURES)

    def __init__(
        self,
        n_members: int = 5,
        channels: tuple[int, int, int, int] = (8, 16, 32, 64),
        *,
        hu_window: tuple[float, float],
    ) -> None:
        super().__init__()
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.members = nn.ModuleList(NoduleNet(channels=channels) for _ in range(n_members))
        weight = torch.zeros(self.n_features)
        weight[0] = 1.0
        self.register_buffer("feature_mean", torch.zeros(self.n_features))
        self.register_buffer("feature_std", torch.ones(self.n_features))
        self.register_buffer("head_weight", weight)
        self.register_buffer("head_bias", torch.zeros(1))

    def features(self, out: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """(B, F): malignancy logit, rating and descriptor estimates, then the segmented
        nodule's measurements on the input ``x`` (``medcnn.nodule.features``)."""
        hu_min, hu_max = self.hu_window
        measured = nodule_features(x[:, 0], torch.sigmoid(out["segmentation"]), hu_min, hu_max)
        measured = measured[:, 0]
        return torch.cat([out["malignancy"], out["rating"], out["descriptors"], measured], 1)

    def combine(self, features: torch.Tensor) -> torch.Tensor:
        return combined_probability(  # buffers: TorchScript cannot script their annotations
            features,
            self.feature_mean,  # type: ignore[arg-type]
            self.feature_std,  # type: ignore[arg-type]
            self.head_weight,  # type: ignore[arg-type]
            self.head_bias,  # type: ignore[arg-type]
        )

    @torch.jit.export
    def member_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per member: ``probability`` (B, M), ``features`` (B, M, F),
        ``segmentation`` probabilities (B, M, N, N, N); and the members' ``encoder`` and
        ``decoder`` feature maps side by side along the channels (B, M * C, ...)."""
        probabilities: list[torch.Tensor] = []
        features: list[torch.Tensor] = []
        segmentations: list[torch.Tensor] = []
        encoders: list[torch.Tensor] = []
        decoders: list[torch.Tensor] = []
        for member in self.members:
            out = member(x)
            f = self.features(out, x)
            features.append(f[:, None])
            probabilities.append(self.combine(f)[:, None])
            segmentations.append(torch.sigmoid(out["segmentation"]))
            encoders.append(out["encoder"])
            decoders.append(out["decoder"])
        return {
            "probability": torch.cat(probabilities, 1),
            "features": torch.cat(features, 1),
            "segmentation": torch.cat(segmentations, 1),
            "encoder": torch.cat(encoders, 1),
            "decoder": torch.cat(decoders, 1),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        malignant = self.member_outputs(x)["probability"].mean(1, keepdim=True)
        return torch.cat([1 - malignant, malignant], 1)


def ensemble_from_state_dict(
    state: Mapping[str, torch.Tensor], hu_window: tuple[float, float]
) -> NoduleEnsemble:
    """The ensemble these weights are for (as many members as they hold), with them loaded and
    in eval mode; ``hu_window`` is the bundle's preprocessing window. A key or shape that is
    not the network's raises (``load_state_dict``)."""
    members = {key.split(".")[1] for key in state if key.startswith("members.")}
    model = NoduleEnsemble(n_members=len(members), hu_window=hu_window)
    model.load_state_dict(state)
    return model.eval()

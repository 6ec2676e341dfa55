"""The ensemble's members run as one network: each layer a grouped convolution over all members.

A click runs the members on one 32^3 patch several times: the context-box passes, one input at a
time, then the flipped copies. Run member by member, a batch of one gets PyTorch's slow
reference convolution (oneDNN is only chosen for batches, groups or large inputs) and pays the
per-operation overhead once per member. Stacking the members' weights along the channel axis,
with ``groups`` = number of members, computes exactly the same sums in one oneDNN call per
layer, three times faster here: member ``m`` owns channels ``[m * C, (m + 1) * C)`` of every
feature map, and nothing mixes them. For a batch (several nodules of a ``medcnn batch`` run,
or the flipped copies) oneDNN's plain convolutions beat its grouped ones, so
``ensemble_outputs`` runs a batch member by member: both ways give the same numbers.

Both ways fold each batch norm into the convolution before it (``_folded``): in eval mode a
batch norm is a per-channel ``x * scale + shift``, which the convolution's weight and bias can
carry, so each feature map is passed over once fewer (batch norm was 4-5 % of a batch's time).

``GroupedEnsemble`` is built from a ``NoduleEnsemble`` in eval mode and mirrors
``NoduleNet.forward`` and ``NoduleEnsemble.member_outputs`` line by line;
``tests/test_speed_equivalence.py`` checks it against the members run one by one.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from medcnn.network import NoduleEnsemble, NoduleNet
from medcnn.nodule_features import nodule_features


@dataclass(frozen=True)
class GroupedOutputs:
    """``member_outputs``' three tensors, and the activations the heatmap is computed from:
    ``encoder`` (the deepest encoder level, B, M*C3, ...) and ``decoder`` (``dec2``'s output,
    B, M*C2, ...), both in the grouped channel layout."""

    probability: torch.Tensor
    features: torch.Tensor
    segmentation: torch.Tensor
    encoder: torch.Tensor
    decoder: torch.Tensor

    def take(self, index: int) -> GroupedOutputs:
        """One input's outputs, as a batch of one."""
        part = slice(index, index + 1)
        return GroupedOutputs(*(getattr(self, f.name)[part] for f in fields(self)))


class _GroupedConvolution(nn.Module):
    """A MONAI ``Convolution`` block (conv, batch norm, PReLU) of every member, as one."""

    def __init__(self, blocks: list[nn.Module], channels_last: bool = False) -> None:
        super().__init__()
        convs = [b.conv for b in blocks]
        self.conv = _GroupedConv(convs, channels_last)
        norms = [b.adn.N for b in blocks]
        acts = [b.adn.A for b in blocks]
        if any(set(b.adn._modules) != {"N", "A"} for b in blocks) or any(
            a.weight.numel() != 1 for a in acts
        ):
            raise TypeError("only conv -> batch norm -> PReLU blocks can be grouped")
        affines = [_batch_norm_affine(n) for n in norms]
        scale, shift = torch.cat([a[0] for a in affines]), torch.cat([a[1] for a in affines])
        self.conv.weight, self.conv.bias = _folded(
            self.conv.weight, self.conv.bias, scale, shift, self.conv.transposed, len(blocks)
        )
        per_channel = [a.weight.expand(n.num_features) for a, n in zip(acts, norms, strict=True)]
        self.register_buffer("slope", torch.cat(per_channel).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(self.conv(x), self.slope)


def _batch_norm_affine(norm: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch norm in eval mode as ``x * scale + shift`` per channel."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def _folded(
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    transposed: bool,
    groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weight and bias with the per-output-channel ``x * scale + shift`` after
    it folded in: one pass over the feature map fewer, the same sums up to rounding.

    A ``ConvTranspose3d`` keeps its output channels on the weight's second axis, per group.
    """
    kernel = weight.shape[2:]
    if transposed:
        per_group = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], *kernel)
        scaled = per_group * scale.reshape(groups, 1, -1, *[1] * len(kernel))
        folded = scaled.reshape(weight.shape)
    else:
        folded = weight * scale.reshape(-1, *[1] * (weight.ndim - 1))
    return folded.contiguous(), bias * scale + shift


class _GroupedConv(nn.Module):
    """Conv3d or ConvTranspose3d of every member, as one grouped layer.

    ``channels_last``: run it on a channels-last copy of the input, where oneDNN has a fast
    kernel for groups of very few input channels (the stem's two, four times faster here).
    """

    def __init__(self, convs: list[nn.Module], channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        first = convs[0]
        self.transposed = isinstance(first, nn.ConvTranspose3d)
        if first.groups != 1 or not isinstance(first, (nn.Conv3d, nn.ConvTranspose3d)):
            raise TypeError("only plain Conv3d / ConvTranspose3d layers can be grouped")
        self.groups = len(convs)
        self.register_buffer("weight", torch.cat([c.weight for c in convs]).contiguous())
        self.register_buffer("bias", torch.cat([c.bias for c in convs]))
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.output_padding = getattr(first, "output_padding", (0, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return self._convolve(x.contiguous(memory_format=torch.channels_last_3d)).contiguous()
        return self._convolve(x)

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose3d(
                x,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                self.output_padding,
                self.groups,
                self.dilation,
            )
        return F.conv3d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class _GroupedResidualUnit(nn.Module):
    """A MONAI ``ResidualUnit`` (subunits plus a strided residual convolution), grouped."""

    def __init__(self, units: list[nn.Module]) -> None:
        super().__init__()
        names = list(units[0].conv._modules)
        self.subunits = nn.ModuleList(
            _GroupedConvolution([u.conv._modules[n] for u in units]) for n in names
        )
        self.residual = _GroupedConv([u.residual for u in units])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.residual(x)
        for unit in self.subunits:
            x = unit(x)
        return x + residual


def _cat_members(a: torch.Tensor, b: torch.Tensor, members: int) -> torch.Tensor:
    """``torch.cat([a, b], 1)`` done per member, so each member's channels stay together."""
    batch, spatial = a.shape[0], a.shape[2:]
    joined = torch.cat(
        [a.reshape(batch, members, -1, *spatial), b.reshape(batch, members, -1, *spatial)], 2
    )
    return joined.reshape(batch, -1, *spatial)


class GroupedEnsemble(nn.Module):
    """All members of a ``NoduleEnsemble`` in one grouped network; weights copied at build."""

    def __init__(self, model: NoduleEnsemble) -> None:
        super().__init__()
        members: list[NoduleNet] = list(model.members)
        if not members:
            raise ValueError("an ensemble without members cannot be grouped")
        self.n_members = len(members)
        self.in_channels = members[0].stem.conv.in_channels
        self.stem = _GroupedConvolution([m.stem for m in members], channels_last=True)
        self.enc1 = _GroupedResidualUnit([m.enc1 for m in members])
        self.enc2 = _GroupedResidualUnit([m.enc2 for m in members])
        self.enc3 = _GroupedResidualUnit([m.enc3 for m in members])
        self.up3 = _GroupedConvolution([m.up3 for m in members])
        self.dec2 = _GroupedConvolution([m.dec2 for m in members])
        self.up2 = _GroupedConvolution([m.up2 for m in members])
        self.dec1 = _GroupedConvolution([m.dec1 for m in members])
        self.seg_out = _GroupedConv([m.seg_out for m in members])
        hidden = [m.head[2] for m in members]
        self.register_buffer("hidden_weight", torch.stack([h.weight for h in hidden]))
        self.register_buffer("hidden_bias", torch.stack([h.bias for h in hidden]))
        self.register_buffer("hidden_slope", torch.stack([m.head[3].weight for m in members]))
        outputs = [
            torch.cat([m.malignancy.weight, m.rating.weight, m.descriptors.weight]) for m in members
        ]
        output_bias = [
            torch.cat([m.malignancy.bias, m.rating.bias, m.descriptors.bias]) for m in members
        ]
        self.register_buffer("output_weight", torch.stack(outputs))
        self.register_buffer("output_bias", torch.stack(output_bias))
        for name in ("feature_mean", "feature_std", "head_weight", "head_bias"):
            self.register_buffer(name, getattr(model, name).detach().clone())
        self.eval()

    def forward(self, x: torch.Tensor) -> GroupedOutputs:
        """(B, 2, N, N, N) -> each member's outputs, as ``NoduleEnsemble.member_outputs``."""
        m, batch = self.n_members, x.shape[0]
        s0 = self.stem(x.clamp(max=1.0).repeat(1, m, 1, 1, 1))
        s1 = self.enc1(s0)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        d2 = self.dec2(_cat_members(self.up3(s3), s2, m))
        d1 = self.dec1(_cat_members(self.up2(d2), s1, m))
        pooled = torch.cat(
            [s3.mean((2, 3, 4)).reshape(batch, m, -1), d2.mean((2, 3, 4)).reshape(batch, m, -1)], 2
        )
        hidden = torch.einsum("bmi,moi->bmo", pooled, self.hidden_weight) + self.hidden_bias
        hidden = torch.where(hidden >= 0, hidden, hidden * self.hidden_slope)
        heads = torch.einsum("bmi,moi->bmo", hidden, self.output_weight) + self.output_bias
        logits = self.seg_out(d1)
        n = logits.shape[-1]
        shuffled = logits.reshape(batch * m, 2, 2, 2, n, n, n).permute(0, 4, 1, 5, 2, 6, 3)
        segmentation = torch.sigmoid(shuffled.reshape(batch, m, 2 * n, 2 * n, 2 * n))
        features = torch.cat([heads, nodule_features(x[:, 0], segmentation)], 2)
        z = (features - self.feature_mean) / self.feature_std
        probability = torch.sigmoid(z @ self.head_weight + self.head_bias)
        return GroupedOutputs(probability, features, segmentation, s3, d2)


def ensemble_outputs(model: NoduleEnsemble, x: torch.Tensor) -> GroupedOutputs:
    """Every member's outputs for a batch of inputs (B, 2, N, N, N), the fastest exact way.

    One input goes through the grouped twin; a batch goes member by member, in the channels-last
    layout where oneDNN is another 10-15 % faster: together about 1.8 times faster per input
    than the twin on two cores. The activations come in the grouped layout either way.
    """
    if x.shape[0] == 1:
        return grouped_ensemble(model)(x)
    out = folded_ensemble(model).member_outputs(x.contiguous(memory_format=torch.channels_last_3d))
    return GroupedOutputs(
        out["probability"], out["features"], out["segmentation"], out["encoder"], out["decoder"]
    )


_CACHES: dict[str, weakref.WeakKeyDictionary[NoduleEnsemble, tuple[tuple, nn.Module]]] = {
    "grouped": weakref.WeakKeyDictionary(),
    "folded": weakref.WeakKeyDictionary(),
}


def grouped_ensemble(model: NoduleEnsemble) -> GroupedEnsemble:
    """The grouped twin of an ensemble in eval mode, built once and rebuilt if its weights change.

    The weights are copied, so the twin is checked against the ensemble's tensors and their
    version counters (bumped by every in-place change, ``load_state_dict`` included) on each use.
    """
    return _derived(model, "grouped", GroupedEnsemble)  # type: ignore[return-value]


def folded_ensemble(model: NoduleEnsemble) -> NoduleEnsemble:
    """A copy of an ensemble in eval mode whose batch norms are folded into the convolutions
    before them, for batches: the members' own layers, a pass over each feature map fewer.
    Built once and rebuilt if the ensemble's weights change, as ``grouped_ensemble``."""
    return _derived(model, "folded", _fold_batch_norms)  # type: ignore[return-value]


def _fold_batch_norms(model: NoduleEnsemble) -> NoduleEnsemble:
    folded = copy.deepcopy(model)
    for block in folded.modules():
        norm = getattr(getattr(block, "adn", None), "N", None)
        if isinstance(block, Convolution) and isinstance(norm, nn.BatchNorm3d):
            conv = block.conv
            weight, bias = _folded(
                conv.weight, conv.bias, *_batch_norm_affine(norm), conv.transposed, conv.groups
            )
            conv.weight, conv.bias = nn.Parameter(weight), nn.Parameter(bias)
            block.adn.N = nn.Identity()
    return folded.eval()


def _derived(
    model: NoduleEnsemble, kind: str, build: Callable[[NoduleEnsemble], nn.Module]
) -> nn.Module:
    """``build(model)``, kept until the ensemble's weights change (see ``grouped_ensemble``)."""
    if model.training:
        raise ValueError("the ensemble must be in eval mode (model.eval()) to be grouped")
    state = tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))
    cached = _CACHES[kind].get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    with torch.no_grad():
        derived = build(model)
    _CACHES[kind][model] = (state, derived)
    return derived

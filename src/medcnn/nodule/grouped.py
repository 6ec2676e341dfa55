"""The ensemble as the engine runs it: the members' own layers, regrouped for speed.

``GroupedEnsemble.of`` walks a ``NoduleEnsemble`` (``medcnn.nodule.network``, the one definition
of the network) layer by layer and builds, once, the network a click runs:
- **Batch norms folded**: in eval mode a batch norm is a per-channel ``x * scale + shift``,
  which the convolution before it can carry, so each feature map is passed over once fewer.
- **Grouped** (a batch of one: each context-box pass of a click). Each layer is one grouped
  convolution over all members: their weights stacked along the output channels, ``groups`` =
  number of members, member ``m`` owning channels ``[m * C, (m + 1) * C)`` of every feature map.
  A batch of one run member by member gets PyTorch's slow reference convolution (oneDNN is only
  chosen for batches, groups or large inputs) and pays the per-operation overhead once per
  member; grouped, it is one oneDNN call per layer, three times faster here.
- **Member by member** (batches: several nodules of a ``medcnn batch`` run), with each member's
  slice of the same weights and the input channels-last, where oneDNN's plain convolutions beat
  its grouped ones (about 1.8 times faster per input than grouped).
Both ways compute the members' sums up to rounding; ``tests/test_speed_equivalence.py`` checks
them against ``NoduleEnsemble.member_outputs``. The engine holds copies of the weights, taken
when it is built: a model whose weights change needs a new engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from medcnn.nodule.features import nodule_features
from medcnn.nodule.network import (
    ConvBlock,
    NoduleEnsemble,
    StridedResidualUnit,
    combined_probability,
    pixel_shuffle_3d,
)

_LAST = torch.channels_last_3d
_CONVOLUTIONS = (nn.Conv3d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class GroupedOutputs:
    """``NoduleEnsemble.member_outputs``' three tensors, and the activations the heatmap is
    computed from: ``encoder`` (the deepest encoder level, B, M*C3, ...) and ``decoder``
    (``dec2``'s output, B, M*C2, ...), both in the grouped channel layout."""

    probability: torch.Tensor
    features: torch.Tensor
    segmentation: torch.Tensor
    encoder: torch.Tensor
    decoder: torch.Tensor

    def take(self, index: int) -> GroupedOutputs:
        """One input's outputs, as a batch of one."""
        part = slice(index, index + 1)
        return GroupedOutputs(*(getattr(self, f.name)[part] for f in fields(self)))


@dataclass(frozen=True)
class _MemberConv:
    """One member's convolution, the batch norm after it folded in, and its PReLU slope (None
    for a bare convolution)."""

    weight: torch.Tensor
    bias: torch.Tensor
    slope: torch.Tensor | None


def _folded_conv(block: nn.Module) -> tuple[_MemberConv, nn.Conv3d | nn.ConvTranspose3d]:
    """A ``ConvBlock`` or a bare convolution as one ``_MemberConv``, and its convolution."""
    conv = block.conv if isinstance(block, ConvBlock) else block
    if not isinstance(conv, _CONVOLUTIONS) or conv.bias is None:
        raise TypeError(f"no grouped form of {type(block).__name__}")
    weight, bias = conv.weight.detach(), conv.bias.detach()
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm3d)]
    acts = [m for m in block.modules() if isinstance(m, nn.PReLU)]
    if not norms:
        return _MemberConv(weight, bias, None), conv
    (norm,), (act,) = norms, acts
    assert norm.running_var is not None and norm.running_mean is not None
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias.detach() - norm.running_mean * scale
    # A transposed convolution keeps its output channels on the weight's second axis.
    shape = [1] * weight.ndim
    shape[1 if isinstance(conv, nn.ConvTranspose3d) else 0] = -1
    slope = act.weight.detach().expand(bias.shape[0])
    return _MemberConv(weight * scale.reshape(shape), bias * scale + shift, slope), conv


class _Layer(nn.Module):
    """One convolution of every member, stacked along the output channels (the input channels
    of a transposed convolution's weight), with the batch norm after it folded in and its PReLU,
    if the layer has them."""

    weight: torch.Tensor
    bias: torch.Tensor
    slope: torch.Tensor | None

    def __init__(
        self,
        parts: Sequence[_MemberConv],
        stride: int,
        padding: int,
        output_padding: int | None,
    ) -> None:
        """``output_padding`` is None for a plain convolution, a number for a transposed one."""
        super().__init__()
        self.register_buffer("weight", torch.cat([p.weight for p in parts]).contiguous())
        self.register_buffer("bias", torch.cat([p.bias for p in parts]).contiguous())
        slopes = [p.slope for p in parts if p.slope is not None]
        self.register_buffer("slope", torch.cat(slopes).contiguous() if slopes else None)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.transposed = transposed = output_padding is not None
        self.n_members = len(parts)
        self.out_per_member = parts[0].bias.shape[0]
        self.in_per_member = parts[0].weight.shape[0 if transposed else 1]

    @classmethod
    def of(cls, blocks: Sequence[nn.Module]) -> _Layer:
        """The same layer of every member (``ConvBlock``s or bare convolutions)."""
        parts, convs = zip(*(_folded_conv(block) for block in blocks), strict=True)
        conv = convs[0]
        transposed = isinstance(conv, nn.ConvTranspose3d)
        output_padding = _single(conv.output_padding) if transposed else None
        return cls(parts, _single(conv.stride), _single(conv.padding), output_padding)

    def part(self, member: int) -> _MemberConv:
        """One member's weights, sliced out of the stack."""
        out = slice(member * self.out_per_member, (member + 1) * self.out_per_member)
        inp = slice(member * self.in_per_member, (member + 1) * self.in_per_member)
        weight = self.weight[inp] if self.transposed else self.weight[out]
        slope = None if self.slope is None else self.slope[out]
        return _MemberConv(weight, self.bias[out], slope)

    def subset(self, members: Sequence[int]) -> _Layer:
        parts = [self.part(m) for m in members]
        return _Layer(parts, self.stride, self.padding, self.output_padding)

    def forward(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """All members grouped (``member`` None; input B, M*C_in, ...) or one member alone."""
        if member is None:
            weight, bias, slope, groups = self.weight, self.bias, self.slope, self.n_members
        else:
            one = self.part(member)
            weight, bias, slope, groups = one.weight, one.bias, one.slope, 1
        if self.output_padding is not None:
            y = F.conv_transpose3d(
                x, weight, bias, self.stride, self.padding, self.output_padding, groups
            )
        else:
            y = F.conv3d(x, weight, bias, self.stride, self.padding, 1, groups)
        return y if slope is None else F.prelu(y, slope)


def _single(value: int | tuple[int, ...] | str) -> int:
    """A convolution's stride or padding, the same along every axis, as one number."""
    values = (value,) if isinstance(value, int) else value
    if isinstance(values, str) or len(set(values)) != 1:
        raise TypeError(f"no grouped form of a convolution with {value!r}")
    return int(values[0])


class _Residual(nn.Module):
    """A ``StridedResidualUnit`` of every member: two subunits plus the strided residual."""

    def __init__(self, first: _Layer, second: _Layer, residual: _Layer) -> None:
        super().__init__()
        self.first, self.second, self.residual = first, second, residual

    @classmethod
    def of(cls, units: Sequence[StridedResidualUnit]) -> _Residual:
        first, second = (_Layer.of([u.conv[i] for u in units]) for i in range(2))
        return cls(first, second, _Layer.of([u.residual for u in units]))

    def subset(self, members: Sequence[int]) -> _Residual:
        return _Residual(
            *(layer.subset(members) for layer in (self.first, self.second, self.residual))
        )

    def forward(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        return self.second(self.first(x, member), member) + self.residual(x, member)


class _Dense(nn.Module):
    """A linear layer of every member, optionally with a PReLU, applied to each member's own
    features: (B, M, in) -> (B, M, out)."""

    weight: torch.Tensor
    bias: torch.Tensor
    slope: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, slope: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight.contiguous())  # (M, out, in)
        self.register_buffer("bias", bias.contiguous())  # (M, out)
        self.register_buffer("slope", None if slope is None else slope.contiguous())  # (M, 1)

    @classmethod
    def of(cls, layers: Sequence[nn.Module]) -> _Dense:
        """The same ``nn.Linear`` (alone or in a ``Sequential`` with a PReLU after it, and a
        flatten and dropout that eval mode makes no-ops) of every member."""
        linears = [[m for m in layer.modules() if isinstance(m, nn.Linear)] for layer in layers]
        acts = [[m for m in layer.modules() if isinstance(m, nn.PReLU)] for layer in layers]
        if any(len(found) != 1 for found in linears) or len({len(a) for a in acts}) != 1:
            raise TypeError(f"no grouped form of {type(layers[0]).__name__}")
        weight = torch.stack([found[0].weight.detach() for found in linears])
        bias = torch.stack([found[0].bias.detach() for found in linears])
        slope = torch.stack([a[0].weight.detach() for a in acts]) if acts[0] else None
        return cls(weight, bias, slope)

    def subset(self, members: Sequence[int]) -> _Dense:
        index = list(members)
        return _Dense(
            self.weight[index], self.bias[index], None if self.slope is None else self.slope[index]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bmi,moi->bmo", x, self.weight) + self.bias
        return y if self.slope is None else torch.where(y >= 0, y, y * self.slope)


class GroupedEnsemble(nn.Module):
    """The shipped model as the engine runs it; build it with ``GroupedEnsemble.of(model)``.

    Its modules are ``NoduleNet``'s, each holding every member's weights, under the same names;
    ``hu_window`` is the ensemble's (the bundle's preprocessing window).
    """

    stem: _Layer
    enc1: _Residual
    enc2: _Residual
    enc3: _Residual
    up3: _Layer
    dec2: _Layer
    up2: _Layer
    dec1: _Layer
    seg_out: _Layer
    head: _Dense
    malignancy: _Dense
    rating: _Dense
    descriptors: _Dense
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor

    def __init__(
        self,
        layers: Mapping[str, nn.Module],
        combining: Mapping[str, torch.Tensor],
        n_members: int,
        hu_window: tuple[float, float],
    ) -> None:
        super().__init__()
        self.hu_window = hu_window
        for name, layer in layers.items():
            self.add_module(name, layer)
        for name, tensor in combining.items():
            self.register_buffer(name, tensor)
        self.n_members = n_members
        self._subsets: dict[tuple[int, ...], GroupedEnsemble] = {}
        self.eval()

    @classmethod
    def of(cls, model: NoduleEnsemble) -> GroupedEnsemble:
        """The engine's network of a model in eval mode, its weights copied once, now."""
        if model.training:
            raise ValueError("the ensemble must be in eval mode (model.eval()) to be run")
        nets = list(model.members)
        if not nets:
            raise ValueError("an ensemble without members cannot be run")
        # Ordinary tensors even when built inside ``torch.inference_mode``: the heatmap
        # differentiates through the head's weights.
        with torch.inference_mode(False), torch.no_grad():
            layers: dict[str, nn.Module] = {}
            for name, child in nets[0].named_children():
                same = [getattr(net, name) for net in nets]
                if isinstance(child, StridedResidualUnit):
                    layers[name] = _Residual.of(same)
                elif isinstance(child, (ConvBlock, *_CONVOLUTIONS)):
                    layers[name] = _Layer.of(same)
                elif any(True for _ in child.parameters()):
                    layers[name] = _Dense.of(same)
            combining = {
                name: buffer.detach().clone() for name, buffer in model.named_buffers(recurse=False)
            }
        return cls(layers, combining, len(nets), model.hu_window)

    def subset(self, members: Sequence[int]) -> GroupedEnsemble:
        """Some of this ensemble's members (indices into it, in that order), for the
        one-member localiser and for judging a fold's patients with only the members that
        never saw them; sliced from this engine's weights once, then kept."""
        key = tuple(members)
        if not key:
            raise ValueError("an ensemble without members cannot be run")
        if not all(0 <= i < self.n_members for i in key):
            raise IndexError(f"the ensemble has {self.n_members} members; asked for {key}")
        if key not in self._subsets:
            layers = {name: _subset(child, key) for name, child in self.named_children()}
            combining = dict(self.named_buffers(recurse=False))
            self._subsets[key] = GroupedEnsemble(layers, combining, len(key), self.hu_window)
        return self._subsets[key]

    def combine(self, features: torch.Tensor) -> torch.Tensor:
        """The combining head: member features (..., F) -> calibrated probabilities (...)."""
        return combined_probability(
            features, self.feature_mean, self.feature_std, self.head_weight, self.head_bias
        )

    def forward(self, x: torch.Tensor) -> GroupedOutputs:
        """(B, 2, N, N, N) -> each member's outputs, as ``NoduleEnsemble.member_outputs``:
        grouped for one input, member by member (channels-last) for a batch."""
        window = x.clamp(max=1.0)  # the window's top; above it is for the measurements
        if x.shape[0] == 1:
            s0 = self.stem(window.repeat(1, self.n_members, 1, 1, 1).to(memory_format=_LAST))
            encoder, decoder, logits = self._trunk(s0.contiguous(), None)
        else:
            window = window.contiguous(memory_format=_LAST)
            runs = [self._trunk(self.stem(window, m), m) for m in range(self.n_members)]
            encoder, decoder, logits = (torch.cat(part, 1) for part in zip(*runs, strict=True))
        segmentation = torch.sigmoid(pixel_shuffle_3d(logits))
        heads = self._heads(encoder, decoder)
        measured = nodule_features(x[:, 0], segmentation, self.hu_window[0], self.hu_window[1])
        features = torch.cat([heads, measured], 2)
        return GroupedOutputs(
            self.combine(features),
            features,
            segmentation,
            encoder.contiguous(),
            decoder.contiguous(),
        )

    def member_logits(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """Each member's malignancy logit (B, M) from its feature maps (grouped layout): the
        classifier's part of the network, which the heatmap differentiates."""
        return self.malignancy(self._hidden(encoder, decoder))[..., 0]

    def _trunk(
        self, s0: torch.Tensor, member: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the stem's output to the deepest encoder level, ``dec2`` and the segmentation
        logits, for all members grouped (``member`` None) or one member."""
        m = self.n_members if member is None else 1
        s1 = self.enc1(s0, member)
        s2 = self.enc2(s1, member)
        s3 = self.enc3(s2, member)
        d2 = self.dec2(_cat_members(self.up3(s3, member), s2, m), member)
        d1 = self.dec1(_cat_members(self.up2(d2, member), s1, m), member)
        return s3, d2, self.seg_out(d1, member)

    def _hidden(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """Each member's hidden features (B, M, 64) from the spatial means of its channels of
        both maps."""
        batch, m = encoder.shape[0], self.n_members
        means = [maps.mean((2, 3, 4)).reshape(batch, m, -1) for maps in (encoder, decoder)]
        return self.head(torch.cat(means, 2))

    def _heads(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """Malignancy, rating and descriptors, (B, M, 10)."""
        hidden = self._hidden(encoder, decoder)
        return torch.cat(
            [self.malignancy(hidden), self.rating(hidden), self.descriptors(hidden)], 2
        )


def _subset(layer: nn.Module, members: Sequence[int]) -> nn.Module:
    if not isinstance(layer, (_Layer, _Residual, _Dense)):
        raise TypeError(f"no grouped form of {type(layer).__name__}")
    return layer.subset(members)


def _cat_members(a: torch.Tensor, b: torch.Tensor, members: int) -> torch.Tensor:
    """``torch.cat([a, b], 1)`` done per member, so each member's channels stay together."""
    if members == 1:
        return torch.cat([a, b], 1)
    batch, spatial = a.shape[0], a.shape[2:]
    joined = torch.cat(
        [a.reshape(batch, members, -1, *spatial), b.reshape(batch, members, -1, *spatial)], 2
    )
    return joined.reshape(batch, -1, *spatial)

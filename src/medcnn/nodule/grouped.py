"""The ensemble as the engine runs it: plain PyTorch, built from the weights alone.

The members are trained as ``medcnn.nodule.network.NoduleNet``s, built from MONAI's blocks. A click
needs none of MONAI's machinery to run them, and importing MONAI (its ``__init__`` imports
every submodule, scipy.signal, matplotlib and itk with them) is a third of a cold click. So the
engine builds the network it runs straight from the bundle's state dict, in eval mode, and never
imports MONAI; ``tests/test_speed_equivalence.py`` checks it against the MONAI-built members.

It also runs faster than the members one by one:
- **Grouped** (a batch of one: each context-box pass of a click). Each layer is one grouped
  convolution over all members: their weights stacked along the output channels, ``groups`` =
  number of members, member ``m`` owning channels ``[m * C, (m + 1) * C)`` of every feature map.
  A batch of one run member by member gets PyTorch's slow reference convolution (oneDNN is only
  chosen for batches, groups or large inputs) and pays the per-operation overhead once per
  member; grouped, it is one oneDNN call per layer, three times faster here.
- **Member by member** (batches: several nodules of a ``medcnn batch`` run, flipped copies),
  with each member's slice of the same weights and the input channels-last, where oneDNN's plain
  convolutions beat its grouped ones (about 1.8 times faster per input than grouped).
Both ways compute the same sums, and both fold each batch norm into the convolution before it:
in eval mode a batch norm is a per-channel ``x * scale + shift``, which the convolution's weight
and bias can carry, so each feature map is passed over once fewer.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from medcnn.nodule.features import nodule_features

if TYPE_CHECKING:
    from medcnn.nodule.network import NoduleEnsemble

_LAST = torch.channels_last_3d
BATCH_NORM_EPS = 1e-5  # torch.nn.BatchNorm3d's default, which MONAI's "batch" norm uses

# NoduleNet's layers in the order they run: (state-dict prefix, stride, transposed, kind).
# "block": a MONAI Convolution (conv, batch norm, PReLU); "conv": a bare convolution.
_LAYERS = (
    ("stem", 1, False, "block"),
    ("enc1.conv.unit0", 2, False, "block"),
    ("enc1.conv.unit1", 1, False, "block"),
    ("enc1.residual", 2, False, "conv"),
    ("enc2.conv.unit0", 2, False, "block"),
    ("enc2.conv.unit1", 1, False, "block"),
    ("enc2.residual", 2, False, "conv"),
    ("enc3.conv.unit0", 2, False, "block"),
    ("enc3.conv.unit1", 1, False, "block"),
    ("enc3.residual", 2, False, "conv"),
    ("up3", 2, True, "block"),
    ("dec2", 1, False, "block"),
    ("up2", 2, True, "block"),
    ("dec1", 1, False, "block"),
    ("seg_out", 1, False, "conv"),
)
_BLOCK_KEYS = (
    "conv.weight",
    "conv.bias",
    "adn.N.weight",
    "adn.N.bias",
    "adn.N.running_mean",
    "adn.N.running_var",
    "adn.N.num_batches_tracked",
    "adn.A.weight",
)
_HEAD_KEYS = (
    "head.2.weight",
    "head.2.bias",
    "head.3.weight",
    "malignancy.weight",
    "malignancy.bias",
    "rating.weight",
    "rating.bias",
    "descriptors.weight",
    "descriptors.bias",
)
_ENSEMBLE_BUFFERS = ("feature_mean", "feature_std", "head_weight", "head_bias")
_MEMBER_KEY = re.compile(r"members\.(\d+)\.(.+)")


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


def member_states(state: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """A ``NoduleEnsemble`` state dict's members, each as its own ``NoduleNet`` state dict."""
    members: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _MEMBER_KEY.fullmatch(key)
        if match:
            members.setdefault(int(match[1]), {})[match[2]] = value
    return {index: members[index] for index in sorted(members)}


def expected_member_keys() -> set[str]:
    """The keys of one ``NoduleNet``'s state dict, as the engine reads them."""
    keys = set(_HEAD_KEYS)
    for prefix, _, _, kind in _LAYERS:
        suffixes = _BLOCK_KEYS if kind == "block" else ("weight", "bias")
        keys.update(f"{prefix}.{suffix}" for suffix in suffixes)
    return keys


class _Layer(nn.Module):
    """One convolution of every member, stacked along the output channels, with the batch norm
    after it folded in and its PReLU, if the layer has them."""

    def __init__(
        self,
        members: list[dict[str, torch.Tensor]],
        prefix: str,
        stride: int,
        transposed: bool,
        block: bool,
    ) -> None:
        super().__init__()
        conv = f"{prefix}.conv." if block else f"{prefix}."
        weights = [m[conv + "weight"] for m in members]
        biases = [m[conv + "bias"] for m in members]
        if block:
            for index, member in enumerate(members):
                scale, shift = _batch_norm_affine(member, f"{prefix}.adn.N.")
                weights[index], biases[index] = _folded(
                    weights[index], biases[index], scale, shift, transposed
                )
        self.register_buffer("weight", torch.cat(weights).contiguous())
        self.register_buffer("bias", torch.cat(biases).contiguous())
        slope = None
        if block:
            slopes = [m[f"{prefix}.adn.A.weight"] for m in members]
            channels = biases[0].shape[0]
            slope = torch.cat([s.expand(channels) for s in slopes]).contiguous()
        self.register_buffer("slope", slope)
        self.transposed, self.stride = transposed, stride
        self.padding = weights[0].shape[-1] // 2
        self.n_members = len(members)
        # A transposed convolution keeps its output channels on the weight's second axis.
        self.out_per_member = biases[0].shape[0]
        self.in_per_member = weights[0].shape[0] if transposed else weights[0].shape[1]

    def forward(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """All members grouped (``member`` None; input B, M*C_in, ...) or one member alone."""
        weight, bias, slope, groups = self.weight, self.bias, self.slope, self.n_members
        if member is not None:
            out = slice(member * self.out_per_member, (member + 1) * self.out_per_member)
            inp = slice(member * self.in_per_member, (member + 1) * self.in_per_member)
            weight = weight[inp] if self.transposed else weight[out]
            bias, slope, groups = bias[out], None if slope is None else slope[out], 1
        if self.transposed:
            y = F.conv_transpose3d(
                x, weight, bias, self.stride, self.padding, self.stride - 1, groups
            )
        else:
            y = F.conv3d(x, weight, bias, self.stride, self.padding, 1, groups)
        return y if slope is None else F.prelu(y, slope)


def _batch_norm_affine(
    state: Mapping[str, torch.Tensor], prefix: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch norm in eval mode as ``x * scale + shift`` per channel."""
    scale = state[prefix + "weight"] / torch.sqrt(state[prefix + "running_var"] + BATCH_NORM_EPS)
    return scale, state[prefix + "bias"] - state[prefix + "running_mean"] * scale


def _folded(
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    transposed: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One member's convolution weight and bias with the per-output-channel
    ``x * scale + shift`` after it folded in: the same sums up to rounding. A transposed
    convolution keeps its output channels on the weight's second axis (``C_in, C_out, ...``)."""
    shape = [1] * weight.ndim
    shape[1 if transposed else 0] = -1
    return weight * scale.reshape(shape), bias * scale + shift


def _cat_members(a: torch.Tensor, b: torch.Tensor, members: int) -> torch.Tensor:
    """``torch.cat([a, b], 1)`` done per member, so each member's channels stay together."""
    if members == 1:
        return torch.cat([a, b], 1)
    batch, spatial = a.shape[0], a.shape[2:]
    joined = torch.cat(
        [a.reshape(batch, members, -1, *spatial), b.reshape(batch, members, -1, *spatial)], 2
    )
    return joined.reshape(batch, -1, *spatial)


class GroupedEnsemble(nn.Module):
    """The shipped model as the engine runs it, built from a ``NoduleEnsemble``'s state dict.

    ``members`` picks some of the state's members (in that order), for the one-member localiser
    and for judging a fold's patients with only the members that never saw them. ``hu_window``
    is the bundle's preprocessing window (``PatchSpec.hu_window``), which the measurements undo.
    """

    def __init__(
        self,
        state: Mapping[str, torch.Tensor],
        members: Sequence[int] | None = None,
        *,
        hu_window: tuple[float, float],
    ) -> None:
        super().__init__()
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        every = member_states(state)
        chosen = list(every) if members is None else list(members)
        if not chosen:
            raise ValueError("an ensemble without members cannot be run")
        parts = [every[index] for index in chosen]
        expected = expected_member_keys()
        for index, part in zip(chosen, parts, strict=True):
            if set(part) != expected:
                raise ValueError(f"member {index}'s weights are not a NoduleNet's")
        # Ordinary tensors even when built inside ``torch.inference_mode`` (a subset on a click):
        # the heatmap differentiates through the head's weights.
        with torch.inference_mode(False), torch.no_grad():
            self._build(state, chosen, parts)
        self.eval()

    def _build(
        self,
        state: Mapping[str, torch.Tensor],
        chosen: list[int],
        parts: list[dict[str, torch.Tensor]],
    ) -> None:
        self._state, self._members = state, chosen
        self._subsets: dict[tuple[int, ...], GroupedEnsemble] = {}
        self.n_members = len(parts)
        self.layers = nn.ModuleDict(
            {
                prefix.replace(".", "_"): _Layer(parts, prefix, stride, transposed, kind == "block")
                for prefix, stride, transposed, kind in _LAYERS
            }
        )
        self.register_buffer("hidden_weight", torch.stack([p["head.2.weight"] for p in parts]))
        self.register_buffer("hidden_bias", torch.stack([p["head.2.bias"] for p in parts]))
        self.register_buffer("hidden_slope", torch.stack([p["head.3.weight"] for p in parts]))
        outputs = [
            torch.cat([p["malignancy.weight"], p["rating.weight"], p["descriptors.weight"]])
            for p in parts
        ]
        biases = [
            torch.cat([p["malignancy.bias"], p["rating.bias"], p["descriptors.bias"]])
            for p in parts
        ]
        self.register_buffer("output_weight", torch.stack(outputs))
        self.register_buffer("output_bias", torch.stack(biases))
        for name in _ENSEMBLE_BUFFERS:
            self.register_buffer(name, state[name].detach().clone())

    def subset(self, members: Sequence[int]) -> GroupedEnsemble:
        """Some of this ensemble's members (indices into it), built once while in use."""
        key = tuple(members)
        if not all(0 <= i < self.n_members for i in key):
            raise IndexError(f"the ensemble has {self.n_members} members; asked for {key}")
        if key not in self._subsets:
            self._subsets[key] = GroupedEnsemble(
                self._state, [self._members[i] for i in key], hu_window=self.hu_window
            )
        return self._subsets[key]

    def combine(self, features: torch.Tensor) -> torch.Tensor:
        """The combining head: member features (..., F) -> calibrated probabilities (...)."""
        z = (features - self.feature_mean) / self.feature_std
        return torch.sigmoid(z @ self.head_weight + self.head_bias)

    def forward(self, x: torch.Tensor) -> GroupedOutputs:
        """(B, 2, N, N, N) -> each member's outputs, as ``NoduleEnsemble.member_outputs``:
        grouped for one input, member by member (channels-last) for a batch."""
        window = x.clamp(max=1.0)  # the window's top; above it is for the measurements
        if x.shape[0] == 1:
            stem = self.layers["stem"]
            s0 = stem(window.repeat(1, self.n_members, 1, 1, 1).to(memory_format=_LAST))
            encoder, decoder, logits = self._trunk(s0.contiguous(), None)
        else:
            window = window.contiguous(memory_format=_LAST)
            runs = [self._trunk(self.layers["stem"](window, m), m) for m in range(self.n_members)]
            encoder, decoder, logits = (torch.cat(part, 1) for part in zip(*runs, strict=True))
        return self._outputs(x, encoder, decoder, logits)

    def member_logits(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """Each member's malignancy logit (B, M) from its pooled feature maps (grouped layout):
        the classifier's part of the network, which the heatmap differentiates."""
        return self._heads(self._pooled(encoder, decoder))[..., 0]

    def _trunk(
        self, s0: torch.Tensor, member: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the stem's output to the deepest encoder level, ``dec2`` and the segmentation
        logits, for all members grouped (``member`` None) or one member."""
        layer, m = self.layers, self.n_members if member is None else 1
        s1 = self._residual(s0, 1, member)
        s2 = self._residual(s1, 2, member)
        s3 = self._residual(s2, 3, member)
        d2 = layer["dec2"](_cat_members(layer["up3"](s3, member), s2, m), member)
        d1 = layer["dec1"](_cat_members(layer["up2"](d2, member), s1, m), member)
        return s3, d2, layer["seg_out"](d1, member)

    def _residual(self, x: torch.Tensor, level: int, member: int | None) -> torch.Tensor:
        """A MONAI ``ResidualUnit``: two subunits plus a strided residual convolution."""
        layer = self.layers
        residual = layer[f"enc{level}_residual"](x, member)
        y = layer[f"enc{level}_conv_unit0"](x, member)
        return layer[f"enc{level}_conv_unit1"](y, member) + residual

    def _pooled(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """Each member's spatial means of both maps, side by side: (B, M, C3 + C2)."""
        batch, m = encoder.shape[0], self.n_members
        means = [maps.mean((2, 3, 4)).reshape(batch, m, -1) for maps in (encoder, decoder)]
        return torch.cat(means, 2)

    def _heads(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, M, C3 + C2) -> malignancy, rating and descriptors (B, M, 10)."""
        hidden = torch.einsum("bmi,moi->bmo", pooled, self.hidden_weight) + self.hidden_bias
        hidden = torch.where(hidden >= 0, hidden, hidden * self.hidden_slope)
        return torch.einsum("bmi,moi->bmo", hidden, self.output_weight) + self.output_bias

    def _outputs(
        self, x: torch.Tensor, encoder: torch.Tensor, decoder: torch.Tensor, logits: torch.Tensor
    ) -> GroupedOutputs:
        batch, m = x.shape[0], self.n_members
        heads = self._heads(self._pooled(encoder, decoder))
        n = logits.shape[-1]
        # Each half-resolution voxel's 8 channels are its 2x2x2 children (a 3D pixel shuffle).
        shuffled = logits.reshape(batch * m, 2, 2, 2, n, n, n).permute(0, 4, 1, 5, 2, 6, 3)
        segmentation = torch.sigmoid(shuffled.reshape(batch, m, 2 * n, 2 * n, 2 * n))
        measured = nodule_features(x[:, 0], segmentation, *self.hu_window)
        features = torch.cat([heads, measured], 2)
        probability = self.combine(features)
        return GroupedOutputs(
            probability, features, segmentation, encoder.contiguous(), decoder.contiguous()
        )


def as_engine(model: GroupedEnsemble | NoduleEnsemble) -> GroupedEnsemble:
    """The engine's network of a model: itself, or a ``NoduleEnsemble``'s (training's, the
    tests') grouped twin, built once and rebuilt if its weights change.

    The twin's weights are copies, so it is checked against the ensemble's tensors and their
    version counters (bumped by every in-place change, ``load_state_dict`` included) on each use.
    """
    if isinstance(model, GroupedEnsemble):
        return model
    if model.training:
        raise ValueError("the ensemble must be in eval mode (model.eval()) to be run")
    state = tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))
    cached = _TWINS.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    twin = GroupedEnsemble(model.state_dict(), hu_window=model.hu_window)
    _TWINS[model] = (state, twin)
    return twin


_TWINS: weakref.WeakKeyDictionary[NoduleEnsemble, tuple[tuple, GroupedEnsemble]] = (
    weakref.WeakKeyDictionary()
)


def ensemble_outputs(model: GroupedEnsemble | NoduleEnsemble, x: torch.Tensor) -> GroupedOutputs:
    """Every member's outputs for a batch of inputs (B, 2, N, N, N), the fastest exact way."""
    return as_engine(model)(x)

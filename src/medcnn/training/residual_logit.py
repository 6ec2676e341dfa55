"""Training the malignancy logit on what the nodule's measurements do not already say.

The combining head reads size, density and shape straight off each member's segmentation
(``medcnn.nodule.features``). A logit that learns size again adds little beside them, and the
members trained without this did just that (model card, "What the head's inputs carry"). So in
training, and only there, the malignancy loss sees the logit plus a learned linear function of
the same eight measurements of the consensus mask on the same augmented patch: size and density
come free, and the gradient goes to what they miss.

The offset is dropped when training ends. The network and its outputs keep their form; the
combining head, refitted on out-of-fold outputs, weighs the residual logit beside the
measurements of the member's own segmentation, as it did before.
"""

from __future__ import annotations

import torch
from torch import nn

from medcnn.nodule.features import NAMES, nodule_features

# Adam moves a weight by about the learning rate per step. A fold's 680 steps could not reach
# the weights that a logistic regression on the standardised measurements has (2 to 3); the
# gain scales the offset's steps by 5.
OFFSET_GAIN = 5.0


class MeasurementOffset(nn.Module):
    """(B, N, N, N) input channel 0 and (B, 1, N, N, N) mask -> (B, 1) logit offset.

    Standardised by the batch (batch norm without affine terms), starts at zero, and never
    sends a gradient into the measurements. ``hu_window`` is the input's window
    (``PatchSpec.hu_window``), as for the network's own measurements.
    """

    def __init__(self, hu_window: tuple[float, float], gain: float = OFFSET_GAIN) -> None:
        super().__init__()
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.gain = gain
        self.standardise = nn.BatchNorm1d(len(NAMES), affine=False)
        self.linear = nn.Linear(len(NAMES), 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, window: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            measured = nodule_features(window, mask, *self.hu_window)[:, 0]
        return self.gain * self.linear(self.standardise(measured))


class ResidualTraining(nn.Module):
    """The network and its offset as one module, so that DistributedDataParallel averages the
    gradients of both; ``malignancy`` is the trained logit plus the offset."""

    def __init__(self, net: nn.Module, offset: MeasurementOffset) -> None:
        super().__init__()
        self.net = net
        self.offset = offset

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(self.net(x))
        out["malignancy"] = out["malignancy"] + self.offset(x[:, 0], mask)
        return out

"""References the engine is checked against, which the product itself no longer needs.

- ``MonaiNoduleNet``: the network as releases up to 0.3.4 built it, from MONAI's
  ``Convolution`` and ``ResidualUnit`` blocks. ``medcnn.nodule.network.NoduleNet`` is the same
  network in plain PyTorch; the tests load the same weights into both and compare.
- ``MalignancyLogit``: one member's malignancy logit alone, the score MONAI's ``GradCAM``
  explains (target layer ``net.dec2``).
- ``member_subset``: a ``NoduleEnsemble`` of some of another's members, run one by one.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from medcnn.nodule.network import DESCRIPTORS, NoduleEnsemble, pixel_shuffle_3d


class MonaiNoduleNet(nn.Module):
    """``NoduleNet`` built from MONAI's blocks, as it was before the plain definition."""

    def __init__(
        self,
        in_channels: int = 2,
        channels: tuple[int, int, int, int] = (8, 16, 32, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels

        def down(cin: int, cout: int) -> nn.Module:
            return ResidualUnit(3, cin, cout, strides=2, subunits=2, norm="batch", act="prelu")

        def up(cin: int, cout: int) -> nn.Module:
            return Convolution(
                3,
                cin,
                cout,
                strides=2,
                kernel_size=3,
                norm="batch",
                act="prelu",
                is_transposed=True,
            )

        self.stem = Convolution(3, in_channels, c0, kernel_size=3, norm="batch", act="prelu")
        self.enc1 = down(c0, c1)
        self.enc2 = down(c1, c2)
        self.enc3 = down(c2, c3)
        self.up3 = up(c3, c2)
        self.dec2 = Convolution(3, 2 * c2, c2, kernel_size=3, norm="batch", act="prelu")
        self.up2 = up(c2, c1)
        self.dec1 = Convolution(3, 2 * c1, c1, kernel_size=3, norm="batch", act="prelu")
        self.seg_out = nn.Conv3d(c1, 8, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c3 + c2, 64), nn.PReLU()
        )
        self.malignancy = nn.Linear(64, 1)
        self.rating = nn.Linear(64, 1)
        self.descriptors = nn.Linear(64, len(DESCRIPTORS))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s0 = self.stem(x.clamp(max=1.0))
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


class MalignancyLogit(nn.Module):
    """The malignancy logit alone, the single score that class-activation maps explain."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["malignancy"]


def member_subset(model: NoduleEnsemble, indices: list[int]) -> NoduleEnsemble:
    """A view of some members of the ensemble (shared weights, same head)."""
    view = NoduleEnsemble(n_members=0, hu_window=model.hu_window)
    view.members = nn.ModuleList([model.members[i] for i in indices])
    for name, buffer in model.named_buffers(recurse=False):
        setattr(view, name, buffer)
    return view.eval()

"""A small CNN that reads a noised (VP) image and predicts its noise level.

Output: one number per image, ``logit(alpha_bar)`` (``target=logit``, unbounded head) or
``alpha_bar`` itself (``target=raw``, sigmoid head), as in the lesson's noise-prediction notebook.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AlphaBarNet"]


class AlphaBarNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), target: str = "logit"):
        super().__init__()
        if target not in ("logit", "raw"):
            raise ValueError(f"noise_level.target must be 'logit' or 'raw' (got {target!r})")
        self.target = target
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(cin, w, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(max(1, w // 8), w), nn.SiLU()]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 1)

    def forward(self, x_vp: Tensor) -> Tensor:
        """[B, 1, H, W] VP image -> [B] prediction (logit(abar) or abar)."""
        h = self.features(x_vp).mean(dim=(2, 3))
        out = self.head(h).squeeze(1)
        return torch.sigmoid(out) if self.target == "raw" else out

    def alpha_bar(self, x_vp: Tensor) -> Tensor:
        """Predicted alpha_bar in (0, 1) whatever the target."""
        out = self(x_vp).float()
        return out.clamp(1e-6, 1 - 1e-6) if self.target == "raw" else torch.sigmoid(out)

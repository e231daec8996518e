"""Exponential moving average of a network's weights (used for sampling and evaluation)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds ``shadow``, a frozen copy of ``model`` updated as
    ``shadow <- shadow + (1 - d) (model - shadow)`` after each optimizer step, with the warm-up
    ``d = min(decay, (1 + step) / (10 + step))`` so early averages are not dominated by the random
    initialisation. Buffers (none in the UNet, but norms with running stats would have them) are
    copied. Being an ``nn.Module`` it is saved and restored with the LightningModule."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (got {decay})")
        self.decay = float(decay)
        self.shadow = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._count: int | None = 0  # host mirror of num_updates: no device sync per step
        self._lists = None  # cached parameter/buffer lists (walking the module tree is per-step cost)

    def _apply(self, fn, *args, **kwargs):
        self._lists = None  # .to() / .cuda() replace tensors: rebuild the lists
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None  # re-read once from the restored buffer

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._count is None:
            self._count = int(self.num_updates)
        step = self._count
        d = min(self.decay, (1 + step) / (10 + step))
        if self._lists is None or self._lists[0] is not model:
            self._lists = (model, list(self.shadow.parameters()),
                           [p.detach() for p in model.parameters()],
                           list(self.shadow.buffers()), list(model.buffers()))
        _, ema_p, cur_p, ema_b, cur_b = self._lists
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for b_ema, b in zip(ema_b, cur_b):
            b_ema.copy_(b)
        self.num_updates += 1
        self._count += 1

    @property
    def last_decay(self) -> float:
        """The decay the latest update used (the warm-up makes it smaller early on)."""
        # the host-side count (no device read); the buffer is only read once, at the first update
        step = max((self._count if self._count is not None else int(self.num_updates)) - 1, 0)
        return min(self.decay, (1 + step) / (10 + step))

    def forward(self, *args, **kwargs):
        return self.shadow(*args, **kwargs)

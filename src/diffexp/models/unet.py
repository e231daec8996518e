"""A UNet for 28x28 or 32x32 single-channel images with an optional embedding of a scalar
conditioning value.

Pre-activation residual blocks (GroupNorm, SiLU, 3x3 conv) whose second norm is modulated by the
embedding (scale and shift), self-attention at chosen resolutions, strided-conv down-sampling,
nearest-neighbour up-sampling, skip connections from every down block. ``cond_embedding=False``
builds a network with no conditioning input at all: no embedding layers exist, so there is
nothing a constant input could be learned around (the no_t objective needs exactly that).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "sinusoidal_embedding", "EMBEDDINGS"]

#: kinds of conditioning embedding: "geometric" (values in about [-2, 2]) or "timestep" (values up
#: to the hundreds, e.g. raw sigma: the diffusers UNet2DModel's timestep frequencies)
EMBEDDINGS = ("geometric", "timestep")


def sinusoidal_embedding(c: Tensor, dim: int, max_freq: float = 1000.0,
                         kind: str = "geometric") -> Tensor:
    """[B] -> [B, dim]: sin and cos of ``c * f``.

    ``kind="geometric"``: frequencies geometric in [1, max_freq]. Conditioning values here live in
    about [-2, 2] (t in [0, 1], or ln(sigma) / 4), so the frequencies start at 1 rad per unit
    rather than the transformer convention for integers. ``kind="timestep"``: the transformer /
    diffusers ``Timesteps`` frequencies ``10000^(-i / half)``, i = 0 .. half - 1, cos first (its
    ``flip_sin_to_cos``), for values up to hundreds such as a raw sigma (the lesson's Karras
    c_noise): their lowest frequencies keep such values apart without wrapping."""
    half = dim // 2
    if kind == "timestep":
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=c.device) / half)
        arg = c.float()[:, None] * freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)
    if kind != "geometric":
        raise ValueError(f"embedding kind must be one of {list(EMBEDDINGS)} (got {kind!r})")
    freqs = torch.exp(torch.linspace(0, math.log(max_freq), half, device=c.device))
    arg = c.float()[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups of at least 4 channels (the largest such divisor)."""
    g = max(1, min(32, ch // 4))
    while ch % g:
        g -= 1
    return nn.GroupNorm(g, ch)


class ResBlock(nn.Module):
    """``forward(x, emb_act)`` takes the embedding already activated (``F.silu(emb)``): every
    block applies the same activation to the same embedding, so :class:`UNet` computes it once per
    forward pass instead of once per block."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout) if emb_dim else None
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb_act: Tensor | None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None:
            scale, shift = self.emb(emb_act)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the positions of a feature map, residual.

    q, k and v reach ``F.scaled_dot_product_attention`` as (B, heads, L, d) with the head
    dimension innermost (stride 1), the layout its flash and memory-efficient kernels take without
    a copy of their own: views of the qkv convolution's output when it is channels_last (B, H, W,
    3C in memory), one copy of it otherwise. The result goes back to the input's memory format."""

    def __init__(self, ch: int, head_dim: int):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # channel order of qkv: (q|k|v, head, d); positions L = h * w in row-major order
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).contiguous()  # a view if channels_last
        qkv = qkv.view(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, d), d innermost
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d)
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
               and not x.is_contiguous() else torch.contiguous_format)
        return x + self.proj(out.contiguous(memory_format=fmt))


class Block(nn.Module):
    """ResBlock, then attention where asked."""

    def __init__(self, cin: int, cout: int, emb_dim: int, attn: bool, head_dim: int):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim)
        self.attn = SelfAttention(cout, head_dim) if attn else None

    def forward(self, x, emb_act):
        x = self.res(x, emb_act)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """``widths[i]`` channels at level i (resolution halves per level); ``blocks`` residual blocks
    per level on the way down (``blocks + 1`` on the way up, one per skip); attention at the levels
    listed in ``attn_levels`` (0 = full resolution) with heads of ``head_dim`` channels;
    ``embedding``: the sinusoidal embedding kind of the conditioning value (see
    :func:`sinusoidal_embedding`); ``patch``: side of the square patches the image is cut into
    before level 0 (``pixel_unshuffle``: a 28x28x1 image becomes 14x14x4 with ``patch=2``) and
    reassembled from after the last layer, so level 0 runs at 1/patch of the image's resolution
    (the patch embedding of vision transformers, here a lossless reshape: the network sees every
    pixel, at a quarter of the positions per convolution)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1,
                 widths: tuple[int, ...] = (32, 64, 128, 256), blocks: int = 2,
                 attn_levels: tuple[int, ...] = (1, 2, 3), head_dim: int = 32,
                 cond_embedding: bool = True, emb_dim: int | None = None,
                 embedding: str = "geometric", patch: int = 1):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {list(EMBEDDINGS)} (got {embedding!r})")
        if int(patch) < 1:
            raise ValueError(f"patch must be >= 1 (got {patch!r})")
        self.patch = int(patch)
        self.embedding = embedding
        widths = tuple(int(w) for w in widths)
        self.widths = widths
        self.cond_embedding = bool(cond_embedding)
        emb_dim = (emb_dim or 4 * widths[0]) if cond_embedding else 0
        self.emb_dim = emb_dim
        if cond_embedding:
            self.emb_mlp = nn.Sequential(nn.Linear(widths[0], emb_dim), nn.SiLU(),
                                         nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels * self.patch ** 2, widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [widths[0]]
        ch = widths[0]
        for lvl, w in enumerate(widths):
            for _ in range(blocks):
                self.down.append(Block(ch, w, emb_dim, lvl in attn_levels, head_dim))
                ch = w
                skips.append(ch)
            if lvl < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([Block(ch, ch, emb_dim, True, head_dim),
                                  Block(ch, ch, emb_dim, False, head_dim)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            w = widths[lvl]
            for _ in range(blocks + 1):
                self.up.append(Block(ch + skips.pop(), w, emb_dim, lvl in attn_levels, head_dim))
                ch = w
            if lvl > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, out_channels * self.patch ** 2, 3, padding=1)
        self.blocks = blocks
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.cond_embedding:
            if cond is None:
                raise ValueError("this UNet is conditioned: pass a [B] conditioning tensor")
            emb = self.emb_mlp(sinusoidal_embedding(cond, self.widths[0], kind=self.embedding)
                               .to(x.dtype))
            emb = F.silu(emb)  # once here, not in each block (ResBlock takes it activated)
        else:
            if cond is not None:
                raise ValueError("this UNet has no conditioning input (cond_embedding=False)")
            emb = None
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)
        h = self.conv_in(x)
        hs = [h]
        blocks = iter(self.down)
        for lvl in range(len(self.widths)):
            for _ in range(self.blocks):
                h = next(blocks)(h, emb)
                hs.append(h)
            if lvl < len(self.widths) - 1:
                h = self.downsample[lvl](h)
                hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        blocks = iter(self.up)
        for i, lvl in enumerate(reversed(range(len(self.widths)))):
            for _ in range(self.blocks + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), emb)
            if lvl > 0:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

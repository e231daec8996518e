"""The UNet's patch option: a lossless reshape in and out, every pixel seen, old configs kept."""

import torch
import torch.nn.functional as F

from diffexp.build import upgrade_config
from diffexp.config import validate_train_config
from diffexp.models.unet import UNet, count_parameters

from .helpers import compose_train


def test_patch_reshape_is_lossless():
    x = torch.randn(3, 1, 28, 28)
    p = F.pixel_unshuffle(x, 2)
    assert p.shape == (3, 4, 14, 14)
    assert torch.equal(F.pixel_shuffle(p, 2), x)
    # each of the 4 channels is one position of the 2x2 patch, a strided sub-image
    assert torch.equal(p[:, 0], x[:, 0, 0::2, 0::2]) and torch.equal(p[:, 3], x[:, 0, 1::2, 1::2])


def _net(patch, widths=(16, 32)):
    torch.manual_seed(0)
    net = UNet(1, 1, widths, 1, (1,), 16, patch=patch)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # zero-initialised: make outputs live
    return net


def test_patched_network_maps_images_to_images_and_costs_no_more_parameters_than_its_stem():
    for patch, side in [(1, 28), (2, 28), (2, 32), (4, 32)]:
        out = _net(patch)(torch.randn(2, 1, side, side), torch.zeros(2))
        assert out.shape == (2, 1, side, side)
    # only conv_in and conv_out see the patch: 9 * widths[0] * (p^2 - 1) weights each (+ biases)
    extra = count_parameters(_net(2)) - count_parameters(_net(1))
    assert extra == 9 * 16 * 3 + 9 * 16 * 3 + 3


def test_every_output_pixel_depends_on_every_pixel_of_its_patch():
    net = _net(2).double()
    x = torch.randn(1, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    for (i, j) in [(0, 0), (13, 14), (27, 27)]:
        g, = torch.autograd.grad(net(x, torch.zeros(1, dtype=torch.float64))[0, 0, i, j], x)
        pi, pj = i - i % 2, j - j % 2
        assert (g[0, 0, pi:pi + 2, pj:pj + 2].abs() > 0).all()


def test_a_config_from_before_patches_upgrades_to_patch_one():
    c = validate_train_config(compose_train(["data=synthetic", "train.batch_size=16"]))
    del c["model"]["patch"]
    assert upgrade_config(c)["model"]["patch"] == 1


def _resblock_forward_before(self, x, emb):
    """ResBlock.forward as it was: each block applied SiLU to the embedding itself."""
    h = self.norm2(self.conv1(F.silu(self.norm1(x))))
    if self.emb is not None:
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + scale) + shift
    return self.conv2(F.silu(h)) + self.skip(x)


def _unet_forward_before(self, x, cond=None):
    """UNet.forward as it was: the raw embedding handed to every block."""
    from diffexp.models.unet import sinusoidal_embedding

    emb = (self.emb_mlp(sinusoidal_embedding(cond, self.widths[0], kind=self.embedding)
                        .to(x.dtype)) if self.cond_embedding else None)
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


def test_embedding_activation_once_keeps_outputs_and_checkpoint_keys(monkeypatch, tmp_path):
    """SiLU of the embedding computed once per forward pass, not once per block: the same
    outputs and gradients as before, and the same parameter names and shapes (a state dict saved
    before loads strictly; its keys and shapes are those recorded here)."""
    import hashlib

    from diffexp.models.unet import ResBlock

    net = _net(2)
    desc = ";".join(f"{k}:{tuple(v.shape)}" for k, v in _net(1).state_dict().items())
    assert hashlib.sha256(desc.encode()).hexdigest()[:16] == "a188468445e2ab6d"  # as before
    torch.save(net.state_dict(), tmp_path / "net.pt")
    loaded = _net(2)
    loaded.load_state_dict(torch.load(tmp_path / "net.pt"), strict=True)

    x, cond = torch.randn(2, 1, 28, 28), torch.rand(2)
    got = loaded(x, cond)
    (g_new,) = torch.autograd.grad(got.square().sum(), loaded.emb_mlp[0].weight)
    with monkeypatch.context() as m:
        m.setattr(ResBlock, "forward", _resblock_forward_before)
        m.setattr(UNet, "forward", _unet_forward_before)
        want = net(x, cond)
        (g_old,) = torch.autograd.grad(want.square().sum(), net.emb_mlp[0].weight)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-6)


def _attention_before(att, x):
    """SelfAttention.forward as it was (q, k, v handed to SDPA with the head dim strided)."""
    b, c, h, w = x.shape
    q, k, v = att.qkv(att.norm(x)).reshape(b, 3, att.heads, c // att.heads, h * w).unbind(1)
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                         v.transpose(-1, -2))
    return x + att.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def test_attention_gives_sdpa_its_kernels_layout_in_either_memory_format(monkeypatch):
    """q, k, v reach SDPA as (B, heads, L, d) with stride(-1) == 1 (what its flash and
    memory-efficient kernels take), contiguous input or channels_last; the output is the one of
    the layout before, in the input's memory format."""
    from diffexp.models.unet import SelfAttention

    torch.manual_seed(0)
    att = SelfAttention(32, head_dim=8).eval()
    torch.nn.init.normal_(att.proj.weight, std=0.2)
    x = torch.randn(3, 32, 6, 5)
    seen = []
    real = F.scaled_dot_product_attention

    def sdpa(q, k, v, *a, **kw):
        seen.append([(t.shape, t.stride(-1)) for t in (q, k, v)])
        return real(q, k, v, *a, **kw)

    with torch.no_grad():
        want = _attention_before(att, x)
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        got = att(x)
        cl_att = SelfAttention(32, head_dim=8).eval()
        cl_att.load_state_dict(att.state_dict())
        cl_att.to(memory_format=torch.channels_last)
        got_cl = cl_att(x.contiguous(memory_format=torch.channels_last))
    assert seen == [[(torch.Size([3, 4, 30, 8]), 1)] * 3] * 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_cl, want, rtol=1e-5, atol=1e-6)
    assert got.is_contiguous()
    assert got_cl.is_contiguous(memory_format=torch.channels_last)


def test_unet_outputs_are_those_of_the_attention_layout_before(monkeypatch):
    """The whole network, contiguous and channels_last: the same output as with the attention's
    layout before (in float64: in float32 the SDPA kernel's sums over other strides round
    differently, about 1e-6 at the output)."""
    from diffexp.models.unet import SelfAttention

    net = _net(1).double().eval()
    x, cond = torch.randn(2, 1, 28, 28, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    for fmt in (torch.contiguous_format, torch.channels_last):
        net.to(memory_format=fmt)
        xf = x.contiguous(memory_format=fmt)
        with torch.no_grad():
            got = net(xf, cond)
            with monkeypatch.context() as m:
                m.setattr(SelfAttention, "forward", _attention_before)
                want = net(xf, cond)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

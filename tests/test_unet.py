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

"""The Fashion-MNIST module on the real files in ../shared/data."""

import pytest
import torch

from diffexp.data import (
    DataError,
    DeviceData,
    build_data,
    decode,
    encode,
    load_fashion_mnist,
    synthetic_images,
)


@pytest.fixture(scope="module")
def train_split(data_root):
    return load_fashion_mnist(data_root, train=True, download=False)


def test_real_files(train_split, data_root):
    x, y = train_split
    assert x.shape == (60_000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60_000,) and set(y.unique().tolist()) == set(range(10))
    assert torch.bincount(y).tolist() == [6000] * 10  # the release is balanced
    xt, yt = load_fashion_mnist(data_root, train=False, download=False)
    assert xt.shape == (10_000, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10
    # mean pixel of the training split, a known property of the release (~0.286 in [0, 1])
    assert float(x.float().mean() / 255) == pytest.approx(0.2860, abs=1e-3)


def test_device_data_split_and_batches(train_split):
    x, y = train_split
    d = DeviceData(x, y, pad=2, scale=0.5, val_size=5000, split_seed=3)
    assert len(d.val_index) == 5000 and len(d.train_index) == 55_000
    assert len(set(d.val_index.tolist()) & set(d.train_index.tolist())) == 0
    d2 = DeviceData(x, y, val_size=5000, split_seed=3)
    assert torch.equal(d.val_index, d2.val_index)  # fixed by the seed
    assert not torch.equal(d.val_index, DeviceData(x, y, val_size=5000, split_seed=4).val_index)
    b = d.batch(d.train_index[:64])
    assert b.shape == (64, 1, 32, 32) and b.dtype == torch.float32
    assert float(b.min()) >= -0.5 and float(b.max()) <= 0.5  # [-1, 1] times scale 0.5
    assert torch.all(b[:, :, :2] == -0.5) and torch.all(b[:, :, :, -2:] == -0.5)  # background pad
    assert torch.equal(decode(b, pad=2, scale=0.5)[:, 0], x[d.train_index[:64]])  # round trip


def test_measured_std(train_split):
    x, y = train_split
    d = DeviceData(x[:4096], y[:4096], pad=2, scale=2.0, val_size=0)
    direct = encode(x[:4096], 2, 2.0).double().std()
    assert d.measured_std() == pytest.approx(float(direct), rel=1e-4)


def test_build_data_from_config(data_root):
    cfg = dict(name="fashion_mnist", root=str(data_root), download=False, pad=0, scale=1.0,
               val_size=100, split_seed=0, subset=1000)
    d = build_data(cfg)
    assert d.shape == (1, 28, 28) and len(d.train_index) == 900
    # the first `subset` images of the release, split into disjoint train and validation parts
    x, y = load_fashion_mnist(data_root, train=True, download=False)
    assert torch.equal(d.images.reshape(1000, 28, 28), x[:1000].reshape(1000, 28, 28))
    assert torch.equal(d.labels, y[:1000])
    assert len(d.val_index) == 100
    both = torch.cat([d.train_index, d.val_index]).sort().values
    assert torch.equal(both, torch.arange(1000))  # every image once, in one part only
    # split_seed fixes the split: the same seed gives it again, another seed another one
    assert torch.equal(build_data(cfg).val_index, d.val_index)
    assert not torch.equal(build_data({**cfg, "split_seed": 1}).val_index, d.val_index)


def test_missing_data_one_line_error(tmp_path):
    with pytest.raises(DataError) as e:
        load_fashion_mnist(tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert "\n" not in msg and "train-images-idx3-ubyte" in msg and "FashionMNIST/raw" in msg


def test_synthetic_deterministic():
    a, la = synthetic_images(16, seed=1)
    b, lb = synthetic_images(16, seed=1)
    assert torch.equal(a, b) and torch.equal(la, lb) and a.dtype == torch.uint8
    assert int(a.max()) > 200 and int(a.min()) == 0


def test_gzipped_files_read_like_the_release_and_match_torchvision(tmp_path, data_root):
    """The four files may be present gzipped only (a copy that travels compressed); they read as
    the same tensors as the uncompressed release, which read as torchvision reads them."""
    import gzip

    from torchvision.datasets import FashionMNIST

    from diffexp.data import RAW_FILES, DataError, load_fashion_mnist, read_idx

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in RAW_FILES:
        (raw / (f + ".gz")).write_bytes(gzip.compress((data_root / "FashionMNIST" / "raw" / f)
                                                      .read_bytes(), compresslevel=1))
    for train in (True, False):
        gz = load_fashion_mnist(tmp_path, train=train, download=False)
        plain = load_fashion_mnist(data_root, train=train, download=False)
        tv = FashionMNIST(str(data_root), train=train, download=False)
        assert torch.equal(gz[0], plain[0]) and torch.equal(gz[1], plain[1])
        assert torch.equal(plain[0], tv.data) and torch.equal(plain[1], tv.targets)
    for bad in (b"\x00\x00\x08\x01\x00\x00", b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02"):
        (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bad))
        with pytest.raises(DataError, match="truncated or corrupt"):
            read_idx(raw / "t10k-labels-idx1-ubyte")

"""Fashion-MNIST held as one uint8 tensor on the training device, batches drawn by index.

The 47 MB data set lives on the device; a batch is a gather by index followed by
``uint8 -> [-1, 1] -> pad -> * scale``, all on the device. No per-item Python, no workers.

Images in the data range are ``(u8 / 255 * 2 - 1)``; padding is -1 (black, the background), so the
padded image is exactly what ``pad`` would give on the [0, 1] image mapped to [-1, 1].
``decode`` is the inverse: ``/ scale``, crop, back to uint8, as saved images are.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DataError",
    "RAW_FILES",
    "resolve_root",
    "load_fashion_mnist",
    "DeviceData",
    "encode",
    "decode",
    "to_uint8",
    "synthetic_images",
    "build_data",
]

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataError(RuntimeError):
    """The data set could be neither found nor downloaded."""


def resolve_root(root: str | os.PathLike | None) -> Path:
    """``data.root`` if given, else ``$DIFFEXP_DATA_ROOT``, else ``~/.cache/diffexp/data``."""
    if root in (None, "", "null"):
        root = os.environ.get("DIFFEXP_DATA_ROOT") or Path.home() / ".cache" / "diffexp" / "data"
    return Path(os.path.expanduser(str(root))).resolve()


def _have_raw(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    return all((raw / f).exists() or (raw / (f + ".gz")).exists() for f in RAW_FILES)


def load_fashion_mnist(root=None, train: bool = True, download: bool = True) -> tuple[Tensor, Tensor]:
    """Return ``(images uint8 [N, 28, 28], labels int64 [N])`` of one split.

    Reads ``ROOT/FashionMNIST/raw`` (torchvision's layout); downloads through torchvision when the
    files are absent and ``download`` is true. Raises :class:`DataError` with one line saying where to
    put the files when neither works."""
    root = resolve_root(root)
    if not _have_raw(root):
        if not download:
            raise DataError(_missing_msg(root, "download is disabled (data.download=false)"))
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(root), train=train, download=True)
        except Exception as e:  # network down, read-only folder, corrupt file ...
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(_missing_msg(root, f"download failed: {reason}")) from None
    prefix = "train" if train else "t10k"
    raw = root / "FashionMNIST" / "raw"
    images = read_idx(raw / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte").long()
    if images.dim() != 3 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise DataError(f"{raw}: {prefix} files hold {tuple(images.shape)} images and "
                        f"{len(labels)} labels, not N x 28 x 28 and N")
    return images, labels


def read_idx(path: Path) -> Tensor:
    """An IDX file of unsigned bytes (the MNIST format: magic 0x0000 08 <ndim>, big-endian sizes,
    then the data) as a uint8 tensor; ``path`` or, when absent, ``path.gz``. Read directly rather
    than through torchvision, which ignores files that are only present gzipped."""
    if not path.exists():
        path = path.with_name(path.name + ".gz")
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated or corrupt (its header is cut short)")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim:]
    if len(body) != math.prod(dims) or not body:
        raise DataError(f"{path}: truncated or corrupt ({len(body)} bytes for shape {dims})")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _missing_msg(root: Path, why: str) -> str:
    return (f"Fashion-MNIST not found under data.root={root} and {why}; put the four files "
            f"{', '.join(RAW_FILES)} (optionally .gz) in {root / 'FashionMNIST' / 'raw'} "
            f"or set data.root / DIFFEXP_DATA_ROOT to a folder that has them")


def encode(u8: Tensor, pad: int = 2, scale: float = 1.0) -> Tensor:
    """uint8 [B, H, W] or [B, 1, H, W] -> float [B, 1, H + 2 pad, W + 2 pad] in scale * [-1, 1]."""
    if u8.dim() == 3:
        u8 = u8.unsqueeze(1)
    x = u8.float().mul_(2.0 / 255.0).sub_(1.0)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    if scale != 1.0:
        x = x.mul_(scale)
    return x


def decode(x: Tensor, pad: int = 2, scale: float = 1.0) -> Tensor:
    """Inverse of :func:`encode` up to quantisation: float -> uint8 [B, 1, H, W]."""
    x = x.float() / scale
    if pad:
        x = x[..., pad:-pad, pad:-pad]
    return to_uint8(x)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 with rounding, as an image file would store it."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


class DeviceData:
    """One split of images (uint8, on ``device``) with labels, and its train/val division.

    ``val_size`` images of the training split are held out by a permutation drawn from
    ``split_seed``; the rest is the training set. ``batch(idx)`` gathers and encodes on the device."""

    def __init__(self, images: Tensor, labels: Tensor, *, pad: int = 2, scale: float = 1.0,
                 val_size: int = 0, split_seed: int = 0, device="cpu"):
        if val_size < 0 or val_size >= len(images):
            raise ValueError(f"data.val_size must be in [0, {len(images)}) (got {val_size})")
        self.pad, self.scale = int(pad), float(scale)
        self.device = torch.device(device)
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(split_seed))
        self.val_index = perm[:val_size].sort().values
        self.train_index = perm[val_size:].sort().values
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)

    def to(self, device) -> DeviceData:
        """Move the images (and labels) to ``device``; indices stay on the host."""
        self.device = torch.device(device)
        self.images = self.images.to(self.device)
        self.labels = self.labels.to(self.device)
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w = self.images.shape[-2:]
        return (1, h + 2 * self.pad, w + 2 * self.pad)

    def batch(self, idx: Tensor) -> Tensor:
        """Encoded float images for absolute indices ``idx`` (any device)."""
        return encode(self.images[idx.to(self.device)], self.pad, self.scale)

    def measured_std(self, chunk: int = 8192) -> float:
        """Std of the training images as scaled and padded (for Karras' sigma_data = auto)."""
        s = s2 = 0.0
        n = 0
        for i in range(0, len(self.train_index), chunk):
            x = self.batch(self.train_index[i:i + chunk]).double()
            s += float(x.sum())
            s2 += float((x * x).sum())
            n += x.numel()
        mean = s / n
        return (s2 / n - mean * mean) ** 0.5


def synthetic_images(n: int, seed: int = 0, size: int = 28) -> tuple[Tensor, Tensor]:
    """``n`` deterministic uint8 images of one or two soft bright blobs on black (label = blob
    count - 1): a stand-in data set with structure, for tests and smoke runs."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    labels = torch.randint(0, 2, (n,), generator=g)
    img = torch.zeros(n, size, size)
    for k in range(2):
        c = torch.rand(n, 2, generator=g) * (size * 0.5) + size * 0.25
        r = torch.rand(n, generator=g) * 3 + 3
        blob = torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2)
                         / (2 * r[:, None, None] ** 2))
        img += blob * ((labels >= k).float()[:, None, None])
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


def build_data(data_cfg: dict, *, train: bool = True) -> DeviceData:
    """A :class:`DeviceData` from the ``data`` config group (kept on the CPU until moved)."""
    if data_cfg["name"] == "synthetic":
        images, labels = synthetic_images(int(data_cfg["subset"] or 256),
                                          seed=data_cfg["split_seed"] + (0 if train else 1))
    else:
        images, labels = load_fashion_mnist(data_cfg.get("root"), train=train,
                                            download=data_cfg.get("download", True))
        if train and data_cfg.get("subset"):
            images, labels = images[:data_cfg["subset"]], labels[:data_cfg["subset"]]
    return DeviceData(images, labels, pad=data_cfg["pad"], scale=data_cfg["scale"],
                      val_size=data_cfg["val_size"] if train else 0,
                      split_seed=data_cfg["split_seed"])

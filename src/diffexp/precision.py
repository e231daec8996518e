"""The autocast a run's precision asks for, on the device it runs on.

bf16 precisions ("bf16-mixed", "bf16-true") run the network under bf16 autocast on a GPU and on
the CPU alike; the sigma and sampler arithmetic around the network stays fp32
(:func:`diffexp.objectives.make_denoiser` casts the network's output). On the CPU, oneDNN computes
bf16 convolutions natively where the processor has the AVX512-BF16 or AMX instructions; elsewhere
PyTorch emulates them, which is several times slower than fp32: :func:`cpu_bf16_warning` says so
before a run starts.
"""

from __future__ import annotations

import torch

#: the precisions Lightning accepts that compute the network in bf16
BF16_PRECISIONS = ("bf16-mixed", "bf16-true")


def is_bf16(precision) -> bool:
    return str(precision).startswith("bf16")


def autocast(device: torch.device | str, precision):
    """bf16 autocast on ``device`` when ``precision`` is a bf16 precision, else a disabled one."""
    kind = torch.device(device).type
    if is_bf16(precision) and kind in ("cuda", "cpu"):
        return torch.autocast(kind, dtype=torch.bfloat16)
    return torch.autocast(kind, enabled=False)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def cpu_bf16_warning(precision, device_type: str, setting: str) -> str | None:
    """A one-line warning when a bf16 precision would run emulated on this CPU, else None."""
    if device_type != "cpu" or not is_bf16(precision) or cpu_has_native_bf16():
        return None
    return (f"{setting}={precision} on a CPU without bf16 instructions (AVX512-BF16 or AMX): "
            f"PyTorch emulates bf16 here, several times slower than fp32; "
            f"{setting}=32-true is faster on this machine")

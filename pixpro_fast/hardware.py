"""What this machine runs natively: the one place that decides which precisions are fast here.

A CPU without bf16 instructions (no AVX-512 BF16 / AMX) still runs bf16 autocast, but
emulates every bf16 operation in software: a ResNet step is about ten times slower than in
fp32. ``precision="auto"`` therefore picks bf16 only where it is native.
"""
from __future__ import annotations

import warnings

import torch

_warned: set[tuple[str, str]] = set()


def cpu_bf16_native() -> bool:
    """True when this CPU has bf16 instructions that oneDNN uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_fp16_native() -> bool:
    """True when this CPU has fp16 arithmetic instructions that oneDNN uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_precisions(device: torch.device | str) -> tuple[str, ...]:
    """The precisions that run at hardware speed on ``device`` (fp32 always)."""
    device = torch.device(device)
    if device.type == "cuda":
        out = ["fp32", "fp16"]
        if torch.cuda.is_bf16_supported():
            out.insert(1, "bf16")
        return tuple(out)
    if device.type == "cpu":
        return ("fp32",) + (("bf16",) if cpu_bf16_native() else ()) + (("fp16",) if cpu_fp16_native() else ())
    return ("fp32",)


def emulated_reason(precision: str, device: torch.device | str) -> str | None:
    """Why ``precision`` will be slow on ``device``, or None when it runs natively."""
    device = torch.device(device)
    if precision in ("auto", "fp32") or precision in native_precisions(device):
        return None
    if device.type == "cpu":
        return (f"this CPU has no native {precision} instructions "
                f"(torch.ops.mkldnn._is_mkldnn_{precision}_supported() is False), so {precision} autocast is "
                f"emulated in software and runs several times slower than fp32")
    return f"{device.type} device {device} has no native {precision} support"


def resolve_precision(precision: str, device: torch.device | str, warn: bool = True) -> str:
    """``auto`` -> bf16 where it is native on ``device`` (CUDA GPUs that support it, CPUs with
    bf16 instructions), else fp32. An explicit precision is kept; when it would be emulated,
    one warning per process says why the run will be slow."""
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if "bf16" in native_precisions(device) else "fp32"
    reason = emulated_reason(precision, device)
    if reason and warn and (precision, device.type) not in _warned:
        _warned.add((precision, device.type))
        warnings.warn(f"precision {precision!r} on {device.type}: {reason}; --precision auto picks fp32 here",
                      RuntimeWarning, stacklevel=2)
    return precision

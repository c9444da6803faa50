"""bf16 mixed precision on CPUs that support it and on CUDA, decided once per device type.

nnU-Net autocasts to fp16 on CUDA and not at all on a CPU. :func:`autocast_forward` wraps a network's ``forward`` in
``torch.autocast(dtype=torch.bfloat16)`` instead: an inner autocast overrides nnU-Net's outer one, so training,
validation and ``nnUNetv2_predict`` (which rebuilds the network through the trainer class) all run the network in
bf16 without copying nnU-Net's steps. The outputs are cast back to fp32, so losses and the accumulation of sliding
window predictions stay in fp32.

The decision comes from ``NNUNETV2_XLSTM_BF16`` (``auto``, the default; ``0``/``off``; ``1``/``on``) or, when that is
unset, the caller's setting (a trainer's ``bf16`` attribute):

* ``auto``: bf16 where the device supports it (CPU: AVX512-BF16 or AMX; CUDA: ``torch.cuda.is_bf16_supported()``),
  otherwise nnU-Net's default (fp32 on a CPU, fp16 on CUDA), with the reason logged;
* ``on``: bf16, or an error naming the missing CPU feature;
* ``off``: nnU-Net's default.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from nnunetv2_xlstm.env import InputError

ENV = "NNUNETV2_XLSTM_BF16"
_ON, _OFF, _AUTO = ("1", "on", "true", "bf16"), ("0", "off", "false", "fp32"), ("", "auto")


class PrecisionError(InputError):
    """A bf16 request the machine or the setting cannot honour."""


@functools.cache
def cpu_bf16_support() -> str | None:
    """The CPU feature that makes bf16 fast here (``"amx_bf16"`` or ``"avx512_bf16"``), or None.

    Without one of them oneDNN emulates bf16, which is slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx_bf16"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    try:  # older torch: the kernel's flags
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def _setting(default: str) -> str:
    value = os.environ.get(ENV)
    value = (default if value is None else value).strip().lower()
    for name, spellings in (("on", _ON), ("off", _OFF), ("auto", _AUTO)):
        if value in spellings:
            return name
    raise PrecisionError(f"{ENV}={os.environ.get(ENV, default)!r} is not a precision setting; use auto, 1 (bf16) or "
                         f"0 (off)")


@functools.cache
def _decide(device_type: str, setting: str) -> tuple[bool, str]:
    if setting == "off":
        return False, f"bf16 off ({ENV} or the trainer's bf16 attribute): nnU-Net's default precision"
    if device_type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, "bf16 autocast on CUDA (instead of nnU-Net's fp16)"
        if setting == "on":
            raise PrecisionError(f"{ENV}=1 asks for bf16, but this GPU does not support it; set {ENV}=0 for fp16")
        return False, "this GPU has no bf16: nnU-Net's fp16 autocast"
    if device_type == "cpu":
        feature = cpu_bf16_support()
        if feature is not None:
            return True, f"bf16 autocast on the CPU ({feature})"
        if setting == "on":
            raise PrecisionError(f"{ENV}=1 asks for bf16, but this CPU has neither AMX-BF16 nor AVX512-BF16 (oneDNN "
                                 f"would emulate it, slower than fp32); unset {ENV} or set it to 0")
        return False, "fp32: this CPU has neither AMX-BF16 nor AVX512-BF16"
    return False, f"fp32: no bf16 policy for device type {device_type!r}"


def bf16_decision(device_type: str, default: str = "auto") -> tuple[bool, str]:
    """``(use bf16, why)`` for ``device_type`` ("cpu", "cuda", ...); ``default`` applies when ``NNUNETV2_XLSTM_BF16``
    is unset. Decided once per device type and setting."""
    return _decide(device_type, _setting(default))


def bf16_autocast(device: torch.device | str, default: str = "auto") -> torch.autocast:
    """``torch.autocast`` to bf16 on ``device`` if :func:`bf16_decision` says so, else a disabled one."""
    device_type = torch.device(device).type
    enabled, _ = bf16_decision(device_type, default)
    return torch.autocast(device_type if device_type in ("cpu", "cuda") else "cpu", dtype=torch.bfloat16,
                          enabled=enabled)


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    return out


class _BF16Forward:
    """The instance ``forward`` that :func:`autocast_forward` installs: the class's forward under bf16 autocast.

    An object holding its module, not a closure: ``copy.deepcopy`` of the module (an EMA teacher) then gives the copy
    a forward of its own instead of one that still runs the original's weights."""

    def __init__(self, module: torch.nn.Module, default: str) -> None:
        self.module, self.default = module, default

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with bf16_autocast(x.device, self.default):
            return _to_float(type(self.module).forward(self.module, x, *args, **kwargs))


def autocast_forward(network: torch.nn.Module, default: str = "auto") -> torch.nn.Module:
    """Run ``network``'s forward under :func:`bf16_autocast` of its input's device, outputs in fp32. Sets the
    instance's ``forward`` (state_dict, DDP, torch.compile and deepcopy are unaffected); returns ``network``."""
    network.forward = _BF16Forward(network, default)
    return network

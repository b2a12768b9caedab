"""Every choice the engine makes by device type, made once here: where features are stored, whether host buffers
are pinned, whether CNNs run channels_last, which autocast dtype applies and whether TF32 is allowed.

The engine asks a `DevicePolicy` instead of testing `device.type`, so each branch is a field that a test can force
on the CPU (`DevicePolicy.for_device(cpu).replace(...)`): the feature store on the device, pinned host memory,
channels_last, bf16 autocast. What a GPU adds is the kernels behind the same branches (cuda allocations, cudaHostAlloc,
cuDNN), never another code path. The paper trained in fp32, so fp32 with TF32 off is the default (core/config.py:
`precision`, `tf32`); PyTorch allows TF32 in cuDNN convolutions by default, which the engine turns off unless asked.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda asked for, but PyTorch sees no CUDA GPU here")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # CPUs with AVX-512 BF16 or AMX run bf16 matrix work natively (oneDNN)
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def _pinned_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)  # page-locked: copies to the GPU run asynchronously


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    device_free_bytes: Callable[[], int] | None = None  # the device's free memory; None = never store features there
    pin_memory: bool = False  # host-resident features are page-locked, for asynchronous copies to the device
    channels_last: bool = False  # CNNs and their inputs in NHWC (tensor-core convolutions)
    bf16: bool = False  # the hardware runs bf16 matrix work natively (what precision=auto asks)
    pinned_empty: Callable = _pinned_empty  # the pinned allocator (a test stands in for it on a CPU-only build)

    @classmethod
    def for_device(cls, device: torch.device) -> "DevicePolicy":
        if device.type == "cuda":
            return cls(device, device_free_bytes=lambda: torch.cuda.mem_get_info(device)[0], pin_memory=True,
                       channels_last=True, bf16=bf16_supported(device))
        return cls(device, bf16=bf16_supported(device))

    def replace(self, **changes) -> "DevicePolicy":
        return dataclasses.replace(self, **changes)

    # -- numerics ------------------------------------------------------------------------------------------------
    def autocast_dtype(self, precision: str) -> torch.dtype | None:
        """bf16 for precision=bf16 (and for auto where the hardware has it); None = plain fp32, the paper's."""
        if precision == "bf16" or (precision == "auto" and self.bf16):
            return torch.bfloat16
        return None

    def amp(self, precision: str) -> dict:
        """Keyword arguments of `torch.autocast` for a run's precision."""
        dtype = self.autocast_dtype(precision)
        return dict(device_type=self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    # -- memory ----------------------------------------------------------------------------------------------------
    def host_empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """Host memory for features that the device reads every batch: pinned where the device copies from it."""
        return self.pinned_empty(shape, dtype) if self.pin_memory else torch.empty(shape, dtype=dtype)


@contextlib.contextmanager
def fp32_math(allow_tf32: bool):
    """TF32 for fp32 matmuls and cuDNN convolutions on (allow_tf32) or off, restored afterwards (a worker runs many
    jobs in one process). Off is plain IEEE fp32, as the paper; PyTorch's own default allows TF32 in cuDNN
    convolutions, so both switches are set. The flags are process-wide and mean nothing on a CPU."""
    mode = "tf32" if allow_tf32 else "ieee"
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision"):  # PyTorch >= 2.9; mixing it with the legacy allow_tf32 flags is an error
        saved = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = mode
        try:
            yield mode
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # pragma: no cover - old torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        yield mode
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

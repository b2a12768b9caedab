"""Every choice the engine makes by device type, made once here: where features are stored, whether host buffers
are pinned, whether CNNs run channels_last, which autocast dtype applies and whether TF32 is allowed.

The engine asks a `DevicePolicy` instead of testing `device.type`, so each branch is a field that a test can force
on the CPU (`DevicePolicy.for_device(cpu).replace(...)`): the feature store on the device, pinned host memory,
channels_last, bf16 autocast. What a GPU adds is the kernels behind the same branches (cuda allocations, cudaHostAlloc,
cuDNN), never another code path. The paper trained in fp32: fp32 is the default, with TF32 on GPUs that have it (core/config.py
`precision`, `tf32`: a listed deviation); `tf32` off sets IEEE fp32 for matmuls and cuDNN convolutions alike. bf16 and
fp16 autocast are speed options; fp16 (for GPUs without native bf16: T4, V100) trains with a gradient scaler (train.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import runs_in


class DeviceError(ValueError):
    """The worker was set up for a GPU that PyTorch cannot use: says why and what to do (never a silent CPU run)."""


_CPU_ANYWAY = "To train on the CPU instead, set device=cpu (BLOCKLAB_DEVICE=cpu, or the CLI's --device cpu)."


def resolve_device(name: str) -> torch.device:
    """The torch device for a device setting. `auto` is the GPU when PyTorch can use one, the CPU on a machine
    without an NVIDIA GPU; where a GPU is there but PyTorch cannot reach it (most often a CUDA build newer than the
    driver), it refuses rather than train for hours on the CPU of a worker that claims a GPU."""
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    if name.startswith("cuda"):
        raise DeviceError(f"device={name} asked for, but PyTorch cannot use a CUDA GPU here: {_why_no_cuda()} "
                          f"{_CPU_ANYWAY}")
    if name == "auto" and nvidia_gpu_visible():
        raise DeviceError(f"device=auto: this machine has an NVIDIA GPU, but PyTorch cannot use it: "
                          f"{_why_no_cuda()} {_CPU_ANYWAY}")
    return torch.device("cpu" if name == "auto" else name)


def nvidia_gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU to the process (a device node, or the driver's nvidia-smi), unless
    CUDA_VISIBLE_DEVICES hides them all on purpose (empty or -1: a CPU run asked for)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def _why_no_cuda() -> str:
    """The likely cause, in the terms of the fix: a CPU-only PyTorch, or a CUDA build the driver is too old for."""
    built = torch.version.cuda
    if not built:
        return ("this PyTorch is a CPU-only build (torch.version.cuda is None). Install a CUDA build of torch "
                "(pytorch.org lists the wheel for each CUDA version).")
    driver = _driver_version()
    return (f"this PyTorch is built for CUDA {built} (torch.version.cuda), and the NVIDIA driver"
            f"{f' ({driver})' if driver else ''} is probably older than that build needs, or no GPU is passed to "
            f"this container. Install the torch wheel that matches the driver (nvidia-smi shows the highest CUDA "
            f"version it supports; e.g. pip install torch --index-url https://download.pytorch.org/whl/cu126), "
            f"or update the driver.")


def _driver_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return f"driver {m.group(1)}" if m else None


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 only (what precision=auto may pick). torch.cuda.is_bf16_supported() also says yes where bf16 is
    emulated (T4, V100: compute capability below 8.0), much slower than fp32 there, and asks about the current
    device, not `device`: the capability of `device` itself decides."""
    if device.type == "cuda":
        if torch.version.hip:
            return True  # every ROCm GPU PyTorch supports runs bf16
        return torch.cuda.get_device_capability(device) >= (8, 0)
    try:  # CPUs with AVX-512 BF16 or AMX run bf16 matrix work natively (oneDNN)
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast dtype (fp32: none)


def precision_name(amp: dict) -> str:
    """What ran, in the option's words (never "auto"): fp32, bf16 or fp16, from the run's autocast arguments."""
    if not amp.get("enabled"):
        return "fp32"
    return {dtype: name for name, dtype in AUTOCAST.items()}[amp["dtype"]]


def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch.autocast runs `dtype` on `device_type` here: autocast itself is asked (it turns itself off,
    with a warning, for a dtype or device it cannot serve, e.g. CUDA autocast without a usable GPU)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, dtype=dtype):
                return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == dtype
    except (RuntimeError, ValueError):  # a device type autocast does not know at all
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
    fixed_shapes: bool = False  # the frozen pass pads to fixed shapes where that pays (cuDNN's benchmark mode)
    pinned_empty: Callable = _pinned_empty  # the pinned allocator (a test stands in for it on a CPU-only build)

    @classmethod
    def for_device(cls, device: torch.device) -> DevicePolicy:
        if device.type == "cuda":
            return cls(device, device_free_bytes=lambda: torch.cuda.mem_get_info(device)[0], pin_memory=True,
                       channels_last=True, bf16=bf16_supported(device), fixed_shapes=True)
        return cls(device, bf16=bf16_supported(device))

    def replace(self, **changes) -> DevicePolicy:
        return dataclasses.replace(self, **changes)

    # -- numerics ------------------------------------------------------------------------------------------------
    def autocast_dtype(self, precision: str) -> torch.dtype | None:
        """The autocast dtype of a precision: bf16 or fp16 when named; for auto, bf16 where the hardware runs it
        natively, else None (auto never picks fp16: it needs a gradient scaler and changes the numerics more than a
        default should); None = plain fp32, the paper's. A dtype autocast cannot run on this device type is refused
        here, naming the option, rather than failing (or silently running fp32) inside the first forward."""
        precision = runs_in(precision, self.bf16)
        dtype = AUTOCAST.get(precision)
        if dtype is not None and not autocast_supported(self.device.type, dtype):
            raise DeviceError(f"precision={precision}: {str(dtype).removeprefix('torch.')} autocast is not available "
                              f"on {self.device.type} with this PyTorch ({torch.__version__}); choose precision fp32"
                              f"{' or bf16' if precision == 'fp16' else ''}, or another device")
        return dtype

    def amp(self, precision: str) -> dict:
        """Keyword arguments of `torch.autocast` for a run's precision."""
        dtype = self.autocast_dtype(precision)
        return dict(device_type=self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    # -- memory ----------------------------------------------------------------------------------------------------
    def host_empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """Host memory for features that the device reads every batch: pinned where the device copies from it."""
        return self.pinned_empty(shape, dtype) if self.pin_memory else torch.empty(shape, dtype=dtype)


def _precision_switches() -> tuple | None:
    """(matmul, cuDNN conv) switches with `fp32_precision` where this PyTorch has both (2.9 and newer), else None:
    older releases (Colab's and Kaggle's for months) have only the allow_tf32 flags. Asked of torch itself, not
    of its version number; the two kinds are never mixed (setting both is an error where the new one exists)."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return matmul, conv
    return None


def fp32_modes() -> tuple[str, str]:
    """What fp32 matmuls and cuDNN convolutions are set to now, in fp32_precision's words ("tf32", "ieee"; "none"
    where a newer PyTorch's switch defers to its default)."""
    switches = _precision_switches()
    if switches:
        return switches[0].fp32_precision, switches[1].fp32_precision
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return tuple("tf32" if on else "ieee" for on in flags)


@contextlib.contextmanager
def fp32_math(allow_tf32: bool):
    """TF32 for fp32 matmuls and cuDNN convolutions on (allow_tf32) or off, restored afterwards (a worker runs many
    jobs in one process). Off is plain IEEE fp32, as the paper; PyTorch's own default allows TF32 in cuDNN
    convolutions, so both switches are set. The flags are process-wide and mean nothing on a CPU."""
    mode = "tf32" if allow_tf32 else "ieee"
    switches = _precision_switches()
    if switches:
        matmul, conv = switches
        saved = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = mode
        try:
            yield mode
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        yield mode
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

"""Where a number came from: device, software, threads, date. Attached to every result."""
from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

import torch

__all__ = ["resolve_device", "device_name", "provenance", "synchronize"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; anything else is checked and returned.

    Raises:
        ValueError: an unknown device string, or CUDA asked for where none is available.
    """
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on a CUDA device (no-op on CPU), so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: str | torch.device = "auto") -> str:
    """A stable human-readable name of the device kind (the timing cache is keyed by it)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu:{cpu}"


def provenance(device: str | torch.device = "auto", **params: Any) -> dict[str, Any]:
    """Device, torch/torchvision versions, threads, host, UTC date, plus the run's ``params``."""
    import torchvision

    dev = resolve_device(device)
    return {
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
    }

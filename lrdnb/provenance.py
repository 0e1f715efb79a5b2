"""Where a number came from: device, software, threads, date, code version and machine load.

Attached to every result. :func:`provenance` is taken when a run starts; :func:`finish` adds the
end time and the load average at the end, so a reader can tell a quiet run from a busy one.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["resolve_device", "device_name", "provenance", "run_start", "finish", "git_commit", "load_average",
           "synchronize"]


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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": short hash, "dirty": bool}`` of the git checkout holding ``path`` (default: this
    package); ``{"commit": None, "dirty": None}`` outside a git checkout or without git."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``os.getloadavg``); ``None`` where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def finish(meta: dict[str, Any]) -> dict[str, Any]:
    """Record the end of a run in ``meta`` (in place, and returned): ``end_date`` and ``load_end``.

    Called by :func:`lrdnb.results.write_results`, so every results file says how busy the
    machine was at the start (``load_start``) and at the end of the run.
    """
    meta["end_date"] = _now()
    meta["load_end"] = load_average()
    return meta


def run_start() -> dict[str, Any]:
    """What :func:`provenance` records about the start of a run, taken now: UTC date, load average
    and git commit (the code that runs is the code of this moment, even if HEAD moves before the
    results are written)."""
    return {"date": _now(), "load_start": load_average(), **git_commit()}


def provenance(device: str | torch.device = "auto", started: dict[str, Any] | None = None,
               **params: Any) -> dict[str, Any]:
    """Device, torch/torchvision versions, threads, host, UTC date, git commit (+ dirty flag),
    load average at the start, plus the run's ``params``.

    ``started`` (:func:`run_start`, taken when the run began) supplies the date, load and commit;
    without it they are taken now. Where HEAD has moved since, ``commit_at_write`` names it.
    """
    import torchvision

    dev = resolve_device(device)
    now = run_start()
    start = started or now
    meta = {
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "date": start["date"],
        "commit": start["commit"],
        "dirty": start["dirty"],
        "load_start": start["load_start"],
        "params": params,
    }
    if now["commit"] != start["commit"]:
        meta["commit_at_write"] = now["commit"]
    return meta

"""Where a step's time goes, by op: what decomposition can shrink and what it cannot.

A FLOP-predicted speed-up (``torch.utils.flop_counter``) applies only to the convolutions and
matrix products; BatchNorm, activations, additions, pooling and the optimizer step keep their
cost. These helpers measure that split with ``torch.profiler`` (self CPU time per op):

* :func:`op_time_breakdown` - seconds and share per op category (:data:`OP_CATEGORIES`);
* :func:`flop_time_share` - the share of the FLOP ops alone (Table 1's Amdahl bound).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Any, Callable

import pandas as pd

__all__ = ["FLOP_OPS", "OP_CATEGORIES", "op_time_breakdown", "flop_time_share"]

#: ops whose work FlopCounterMode counts (convolutions and matrix products, forward and backward)
FLOP_OPS = re.compile(r"conv|^aten::(mm|addmm|bmm|baddbmm|matmul|linear)$")

#: op categories of :func:`op_time_breakdown`, matched in this order on the profiler's op name;
#: the first, ``flop``, is :data:`FLOP_OPS`; anything unmatched is ``other``
OP_CATEGORIES: dict[str, re.Pattern] = {
    "flop": FLOP_OPS,
    "batchnorm": re.compile(r"batch_norm"),
    "activation": re.compile(r"relu|threshold|clamp_min|gelu|silu|sigmoid|tanh|softmax"),
    "optimizer": re.compile(r"_foreach_|^Optimizer\.|sgd|adam", re.I),
    "pooling": re.compile(r"pool"),
    "elementwise": re.compile(r"^aten::(add|add_|mul|mul_|div|div_|sub|sub_|copy_|fill_|zero_|zeros_like|ones_like|"
                              r"empty|empty_like|clone|contiguous|to|_to_copy)$"),
    "autograd": re.compile(r"autograd|AccumulateGrad|Backward|^aten::(t|view|reshape|permute|expand|as_strided|"
                           r"detach|alias|transpose|flatten|sum)$"),
}

#: what Kineto, the profiler's C++ backend, writes to stderr on every profile of a CUDA build
#: running without a GPU (start/stop markers, a failed device count)
_KINETO_CHATTER = re.compile(r"^(USDT|STAGE):.*(profiler_start|profiler_stop|Completed Stage)|gpuGetDeviceCount failed")

@contextlib.contextmanager
def quiet_kineto():
    """Hold the process's stderr (file descriptor 2) in a temporary file while profiling and
    pass on every line that is not :data:`_KINETO_CHATTER`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines() if not _KINETO_CHATTER.search(ln)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def flop_time_share(fn: Callable[[], Any], calls: int = 3) -> float:
    """Fraction of ``fn()``'s CPU time spent in the ops FLOPs count (:data:`FLOP_OPS`).

    Measured with ``torch.profiler`` (self CPU time per op, ``calls`` calls after one warm-up).
    The rest - BatchNorm, activations, additions, pooling, the optimizer step, dispatch - does
    not shrink when a layer is decomposed, so a FLOP-predicted speed-up ``p`` can at best become
    the Amdahl bound ``1 / ((1 - f) + f / p)`` (:func:`lrdnb.experiments.throughput.amdahl`).
    It is the ``flop`` row of :func:`op_time_breakdown` (0 if there is none).
    """
    df = op_time_breakdown(fn, calls)
    if not df["seconds"].sum() > 0:
        return float("nan")
    return float(df.loc[df["category"] == "flop", "share"].sum())


def op_time_breakdown(fn: Callable[[], Any], calls: int = 3) -> pd.DataFrame:
    """Self CPU time of ``fn()`` per op category (:data:`OP_CATEGORIES`), per call.

    ``calls`` profiled calls after one warm-up (``torch.profiler``, CPU). Self times add up to
    the profiled total, so the shares sum to 1.

    Returns:
        One row per category (``category, seconds, share, ops``; ``ops``: the three costliest
        op names in it), costliest first.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 3, 8, 8)
        >>> conv = torch.nn.Conv2d(3, 4, 3)
        >>> df = op_time_breakdown(lambda: torch.relu(conv(x)), calls=1)
        >>> round(float(df["share"].sum()), 6), "flop" in set(df["category"])
        (1.0, True)
    """
    from torch.profiler import ProfilerActivity, profile

    fn()
    with quiet_kineto(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    rows = []
    for e in prof.key_averages():
        cat = next((c for c, rx in OP_CATEGORIES.items() if rx.search(e.key)), "other")
        rows.append((cat, e.key, e.self_cpu_time_total * 1e-6 / calls))
    df = pd.DataFrame(rows, columns=["category", "op", "seconds"])
    total = df["seconds"].sum()
    g = df.sort_values("seconds", ascending=False).groupby("category", sort=False)
    out = pd.DataFrame({"seconds": g["seconds"].sum(), "ops": g["op"].agg(lambda o: ", ".join(o.head(3)))})
    out = out.rename_axis("category").reset_index()
    out["share"] = out["seconds"] / total if total > 0 else float("nan")
    return out.sort_values("seconds", ascending=False)[["category", "seconds", "share", "ops"]].reset_index(drop=True)

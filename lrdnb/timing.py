"""Timing on the device: runners, one measurement, and the one round-robin helper.

All measurements go through ``torch.utils.benchmark.Timer`` (warm-up, accelerator sync, thread
count). Rank sweeps built on these live in :mod:`lrdnb.sweeps`.

Measuring on a noisy machine (see MEASURING.md): slow episodes make everything 3-7x slower for
minutes, so

* :func:`interleaved` times any set of zero-argument callables round-robin with a rotating order
  and :func:`paired_ratios` reports per-round ratios (median, min-max) - the one helper for
  side-by-side speed claims;
* :func:`lrdnb.sweeps.sweep` visits the ranks several times in different orders and times the
  original layer as a fixed reference every few ranks (reference-normalised times).

Threads: on an oversubscribed CPU (more busy threads than cores), multi-threaded OpenMP kernels
spin-wait on each other and single calls vary 10x (measured here: a Tucker2 layer's train call
took 40-600 ms with 2 threads under load, 23-50 ms with 1). Sweeps take ``threads``; use 1 on
a shared machine, and compare only timings taken with the same thread count (it is recorded and
part of the cache key).

"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.utils.benchmark as benchmark
from torch.utils.benchmark.utils.common import set_torch_threads
from torch import nn

from .provenance import resolve_device

__all__ = [
    "PASSES",
    "make_runner",
    "time_callable",
    "interleaved",
    "paired_ratios",
]

#: ``forward`` (no grad), ``train`` (forward + backward), ``step`` (train + SGD momentum update).
PASSES = ("forward", "train", "step")
_MODES = ("blocked", "adaptive", "fixed")


def _check_pass(pass_: str) -> None:
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; valid: {list(PASSES)}")


def make_runner(
    module: nn.Module,
    input_shape: Sequence[int],
    pass_: str = "forward",
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    input_requires_grad: bool = True,
    lr: float = 1e-3,
    momentum: float = 0.9,
    seed: int = 0,
    inputs: torch.Tensor | None = None,
    grad_output: torch.Tensor | None = None,
) -> Callable[[], None]:
    """A zero-argument callable running one ``pass_`` of ``module`` on a random input.

    Args:
        module: moved to ``device``/``dtype`` (and channels_last for 4-D inputs) in place.
        input_shape: full input shape including the batch.
        pass_: ``"forward"`` (``torch.no_grad``, eval mode), ``"train"`` (forward + backward in
            train mode; only parameters with ``requires_grad`` get gradients, so frozen factors
            cost what they cost in training) or ``"step"`` (``train`` + ``SGD(momentum)`` step).
        input_requires_grad: the input needs a gradient, as for any layer but the first of a
            network (backward then computes the input gradient too).
        inputs: a tensor of ``input_shape`` to use instead of a fresh random one (runners of one
            sweep share it; it is moved/converted and its ``requires_grad`` set here).
        grad_output: the gradient to back-propagate, of the output's shape (runners of one sweep
            share it); default: a random one. Either way it is used in the output's memory
            layout - in a channels_last network the gradient reaching a layer is channels_last, and
            a gradient in another layout would add a conversion copy to every timed call.

    Returns:
        ``run()``; gradients are reset to ``None`` on every call (``zero_grad(set_to_none)``).

    Example:
        >>> run = make_runner(nn.Linear(8, 4), (2, 8), "train", device="cpu")
        >>> run()
    """
    _check_pass(pass_)
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    module.to(device=dev, dtype=dtype)
    if inputs is not None and tuple(inputs.shape) != tuple(input_shape):
        raise ValueError(f"inputs has shape {tuple(inputs.shape)}, expected {tuple(input_shape)}")
    x = inputs if inputs is not None else torch.randn(tuple(input_shape), generator=gen, dtype=dtype)
    x = x.to(device=dev, dtype=dtype)
    if channels_last and x.dim() == 4:
        module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if pass_ == "forward":
        module.eval()

        def run_forward() -> None:
            with torch.no_grad():
                module(x)

        return run_forward
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    x.requires_grad_(input_requires_grad)
    if not params and not input_requires_grad:
        raise ValueError(f"pass {pass_!r} needs something to differentiate: every parameter is frozen "
                         "and input_requires_grad=False; use pass_='forward'")
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum) if pass_ == "step" and params else None
    grad_out: list[torch.Tensor] = []  # made on the first call: no extra forward just for its shape

    def run_train() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        y = module(x)
        if not grad_out:
            g = grad_output if grad_output is not None else torch.randn(y.shape, generator=gen, dtype=y.dtype)
            if tuple(g.shape) != tuple(y.shape):
                raise ValueError(f"grad_output has shape {tuple(g.shape)}, the output {tuple(y.shape)}")
            if g.stride() != y.stride() or g.device != y.device or g.dtype != y.dtype:
                g = torch.empty_like(y).copy_(g)  # the output's layout (empty_like preserves strides)
            grad_out.append(g)
        y.backward(grad_out[0])
        if opt is not None:
            opt.step()

    return run_train


def time_callable(
    fn: Callable[[], Any],
    device: str | torch.device = "auto",
    min_run_time: float = 0.2,
    mode: str = "blocked",
    number: int | None = None,
    threads: int | None = None,
    threshold: float = 0.1,
    max_run_time: float = 10.0,
    warmup: int = 1,
) -> dict[str, float]:
    """Time ``fn()`` with ``torch.utils.benchmark.Timer``; seconds per call.

    Args:
        fn: any zero-argument callable.
        device: only decides whether the Timer synchronizes an accelerator (it does whenever one
            is available, as torch.utils.benchmark does).
        min_run_time: seconds of measurement (``blocked``/``adaptive``).
        mode: ``"blocked"`` (``blocked_autorange``), ``"adaptive"`` (``adaptive_autorange``,
            stops at IQR/median < ``threshold`` or ``max_run_time``) or ``"fixed"`` (one
            synchronized block of ``number`` calls after ``warmup`` calls: cheapest, for sweeps).
        number: calls per block for ``"fixed"`` (default 1).
        warmup: untimed calls before the ``"fixed"`` block (first calls of a new shape build
            oneDNN/cuDNN kernels and cost several calls).
        threads: intra-op threads for the measurement (default: ``torch.get_num_threads()``;
            ``Timer`` would otherwise use 1).

    Returns:
        ``{"median_s", "iqr_s", "min_s", "max_s", "n"}`` over the measured blocks (``n`` calls).
    """
    if mode not in _MODES:
        raise ValueError(f"unknown timing mode {mode!r}; valid: {list(_MODES)}")
    resolve_device(device)  # validates
    timer = _timer(fn, threads or torch.get_num_threads())
    if mode == "fixed":
        number = max(1, int(number or 1))
        if hasattr(timer, "_timeit"):  # warm-up of our choosing, then one synchronized block
            with set_torch_threads(threads or torch.get_num_threads()):
                for _ in range(warmup):
                    fn()
                sec = max(timer._timeit(number), 1e-9) / number
            # one block: its statistics need no array (a search takes ~800 of these)
            return {"median_s": sec, "iqr_s": 0.0, "min_s": sec, "max_s": sec, "n": number}
        else:  # pragma: no cover - older/newer torch: Timer.timeit (2 warm-up calls of its own)
            m = timer.timeit(number=number)
    elif mode == "adaptive":
        m = timer.adaptive_autorange(threshold=threshold, min_run_time=min_run_time, max_run_time=max_run_time)
    else:
        m = timer.blocked_autorange(min_run_time=min_run_time)
    t = np.asarray(m.times, dtype=float)
    q1, q3 = np.percentile(t, [25, 75])
    return {"median_s": float(np.median(t)), "iqr_s": float(q3 - q1), "min_s": float(t.min()),
            "max_s": float(t.max()), "n": int(len(t) * m.number_per_run)}


def _timer(fn: Callable[[], Any], threads: int) -> benchmark.Timer:
    """The ``Timer`` of ``fn``, kept on the function when it can hold attributes: a rank search
    takes ~700 single-block measurements of ~190 runners, and building a ``Timer`` compiles its
    statement (~0.3 ms, 3% of a ResNet-50 search)."""
    held = getattr(fn, "__dict__", {}).get("_lrdnb_timer")
    if held is not None and held[0] == threads:
        return held[1]
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    try:
        fn.__dict__["_lrdnb_timer"] = (threads, timer)
    except (AttributeError, TypeError):  # builtins, bound methods, classes: a new Timer each time
        pass
    return timer


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    rounds: int = 5,
    device: str | torch.device = "auto",
    min_run_time: float = 0.2,
    threads: int | None = None,
    progress: bool = True,
    mode: str = "blocked",
    number: int | None = None,
    warmup: int = 1,
) -> pd.DataFrame:
    """Time several zero-argument callables round-robin: ``A B C``, ``B C A``, ``C A B``, ...

    The one helper for side-by-side speed claims (layers, whole-model train steps, inference):
    every round measures every variant once, the order rotating by one each round, so a slow
    episode of the machine hits all variants of a round alike and cancels in
    :func:`paired_ratios`.

    Args:
        variants: ``{name: fn}``; each ``fn()`` runs one unit of work (a step, a forward, ...).
        rounds: rounds (>= 5 recommended, MEASURING.md).
        min_run_time: seconds per measurement (``Timer.blocked_autorange``).
        mode, number: measurement mode of :func:`time_callable` (``"fixed"`` with ``number``
            calls is the cheap one, for many short measurements).
        warmup: untimed calls of each variant before its first ``"fixed"`` measurement.

    Returns:
        Tidy DataFrame, one row per (round, variant): ``round, position, variant, median_s,
        iqr_s, min_s, max_s, n``.

    Example:
        >>> df = interleaved({"a": lambda: None, "b": lambda: None}, rounds=2, device="cpu",
        ...                  min_run_time=0.001, progress=False)
        >>> sorted(df.columns)[:3], len(df)
        (['iqr_s', 'max_s', 'median_s'], 4)
    """
    if not variants:
        raise ValueError("interleaved needs at least one variant")
    names = list(variants)
    rows = []
    from tqdm.auto import tqdm

    bar = tqdm(total=rounds * len(names), desc="interleaved", unit="run", disable=not progress)
    for k in range(rounds):
        order = names[k % len(names):] + names[: k % len(names)]
        for pos, name in enumerate(order):
            r = time_callable(variants[name], device, min_run_time=min_run_time, threads=threads, mode=mode,
                              number=number, warmup=warmup if k == 0 else 0)
            rows.append({"round": k, "position": pos, "variant": name, **r})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def paired_ratios(df: pd.DataFrame, reference: str, value: str = "median_s") -> pd.DataFrame:
    """Per-round ratios against ``reference`` from an :func:`interleaved` frame.

    Returns:
        One row per variant: ``variant, ratio`` (median over rounds of ``t / t_reference``),
        ``ratio_min, ratio_max``, ``speedup`` (median of ``t_reference / t``),
        ``speedup_min, speedup_max``, ``rounds``, ``median_s`` (median time).
    """
    if reference not in set(df["variant"]):
        raise ValueError(f"reference {reference!r} not among variants {sorted(set(df['variant']))}")
    wide = df.pivot_table(index="round", columns="variant", values=value)
    rows = []
    for v in wide.columns:
        r = (wide[v] / wide[reference]).dropna()
        s = 1.0 / r
        rows.append({"variant": v, "ratio": float(r.median()), "ratio_min": float(r.min()),
                     "ratio_max": float(r.max()), "speedup": float(s.median()),
                     "speedup_min": float(s.min()), "speedup_max": float(s.max()),
                     "rounds": int(len(r)), "median_s": float(wide[v].median())})
    return pd.DataFrame(rows)

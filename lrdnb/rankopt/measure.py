"""Measuring on the device: runners, one measurement, round-robin rounds, and a layer's bench.

All measurements go through ``torch.utils.benchmark.Timer`` (warm-up, accelerator sync, thread
count), or through the timer a :class:`~lrdnb.rankopt.config.Timing` names (a fake device in tests).

This machine kind has slow episodes that make everything 3-7x slower for minutes (docs/measuring.md),
so every speed claim is a ratio taken within one round:

* :func:`interleaved` / :func:`paired_ratios` - whole-model variants timed round-robin with a
  rotating order; per-round ratios, median and min-max (Table 1, the accuracy tables);
* :func:`paired_rounds` - the same for the rank search: pairs ``(a, b)`` of runners, per-round
  ``t(a) / t(b)``, rounds stopped early once every pair is settled;
* :class:`LayerBench` - one layer's modules at any rank, each measurement normalised by the
  original layer timed every :data:`REFERENCE_EVERY` measurements (the sweeps' curves).

Threads: on an oversubscribed CPU multi-threaded kernels spin-wait on each other and single calls
vary 10x; time with 1 thread on a shared machine, and compare only timings of equal thread counts.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import random
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..layers import FACTOR_ROLES, build_factorized
from ..spec import LayerSpec
from ..provenance import resolve_device
from ..ranks import tucker2_pair
from .config import PASSES, ResolvedTiming

__all__ = ["PASSES", "ORDERS", "REFERENCE_EVERY", "check_pass", "make_runner", "time_callable", "interleaved",
           "interleaved_schedules", "paired_ratios", "paired_rounds", "shape_module", "LayerBench"]

#: Orders in which a sweep visits the ranks, cycled over its repeats.
ORDERS = ("desc", "asc", "shuffle")
#: Measurements between two timings of the original layer, the reference of a layer's curve.
REFERENCE_EVERY = 8
_MODES = ("blocked", "fixed")


def check_pass(pass_: str) -> None:
    """Raise ``ValueError`` naming the valid passes for anything not in :data:`PASSES`."""
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
        ``run()``; gradients are reset to ``None`` on every call (``zero_grad(set_to_none)``);
        ``run.module`` is the module it runs.

    Example:
        >>> run = make_runner(nn.Linear(8, 4), (2, 8), "train", device="cpu")
        >>> run()
    """
    check_pass(pass_)
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

        run_forward.module = module  # type: ignore[attr-defined]
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

    run_train.module = module  # type: ignore[attr-defined]
    return run_train


def time_callable(
    fn: Callable[[], Any],
    device: str | torch.device = "auto",
    min_run_time: float = 0.2,
    mode: str = "blocked",
    number: int | None = None,
    threads: int | None = None,
    warmup: int = 1,
) -> dict[str, float]:
    """Time ``fn()`` with ``torch.utils.benchmark.Timer``; seconds per call.

    Args:
        fn: any zero-argument callable.
        device: only decides whether the Timer synchronizes an accelerator (it does whenever one
            is available, as torch.utils.benchmark does).
        min_run_time: seconds of measurement (``blocked``).
        mode: ``"blocked"`` (``blocked_autorange``) or ``"fixed"`` (one synchronized block of
            ``number`` calls after ``warmup`` calls: cheapest, for sweeps).
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
    else:
        m = timer.blocked_autorange(min_run_time=min_run_time)
    t = np.asarray(m.times, dtype=float)
    q1, q3 = np.percentile(t, [25, 75])
    return {"median_s": float(np.median(t)), "iqr_s": float(q3 - q1), "min_s": float(t.min()),
            "max_s": float(t.max()), "n": int(len(t) * m.number_per_run)}


@contextlib.contextmanager
def set_torch_threads(n: int) -> Iterator[None]:
    """Intra-op threads set to ``n`` inside the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _benchmark() -> Any:
    """``torch.utils.benchmark``, imported on first use with torch's C++-extension logger quiet:
    its import logs a CUDA_HOME warning on machines without CUDA that would land in every
    notebook's output."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as benchmark
    finally:
        log.setLevel(level)
    return benchmark


def _timer(fn: Callable[[], Any], threads: int) -> Any:
    """The ``Timer`` of ``fn``, kept on the function when it can hold attributes: a rank search
    takes ~700 single-block measurements of ~190 runners, and building a ``Timer`` compiles its
    statement (~0.3 ms, 3% of a ResNet-50 search)."""
    held = getattr(fn, "__dict__", {}).get("_lrdnb_timer")
    if held is not None and held[0] == threads:
        return held[1]
    timer = _benchmark().Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
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


def interleaved_schedules(
    models: Mapping[str, tuple[nn.Module, Any]],
    input_shape: Sequence[int],
    passes: Sequence[str] = ("step",),
    device: str | torch.device = "auto",
    make: Callable[[nn.Module, str, str, int], Callable[[], Any]] | None = None,
    **timing: Any,
) -> pd.DataFrame:
    """Round-robin times (:func:`interleaved`) of models trained under freezing schedules.

    ``models`` maps a name to ``(model, schedule)`` (a :class:`lrdnb.freezing.FreezingSchedule`).
    A copy of each model is timed per pass; a ``"step"`` is timed at every phase of its schedule
    (sequential freezing, Algorithm 2, alternates the frozen factors between epochs) and the
    phases are averaged per round, as its epochs alternate. ``make(model, name, pass_, phase)``
    builds a runner (default :func:`make_runner` on a random ``input_shape`` batch; e.g. compile
    first); ``timing`` goes to :func:`interleaved` (``rounds``, ``min_run_time``, ``threads``,
    ``progress``).

    Returns:
        One row per ``(round, variant, pass_)`` (``variant`` = the name) with ``median_s``
        averaged over phases, ready for :func:`paired_ratios`.
    """
    dev = resolve_device(device)
    runners, ids = {}, {}
    for name, (model, schedule) in models.items():
        for pass_ in passes:
            for e in (schedule.phases() if pass_ == "step" else (0,)):
                m = copy.deepcopy(model).to(dev)
                schedule.apply(m, e)
                key = f"{name}|{pass_}|{e}"
                ids[key] = (name, pass_)
                runners[key] = (make(m, name, pass_, e) if make else
                                make_runner(m, input_shape, pass_, dev, input_requires_grad=False))
    raw = interleaved(runners, device=dev, **timing)
    raw["variant"], raw["pass_"] = zip(*raw["variant"].map(ids))
    return raw.groupby(["round", "variant", "pass_"], as_index=False)["median_s"].mean()


def benchmark_timer(fn: Callable[[], Any], number: int, threads: int) -> float:
    """The default timer: seconds per call of one synchronized block of ``number`` calls."""
    return time_callable(fn, mode="fixed", number=number, threads=threads, warmup=0)["median_s"]


def calls_for(seconds_per_call: float, min_run_time: float) -> int:
    """Calls per measurement so that one measurement lasts about ``min_run_time`` (1..1000)."""
    return int(min(1000, max(1, round(min_run_time / max(seconds_per_call, 1e-7)))))


def paired_rounds(
    runners: Mapping[Any, Callable[[], Any]],
    pairs: Sequence[tuple[Any, Any]],
    rounds: int,
    timer: Callable[[Callable[[], Any], int, int], float],
    number: int = 1,
    threads: int = 1,
    settled: Callable[[list[float]], bool] | None = None,
    stop: Callable[[dict[tuple[Any, Any], list[float]]], bool] | None = None,
) -> dict[tuple[Any, Any], list[float]]:
    """Per-round ratios ``t(a) / t(b)`` of each pair, every runner of the pairs still open timed
    once per round in a rotating order (``A B C``, ``B C A``, ...), so a slow episode of the
    machine hits both sides of a pair alike. A pair leaves the rotation once ``settled(ratios)``
    says its verdict cannot change any more; the rounds stop when none is left, or when
    ``stop(all ratios so far)`` says so.

    Example:
        >>> q = paired_rounds({"a": lambda: None, "b": lambda: None}, [("a", "b")], 3,
        ...                   timer=lambda fn, n, th: 1.0)
        >>> q[("a", "b")]
        [1.0, 1.0, 1.0]
    """
    q: dict[tuple[Any, Any], list[float]] = {p: [] for p in pairs}
    active = list(pairs)
    for k in range(rounds):
        keys = list(dict.fromkeys(x for p in active for x in p))
        keys = keys[k % len(keys):] + keys[: k % len(keys)]
        t = {key: timer(runners[key], number, threads) for key in keys}
        for a, b in active:
            q[(a, b)].append(float(t[a] / t[b]))
        if settled is not None:
            active = [p for p in active if not settled(q[p])]
        if not active or (stop is not None and stop(q)):
            break
    return q


#: The random values every timed module's parameters are copied from (grown on demand; drawing
#: 2.4M normal values for a [512, 512, 3, 3] layer costs more than building the module).
_POOL: list[torch.Tensor] = [torch.empty(0)]


def shape_module(spec: LayerSpec | Mapping[str, Any], method: str, ranks: Sequence[int],
                 frozen: Sequence[str] = ()) -> nn.Module:
    """A module of ``spec``'s shapes at ``ranks`` (``method="keep"``: the original layer) with
    arbitrary weights: step time depends only on shapes, so nothing is decomposed. Built on the
    meta device and filled from one random pool (~10x cheaper than Kaiming initialisation);
    ``frozen`` factor roles get ``requires_grad=False``.

    Example:
        >>> from lrdnb.spec import LayerSpec
        >>> s = LayerSpec("c", "conv2d", [8, 8, 3, 3], False, [1, 8, 4, 4], method="tucker2", ranks=[4, 4])
        >>> shape_module(s, "tucker2", [4, 2], frozen=["first"]).first.weight.requires_grad
        False
    """
    for role in frozen if method != "keep" else ():
        if role not in FACTOR_ROLES[method]:
            raise ValueError(f"unknown factor role {role!r}; valid for {method}: {list(FACTOR_ROLES[method])}")
    d = spec if isinstance(spec, Mapping) else spec.to_dict()
    with torch.device("meta"):
        mod = build_factorized(d, ranks=list(ranks), method=method)
    mod = mod.to_empty(device="cpu")
    with torch.no_grad():
        for p in mod.parameters():
            if p.numel() > _POOL[0].numel():
                _POOL[0] = torch.randn(p.numel(), generator=torch.Generator().manual_seed(0)) * 0.05
            p.copy_(_POOL[0][: p.numel()].view_as(p))
    for role in frozen if method != "keep" else ():
        getattr(mod, role).requires_grad_(False)
    return mod


class LayerBench:
    """One layer on the device: its original module (rank 0) and its decompositions at any rank,
    built on first use, all reading one input tensor and one output gradient.

    :meth:`measure` times a rank (every pass, back to back) with the original layer re-timed
    every :data:`REFERENCE_EVERY` measurements; :meth:`ratio` is a rank's time divided by the
    reference interpolated to the moment it was measured, so a slow episode between two ranks
    does not look like a step. :meth:`pairs` times pairs of ranks round-robin
    (:func:`paired_rounds`), reusing the warm runners.
    """

    def __init__(self, spec: LayerSpec, method: str, beta: float, timing: ResolvedTiming,
                 passes: Sequence[str] | None = None, size_rank: int | None = None, seed: int = 0) -> None:
        self.spec, self.method, self.beta, self.t = spec, method, beta, timing
        self.passes = tuple(passes or (timing.pass_,))
        for p in self.passes:
            check_pass(p)
        self.frozen = timing.frozen.get(method, ())
        self.timer = timing.timer or benchmark_timer
        torch.manual_seed(seed)
        self.x = torch.randn(tuple(spec.input_shape), dtype=timing.dtype)
        self.g = None  # one output gradient for every runner, in the layout the outputs have
        if spec.output_shape:
            self.g = torch.randn(tuple(spec.output_shape), dtype=timing.dtype)
            if timing.channels_last and self.g.dim() == 4:
                self.g = self.g.contiguous(memory_format=torch.channels_last)
        self.spec_d = spec.to_dict()
        self.runners: dict[tuple[int, str], Callable] = {}
        self.seen: set[tuple[int, str]] = set()
        self.log: list[tuple[int, int, str, float]] = []  # (repeat, rank, pass, seconds), in order
        self.since_ref = 0
        self.count = 0  # measurements taken (paired rounds count one per runner timed)
        # calls per measurement, per pass, from the slowest variant's first (cold) call: it is the
        # warm-up and an overestimate, so a measurement lasts at most ~min_run_time
        self.number = {}
        with set_torch_threads(timing.threads):
            for p in self.passes:
                probe = [0] + ([size_rank] if size_rank else [])
                est = max(self.timer(self.runner(r, p), 1, timing.threads) for r in probe)
                self.number[p] = calls_for(est, timing.min_run_time)
                self.seen.update((r, p) for r in probe)

    def ranks_of(self, r: int) -> list[int]:
        """The method's ranks at search rank ``r`` (Tucker2: ``[r, floor(beta r)]``, eq. 5)."""
        return tucker2_pair(r, self.beta, self.spec.out_channels) if self.method == "tucker2" else [r]

    def runner(self, r: int, p: str | None = None) -> Callable[[], None]:
        p = p or self.passes[0]
        if (r, p) not in self.runners:
            mod = shape_module(self.spec_d, "keep" if r == 0 else self.method, [] if r == 0 else self.ranks_of(r),
                               () if r == 0 else self.frozen)
            self.runners[(r, p)] = make_runner(mod, self.spec.input_shape, p, self.t.device, self.t.dtype,
                                               self.t.channels_last, input_requires_grad=self.spec.input_grad,
                                               inputs=self.x, grad_output=self.g)
        return self.runners[(r, p)]

    def _time(self, k: int, r: int, p: str) -> None:
        fn = self.runner(r, p)
        if (r, p) not in self.seen:  # a new shape's first call builds its kernels
            fn()
            self.seen.add((r, p))
        with set_torch_threads(self.t.threads):
            self.log.append((k, r, p, self.timer(fn, self.number[p], self.t.threads)))
        self.count += 1

    def reference(self, k: int = 0) -> None:
        for p in self.passes:
            self._time(k, 0, p)
        self.since_ref = 0

    def measure(self, k: int, r: int) -> None:
        """Time rank ``r`` (every pass) in repeat ``k``; a reference first when one is due."""
        if not self.log or self.since_ref >= REFERENCE_EVERY:
            self.reference(k)
        for p in self.passes:
            self._time(k, r, p)
        self.since_ref += 1

    def ratios(self, p: str | None = None) -> list[tuple[int, int, float, float]]:
        """``(repeat, rank, seconds, seconds / reference)`` of every measurement of pass ``p``, the
        reference interpolated linearly (in measurement order) between the ticks around it."""
        p = p or self.passes[0]
        s = [(i, k, r, t) for i, (k, r, pp, t) in enumerate(self.log) if pp == p]
        ref_i = np.array([i for i, _, r, _ in s if r == 0], dtype=float)
        ref_t = np.array([t for _, _, r, t in s if r == 0], dtype=float)
        return [(k, r, t, t / float(np.interp(i, ref_i, ref_t))) for i, k, r, t in s]

    def ratio(self, r: int, p: str | None = None) -> float:
        """Median over this bench's measurements of ``t(r) / reference``."""
        return float(np.median([q for _, rr, _, q in self.ratios(p) if rr == r]))

    def pairs(self, pairs: Sequence[tuple[int, int]], rounds: int,
              settled: Callable[[list[float]], bool] | None = None) -> dict[tuple[int, int], list[float]]:
        """:func:`paired_rounds` of rank pairs (rank 0: the original layer), first pass."""
        p = self.passes[0]
        run = {r: self.runner(r, p) for pr in pairs for r in pr}
        for r, fn in run.items():
            if (r, p) not in self.seen:
                fn()
                self.seen.add((r, p))
        with set_torch_threads(self.t.threads):
            q = paired_rounds(run, pairs, rounds, self.timer, self.number[p], self.t.threads, settled)
        self.count += sum(len(v) for v in q.values())
        return q

    def rows(self, method_of: Callable[[int], str] | None = None) -> list[dict]:
        """The measurements as cache/sweep rows, one per (rank, pass): raw seconds (median over
        repeats, spread) and reference-normalised ``norm_s`` (median ratio x median reference),
        per-repeat values in ``times_s`` / ``ratios`` (``;``-separated)."""
        out = []
        for p in self.passes:
            vals = self.ratios(p)
            ref_med = float(np.median([t for _, r, t, _ in vals if r == 0]))
            per: dict[int, list[tuple[int, float, float]]] = {}
            for k, r, t, q in vals:
                per.setdefault(r, []).append((k, t, q))
            for r, v in per.items():
                if r == 0:  # one value per repeat: the median of that repeat's reference ticks
                    by_k: dict[int, list[float]] = {}
                    for k, t, _ in v:
                        by_k.setdefault(k, []).append(t)
                    v = [(k, float(np.median(x)), float(np.median(x)) / ref_med) for k, x in sorted(by_k.items())]
                v = sorted(v)
                t = np.array([x[1] for x in v])
                q = np.array([x[2] for x in v])
                out.append({
                    "rank": int(r), "r2": self.ranks_of(r)[1] if r and self.method == "tucker2" else 0,
                    "method": self.method if r else "keep", "pass": p, "median_s": float(np.median(t)),
                    "iqr_s": float(np.subtract(*np.percentile(t, [75, 25]))), "min_s": float(t.min()),
                    "max_s": float(t.max()), "n": int(len(t)), "number": int(self.number[p]),
                    "norm_s": float(np.median(q)) * ref_med,
                    "norm_iqr_s": float(np.subtract(*np.percentile(q, [75, 25]))) * ref_med, "ref_s": ref_med,
                    "times_s": ";".join(f"{x:.6g}" for x in t), "ratios": ";".join(f"{x:.6g}" for x in q),
                })
        return out


def visit_order(ranks: Sequence[int], kind: str, rng: random.Random) -> list[int]:
    """``ranks`` in the order ``kind`` (one of :data:`ORDERS`)."""
    if kind == "desc":
        return sorted(ranks, reverse=True)
    if kind == "asc":
        return sorted(ranks)
    if kind == "shuffle":
        out = list(ranks)
        rng.shuffle(out)
        return out
    raise ValueError(f"unknown sweep order {kind!r}; valid: {list(ORDERS)}")

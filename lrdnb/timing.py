"""Timing on the device: layer runners, the one round-robin helper, and rank sweeps.

Step time depends only on shapes, so nothing here touches real weights: sweeps build modules of
the right shapes with fresh weights (:func:`lrdnb.layers.build_factorized`) and time them. All
measurements go through ``torch.utils.benchmark.Timer`` (warm-up, accelerator sync, thread count).

Measuring on a noisy machine (see MEASURING.md): slow episodes make everything 3-7x slower for
minutes, so

* :func:`interleaved` times any set of zero-argument callables round-robin with a rotating order
  and :func:`paired_ratios` reports per-round ratios (median, min-max) - the one helper for
  side-by-side speed claims;
* :func:`sweep` visits the ranks several times in different orders (descending, ascending,
  shuffled) so neighbouring ranks are measured close in time, and times the original layer as a
  fixed reference every few ranks; it records raw and reference-normalised times.

Threads: on an oversubscribed CPU (more busy threads than cores), multi-threaded OpenMP kernels
spin-wait on each other and single calls vary 10x (measured here: a Tucker2 layer's train call
took 40-600 ms with 2 threads under load, 23-50 ms with 1). Sweeps take ``threads``; use 1 on
a shared machine, and compare only timings taken with the same thread count (it is recorded and
part of the cache key).

Sweep results are the input of Algorithm 1 (Hajimolahoseini et al. 2023) and of joint rank
selection (:mod:`lrdnb.rankopt`); they are cached on disk by :mod:`lrdnb.cache`.
"""
from __future__ import annotations

import random
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.utils.benchmark as benchmark
from torch.utils.benchmark.utils.common import set_torch_threads
from torch import nn

from .layers import FACTOR_ROLES, build_factorized
from .plan import LayerSpec
from .provenance import device_name as _device_name, resolve_device

__all__ = [
    "PASSES",
    "ORDERS",
    "make_runner",
    "time_callable",
    "interleaved",
    "paired_ratios",
    "sweep",
    "per_repeat",
    "verify_steps",
]

#: ``forward`` (no grad), ``train`` (forward + backward), ``step`` (train + SGD momentum update).
PASSES = ("forward", "train", "step")
#: Orders in which a sweep visits the ranks, cycled over its repeats.
ORDERS = ("desc", "asc", "shuffle")
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
    x = torch.randn(tuple(input_shape), generator=gen, dtype=dtype).to(dev)
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
            grad_out.append(torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device))
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
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn},
                            num_threads=threads or torch.get_num_threads())
    if mode == "fixed":
        number = max(1, int(number or 1))
        if hasattr(timer, "_timeit"):  # warm-up of our choosing, then one synchronized block
            with set_torch_threads(threads or torch.get_num_threads()):
                for _ in range(warmup):
                    fn()
                m = benchmark.Measurement(number, [max(timer._timeit(number), 1e-9)], timer._task_spec)
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


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    rounds: int = 5,
    device: str | torch.device = "auto",
    min_run_time: float = 0.2,
    threads: int | None = None,
    progress: bool = True,
    mode: str = "blocked",
    number: int | None = None,
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
                              number=number, warmup=1 if k == 0 else 0)
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


def _spec_at_batch(spec: LayerSpec, batch: int | None) -> LayerSpec:
    if spec.input_shape is None:
        raise ValueError(f"layer {spec.name!r} has no input shape; make the plan with an example batch")
    if batch is None:
        return spec
    d = spec.to_dict()
    d["input_shape"] = [int(batch)] + list(spec.input_shape[1:])
    if spec.output_shape:
        d["output_shape"] = [int(batch)] + list(spec.output_shape[1:])
    return LayerSpec.from_dict(d)


def _order(ranks: list[int], kind: str, rng: random.Random) -> list[int]:
    if kind == "desc":
        return sorted(ranks, reverse=True)
    if kind == "asc":
        return sorted(ranks)
    if kind == "shuffle":
        out = list(ranks)
        rng.shuffle(out)
        return out
    raise ValueError(f"unknown sweep order {kind!r}; valid: {list(ORDERS)}")


def _module(spec: LayerSpec, method: str, rank: int, beta: float, frozen: Sequence[str]) -> nn.Module:
    if method == "keep":
        return build_factorized(spec, method="keep")
    ranks = [rank, max(1, int(beta * rank))] if method == "tucker2" else [rank]
    mod = build_factorized(spec, ranks=ranks, method=method)
    for role in frozen:
        if role not in FACTOR_ROLES[method]:
            raise ValueError(f"unknown factor role {role!r} for {method}; valid: {list(FACTOR_ROLES[method])}")
        getattr(mod, role).requires_grad_(False)
    return mod


def sweep(
    spec: LayerSpec,
    ranks: Sequence[int] | None = None,
    passes: Sequence[str] = ("forward", "train"),
    device: str | torch.device = "auto",
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    batch: int | None = None,
    method: str | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    repeats: int = 3,
    orders: Sequence[str] = ORDERS,
    reference_every: int = 4,
    min_run_time: float = 0.01,
    frozen: Sequence[str] = (),
    cache: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Time a layer at every rank of a range, plus the original layer (Algorithm 1's ``T``).

    Builds modules with :func:`lrdnb.layers.build_factorized` and fresh weights (never
    decomposes). Each of ``repeats`` passes visits all ranks in the next order of ``orders``
    (descending, ascending, shuffled, ...), measuring every pass type of a rank back to back;
    the original layer is timed as a reference at the start of each pass and every
    ``reference_every`` ranks, and each rank's time is also normalised by the reference measured
    nearest to it (linear interpolation in measurement order). A measurement is one
    synchronized ``Timer`` block of ``number`` calls after one warm-up call, ``number`` chosen once per pass type
    so a block lasts about ``min_run_time``.

    Args:
        spec: the layer (from a plan; its input shape and method are used).
        ranks: ranks to time (``r1`` for Tucker2, with ``r2 = floor(beta r1)``); default: the
            eq.-5 rank at ``alpha`` down to the eq.-6 rank (alpha + 1), see
            :func:`lrdnb.rankopt.rank_range`.
        passes: any of :data:`PASSES`.
        threads: intra-op threads during the sweep (restored afterwards); default: current.
        batch: override the batch size of ``spec.input_shape``.
        method: ``"tucker2"`` or ``"svd"``; default ``spec.method``.
        alpha: compression ratio for the default range (default: the spec's own ratio).
        beta: ``r2 / r1`` for Tucker2; default: the spec's ranks' ratio (1 if none).
        repeats: passes over the ranks (>= 3 lets a median reject one slow episode).
        orders: visit orders cycled over the repeats, from :data:`ORDERS`.
        reference_every: time the original layer every this many ranks (0: once per pass).
        frozen: factor roles with ``requires_grad=False`` (``train``/``step`` passes).
        cache: a :class:`lrdnb.cache.TimingCache`, a folder path, ``"default"`` (``data/cache``)
            or ``None`` (no cache). Cached ranks with at least ``repeats`` repeats are not re-timed.

    Returns:
        Tidy DataFrame, one row per (method, rank, pass): ``rank`` (``r1``; 0 for the original
        layer, whose ``method`` is ``"keep"``), ``r2``, ``method``, ``pass``, ``median_s``
        (median over repeats of the raw time per call), ``iqr_s``, ``min_s``, ``max_s``, ``n``
        (repeats), ``number`` (calls per measurement), ``norm_s`` (median of time / reference,
        times the median reference: raw time with slow episodes divided out), ``norm_iqr_s``,
        ``ref_s``, ``times_s`` / ``ratios`` (per-repeat values, ``;``-separated, repeat order),
        ``cached``, and the record: ``device``, ``device_name``, ``torch``, ``threads``,
        ``dtype``, ``channels_last``, ``frozen``, ``batch``, ``input_shape``, ``weight_shape``,
        ``signature``.
    """
    from .cache import as_cache, timing_key

    for p in passes:
        _check_pass(p)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    spec = _spec_at_batch(spec, batch)
    method = method or spec.method
    if method not in ("svd", "tucker2"):
        raise ValueError(f"sweep needs method 'svd' or 'tucker2' (layer {spec.name!r} has {method!r})")
    if beta is None:
        beta = spec.ranks[1] / spec.ranks[0] if method == "tucker2" and len(spec.ranks) == 2 else 1.0
    if ranks is None:
        from .rankopt import rank_range

        ranks = rank_range(spec, alpha=alpha, beta=beta, method=method)
    ranks = sorted({int(r) for r in ranks}, reverse=True)
    if not ranks or ranks[-1] < 1:
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    dev = resolve_device(device)
    threads = int(threads or torch.get_num_threads())
    dname = _device_name(dev)
    frozen = tuple(frozen)
    store = as_cache(cache)
    keys = {p: timing_key(dname, dtype, p, spec.signature, channels_last, threads, frozen) for p in passes}

    # what the cache already holds (rank 0 = original layer)
    have: dict[tuple[str, str, int], dict] = {}
    if store is not None:
        for p in passes:
            for row in store.lookup(keys[p]):
                if row["n"] >= repeats and (row["method"] == method or row["method"] == "keep"):
                    if row["method"] == "keep" or abs(row["r2"] - _r2(method, row["rank"], beta)) == 0:
                        have[(p, row["method"], int(row["rank"]))] = row
    todo = [r for r in ranks if any((p, method, r) not in have for p in passes)]
    need_ref = any((p, "keep", 0) not in have for p in passes) or bool(todo)

    measured: list[dict] = []
    if todo or need_ref:
        measured = _measure(spec, method, todo, passes, dev, threads, dtype, channels_last, beta, repeats,
                            list(orders), reference_every, min_run_time, frozen, seed, progress)
        if store is not None:
            store.add(measured, keys)

    rows = [dict(r, cached=False) for r in measured]
    done = {(r["pass"], r["method"], r["rank"]) for r in rows}
    for (p, m, r), row in have.items():
        if (p, m, r) not in done and (m == "keep" or r in ranks):
            rows.append(dict(row, cached=True))
    df = pd.DataFrame(rows)
    meta = {"device": str(dev), "device_name": dname, "torch": torch.__version__, "threads": threads,
            "dtype": str(dtype).replace("torch.", ""), "channels_last": bool(channels_last),
            "frozen": ",".join(frozen), "batch": spec.input_shape[0],
            "input_shape": "x".join(map(str, spec.input_shape)),
            "weight_shape": "x".join(map(str, spec.weight_shape)), "signature": spec.signature}
    for k, v in meta.items():
        df[k] = v
    df = df.sort_values(["pass", "method", "rank"], ascending=[True, True, False]).reset_index(drop=True)
    return df


def _r2(method: str, rank: int, beta: float) -> int:
    return max(1, int(beta * rank)) if method == "tucker2" else 0


def _measure(spec, method, ranks, passes, dev, threads, dtype, channels_last, beta, repeats, orders,
             reference_every, min_run_time, frozen, seed, progress) -> list[dict]:
    """The timing loop of :func:`sweep`; returns one aggregated row per (method, rank, pass)."""
    from tqdm.auto import tqdm

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    try:
        ref_mod = _module(spec, "keep", 0, beta, ())
        runners: dict[tuple[int, str], Callable] = {
            (0, p): make_runner(ref_mod, spec.input_shape, p, dev, dtype, channels_last) for p in passes
        }
        mods = {0: ref_mod}
        for r in ranks:
            mods[r] = mod = _module(spec, method, r, beta, frozen)
            for p in passes:
                runners[(r, p)] = make_runner(mod, spec.input_shape, p, dev, dtype, channels_last)
        # calls per measurement, once per pass type, from the largest (slowest) variant
        number = {}
        for p in passes:
            probe = [runners[(0, p)]] + ([runners[(ranks[0], p)]] if ranks else [])
            est = max(time_callable(f, dev, mode="fixed", number=1, threads=threads)["median_s"] for f in probe)
            number[p] = int(min(1000, max(1, round(min_run_time / max(est, 1e-7)))))
        seq: list[tuple[int, int, str, float]] = []  # (repeat, rank, pass, seconds) in measurement order
        bar = tqdm(total=repeats * (len(ranks) + 1) * len(passes), desc=f"sweep {spec.name or spec.signature[:30]}",
                   unit="timing", disable=not progress, leave=False)

        seen: set[tuple[int, str]] = set()

        def measure(k: int, r: int) -> None:
            for p in passes:
                # warm-up only on a variant's first visit (kernel creation); later visits are warm
                t = time_callable(runners[(r, p)], dev, mode="fixed", number=number[p], threads=threads,
                                  warmup=0 if (r, p) in seen else 1)
                seen.add((r, p))
                seq.append((k, r, p, t["median_s"]))
                bar.update()
            for prm in mods[r].parameters():  # free gradients between visits (memory of big sweeps)
                prm.grad = None

        for k in range(repeats):
            measure(k, 0)
            for i, r in enumerate(_order(list(ranks), orders[k % len(orders)], rng)):
                measure(k, r)
                if reference_every and (i + 1) % reference_every == 0 and i + 1 < len(ranks):
                    for p in passes:  # reference ticks: not counted in the bar's total
                        t = time_callable(runners[(0, p)], dev, mode="fixed", number=number[p], threads=threads,
                                          warmup=0)
                        seq.append((k, 0, p, t["median_s"]))
            measure(k, 0)  # close the pass with a reference, so every rank is bracketed
        bar.close()
    finally:
        torch.set_num_threads(old_threads)
    return _aggregate(seq, method, beta, repeats, passes, number)


def _aggregate(seq, method, beta, repeats, passes, number) -> list[dict]:
    rows = []
    for p in passes:
        s = [(i, k, r, t) for i, (k, r, pp, t) in enumerate(seq) if pp == p]
        ref_idx = np.array([i for i, _, r, _ in s if r == 0], dtype=float)
        ref_t = np.array([t for _, _, r, t in s if r == 0], dtype=float)
        ref_med = float(np.median(ref_t))
        per: dict[int, list[tuple[int, float, float]]] = {}
        for i, k, r, t in s:
            ref = float(np.interp(i, ref_idx, ref_t))
            per.setdefault(r, []).append((k, t, t / ref))
        for r, vals in per.items():
            if r == 0:  # one value per repeat: the median of that repeat's reference ticks
                by_k: dict[int, list[float]] = {}
                for k, t, _ in vals:
                    by_k.setdefault(k, []).append(t)
                vals = [(k, float(np.median(v)), float(np.median(v)) / ref_med) for k, v in sorted(by_k.items())]
            vals = sorted(vals)
            t = np.array([v[1] for v in vals])
            q = np.array([v[2] for v in vals])
            q1, q3 = np.percentile(t, [25, 75])
            n1, n3 = np.percentile(q, [25, 75])
            rows.append({
                "rank": int(r), "r2": _r2(method, r, beta) if r else 0, "method": method if r else "keep",
                "pass": p, "median_s": float(np.median(t)), "iqr_s": float(q3 - q1), "min_s": float(t.min()),
                "max_s": float(t.max()), "n": int(len(t)), "number": int(number[p]),
                "norm_s": float(np.median(q)) * ref_med, "norm_iqr_s": float(n3 - n1) * ref_med,
                "ref_s": ref_med, "times_s": ";".join(f"{x:.6g}" for x in t),
                "ratios": ";".join(f"{x:.6g}" for x in q),
            })
    return rows


def per_repeat(df: pd.DataFrame, column: str = "ratios") -> np.ndarray:
    """Per-repeat values of a sweep frame's ``times_s`` or ``ratios`` column as ``[repeats, rows]``
    (rows in frame order); rows with fewer repeats are padded with their median."""
    vals = [[float(x) for x in str(s).split(";") if x] for s in df[column]]
    n = max(len(v) for v in vals)
    out = np.array([v + [float(np.median(v))] * (n - len(v)) for v in vals])
    return out.T


def verify_steps(
    spec: LayerSpec,
    candidates: Sequence[int],
    pass_: str = "train",
    rounds: int = 5,
    device: str | torch.device = "auto",
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    method: str | None = None,
    beta: float | None = None,
    frozen: Sequence[str] = (),
    min_run_time: float = 0.01,
    cache: Any = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Check candidate steps ``c + 1 -> c`` of a sweep curve with paired, interleaved timings.

    A sweep measures each rank a few times; a step seen there may be one slow measurement. Here
    every candidate ``c`` and its upper neighbour ``c + 1`` are timed round-robin with
    :func:`interleaved` (all pairs in one rotation, ``rounds`` rounds) and the per-round ratio
    ``t(c) / t(c + 1)`` is reported: a real step has every round's ratio below 1.

    Returns:
        One row per candidate: ``candidate``, ``above`` (= c + 1), ``ratio`` (median over rounds),
        ``ratio_min``, ``ratio_max``, ``drop_rel`` (``1 - ratio``), ``rounds``, ``faster`` (fraction
        of rounds with ``ratio < 1``), ``cached``.
        Cached (like sweeps) under the sweep key with method ``"<method>-step"``.
    """
    from .cache import as_cache, timing_key

    _check_pass(pass_)
    method = method or spec.method
    if beta is None:
        beta = spec.ranks[1] / spec.ranks[0] if method == "tucker2" and len(spec.ranks) == 2 else 1.0
    dev = resolve_device(device)
    threads = int(threads or torch.get_num_threads())
    frozen = tuple(frozen)
    store = as_cache(cache)
    key = timing_key(_device_name(dev), dtype, pass_, spec.signature, channels_last, threads, frozen)
    tag = f"{method}-step"
    have = {}
    if store is not None:
        have = {int(r["rank"]): r for r in store.lookup(key) if r["method"] == tag and r["n"] >= rounds}
    cands = sorted({int(c) for c in candidates}, reverse=True)
    todo = [c for c in cands if c not in have]
    rows = []
    if todo:
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            mods = {r: _module(spec, method, r, beta, frozen) for r in sorted({*todo, *(c + 1 for c in todo)})}
            run = {r: make_runner(m, spec.input_shape, pass_, dev, dtype, channels_last) for r, m in mods.items()}
            est = time_callable(run[max(run)], dev, mode="fixed", number=1, threads=threads)["median_s"]
            number = int(min(1000, max(1, round(min_run_time / max(est, 1e-7)))))
            df = interleaved({str(r): f for r, f in run.items()}, rounds=rounds, device=dev, threads=threads,
                             progress=progress, mode="fixed", number=number)
        finally:
            torch.set_num_threads(old_threads)
        wide = df.pivot_table(index="round", columns="variant", values="median_s")
        for c in todo:
            q = (wide[str(c)] / wide[str(c + 1)]).to_numpy()
            rows.append({"method": tag, "rank": c, "r2": c + 1, "pass": pass_, "median_s": float(np.median(q)),
                         "min_s": float(q.min()), "max_s": float(q.max()), "n": int(len(q)), "number": number,
                         "times_s": ";".join(f"{x:.6g}" for x in q)})
        if store is not None:
            store.add(rows, {pass_: key})
    out = [dict(r, cached=False) for r in rows] + [dict(have[c], cached=True) for c in cands if c in have]
    res = pd.DataFrame([{"candidate": int(r["rank"]), "above": int(r["rank"]) + 1, "ratio": float(r["median_s"]),
                         "ratio_min": float(r["min_s"]), "ratio_max": float(r["max_s"]),
                         "drop_rel": 1.0 - float(r["median_s"]), "rounds": int(r["n"]),
                         "faster": _frac_below_one(r.get("times_s"), float(r["max_s"])), "cached": r["cached"]}
                        for r in out], columns=["candidate", "above", "ratio", "ratio_min", "ratio_max", "drop_rel",
                                                "rounds", "faster", "cached"])
    return res.sort_values("candidate", ascending=False).reset_index(drop=True)


def _frac_below_one(per_round: Any, ratio_max: float) -> float:
    vals = [float(x) for x in str(per_round or "").split(";") if x and x != "nan"]
    if not vals:
        return float(ratio_max < 1.0)
    return float(np.mean(np.asarray(vals) < 1.0))

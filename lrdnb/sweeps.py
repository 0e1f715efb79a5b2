"""Rank sweeps: a layer's step time over a range of ranks, measured on the device.

Step time depends only on shapes, so nothing here touches real weights: modules of the right
shapes get arbitrary values (:func:`lrdnb.layers.build_factorized` on the meta device, filled
from one random pool) and are timed with :func:`lrdnb.timing.time_callable`.

* :func:`sweep` - every rank of a range (what Algorithm 1 of Hajimolahoseini et al. 2023 and
  Fig. 2 do), several passes in different orders, the original layer as a reference;
* :mod:`lrdnb.steps` finds and verifies the curve's steps with far fewer timings.

Measuring on a noisy machine (MEASURING.md): slow episodes make everything 3-7x slower for
minutes, so every measurement is divided by the original layer's time measured nearest to it
(the reference is re-timed every few measurements), and a step is only believed after paired
re-timing. Results are cached on disk by :mod:`lrdnb.cache`.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .layers import FACTOR_ROLES, build_factorized
from .plan import LayerSpec
from .provenance import device_name as _device_name, resolve_device
from .timing import _check_pass, make_runner, time_callable

__all__ = ["ORDERS", "sweep", "per_repeat"]

#: Orders in which a sweep visits the ranks, cycled over its repeats.
ORDERS = ("desc", "asc", "shuffle")


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


#: The random values every timed module's parameters are copied from (grown on demand; shared by
#: all sweeps of a process: drawing 2.4M normal values for a [512, 512, 3, 3] layer costs more
#: than building the module).
_POOL: list[torch.Tensor] = [torch.empty(0)]


def _module(spec: LayerSpec | dict, method: str, rank: int, beta: float, frozen: Sequence[str],
            pool: list[torch.Tensor] | None = None) -> nn.Module:
    """A module of the right shapes. With ``pool`` (a one-element list holding a random vector,
    e.g. :data:`_POOL`) it is built on the meta device and its parameters are copied from the
    pool: the values do not matter for speed, and a copy is ~10x cheaper than Kaiming
    initialisation."""
    ranks = [] if method == "keep" else ([rank, max(1, int(beta * rank))] if method == "tucker2" else [rank])
    for role in frozen if method != "keep" else ():
        if role not in FACTOR_ROLES[method]:
            raise ValueError(f"unknown factor role {role!r}; valid for {method}: {list(FACTOR_ROLES[method])}")
    if pool is None:
        mod = build_factorized(spec, ranks=ranks, method=method)
    else:
        with torch.device("meta"):
            mod = build_factorized(spec, ranks=ranks, method=method)
        mod = mod.to_empty(device="cpu")
        with torch.no_grad():
            for p in mod.parameters():
                if p.numel() > pool[0].numel():
                    pool[0] = torch.randn(p.numel(), generator=torch.Generator().manual_seed(0)) * 0.05
                p.copy_(pool[0][: p.numel()].view_as(p))
    for role in frozen if method != "keep" else ():
        getattr(mod, role).requires_grad_(False)
    return mod


def _calls_for(seconds_per_call: float, min_run_time: float) -> int:
    """Calls per measurement so that one measurement lasts about ``min_run_time`` (1..1000)."""
    return int(min(1000, max(1, round(min_run_time / max(seconds_per_call, 1e-7)))))


def _r2(method: str, rank: int, beta: float) -> int:
    return max(1, int(beta * rank)) if method == "tucker2" else 0


class _Session:
    """One measuring session of a layer on the device.

    Modules and runners are built on first use (all runners share one input tensor); the
    original layer is timed as a reference at the start and every ``reference_every``
    measurements; ``seq`` is the measurement log that :func:`_aggregate` turns into rows.
    """

    def __init__(self, spec, method, passes, dev, threads, dtype, channels_last, beta, frozen, min_run_time,
                 reference_every, seed, size_rank=None, bar=None) -> None:
        self.spec, self.method, self.passes, self.dev = spec, method, tuple(passes), dev
        self.threads, self.dtype, self.channels_last, self.beta = threads, dtype, channels_last, beta
        self.frozen, self.reference_every, self.bar = tuple(frozen), reference_every, bar
        self.old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.x = torch.randn(tuple(spec.input_shape), dtype=dtype)
        self.g = None  # one output gradient for every runner, in the layout the outputs have
        if spec.output_shape:
            self.g = torch.randn(tuple(spec.output_shape), dtype=dtype)
            if channels_last and self.g.dim() == 4:
                self.g = self.g.contiguous(memory_format=torch.channels_last)
        self.spec_d = spec.to_dict()  # what build_factorized reads, converted once per session
        self.runners: dict[tuple[int, str], Callable] = {}
        self.mods: dict[int, nn.Module] = {}
        self.seen: set[tuple[int, str]] = set()
        self.seq: list[tuple[int, int, str, float]] = []  # (repeat, rank, pass, seconds), measurement order
        self.since_ref = 0
        # calls per measurement, once per pass type, from the largest (slowest) variant: its first,
        # cold call (kernel creation included) is both the warm-up and the estimate (an overestimate,
        # so a measurement is at most ~min_run_time long; a warm-up + a timed call cost 2 calls)
        self.number = {}
        for p in self.passes:
            probe = [self._runner(0, p)] + ([self._runner(size_rank, p)] if size_rank else [])
            est = max(time_callable(f, dev, mode="fixed", number=1, threads=threads, warmup=0)["median_s"]
                      for f in probe)
            self.number[p] = _calls_for(est, min_run_time)
            self.seen.update({(0, p), (size_rank, p)})  # the probes were their warm-up

    def _runner(self, r: int, p: str) -> Callable:
        if (r, p) not in self.runners:
            if r not in self.mods:
                self.mods[r] = _module(self.spec_d, "keep" if r == 0 else self.method, r, self.beta,
                                       () if r == 0 else self.frozen, _POOL)
            self.runners[(r, p)] = make_runner(self.mods[r], self.spec.input_shape, p, self.dev, self.dtype,
                                               self.channels_last, input_requires_grad=self.spec.input_grad,
                                               inputs=self.x, grad_output=self.g)
        return self.runners[(r, p)]

    def _time(self, k: int, r: int, p: str) -> None:
        # warm-up only on a variant's first visit (kernel creation); later visits are warm
        t = time_callable(self._runner(r, p), self.dev, mode="fixed", number=self.number[p], threads=self.threads,
                          warmup=0 if (r, p) in self.seen else 1)
        self.seen.add((r, p))
        self.seq.append((k, r, p, t["median_s"]))

    def reference(self, k: int) -> None:
        for p in self.passes:
            self._time(k, 0, p)
        self.since_ref = 0

    def measure(self, k: int, r: int) -> None:
        """Time rank ``r`` (every pass, back to back) in repeat ``k``; a reference tick first when due."""
        if not self.seq or (self.reference_every and self.since_ref >= self.reference_every):
            self.reference(k)
        for p in self.passes:
            self._time(k, r, p)
            if self.bar is not None:
                self.bar.update()
        self.since_ref += 1
        for prm in self.mods[r].parameters() if r in self.mods else ():  # free gradients (memory of big sweeps)
            prm.grad = None

    def close(self, k: int) -> list[dict]:
        """Close with a reference (every rank bracketed) and return the aggregated rows."""
        self.reference(k)
        torch.set_num_threads(self.old_threads)
        return _aggregate(self.seq, self.method, self.beta, self.passes, self.number)

    def ratio(self, r: int, p: str) -> float:
        """Median over this session's measurements of ``t(r) / reference`` so far."""
        return float(np.median([x[4] for x in _ratios(self.seq, p) if x[2] == r]))


def _ratios(seq, p) -> list[tuple[int, int, int, float, float]]:
    """``(index, repeat, rank, seconds, seconds / reference)``: the reference interpolated linearly
    in measurement order between the reference ticks around each measurement."""
    s = [(i, k, r, t) for i, (k, r, pp, t) in enumerate(seq) if pp == p]
    ref_idx = np.array([i for i, _, r, _ in s if r == 0], dtype=float)
    ref_t = np.array([t for _, _, r, t in s if r == 0], dtype=float)
    return [(i, k, r, t, t / float(np.interp(i, ref_idx, ref_t))) for i, k, r, t in s]


def _measure(spec, method, ranks, passes, dev, threads, dtype, channels_last, beta, repeats, orders,
             reference_every, min_run_time, frozen, seed, progress) -> list[dict]:
    """The timing loop of :func:`sweep`; returns one aggregated row per (method, rank, pass)."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    bar = tqdm(total=repeats * len(ranks) * len(passes), desc=f"sweep {spec.name or spec.signature[:30]}",
               unit="timing", disable=not progress, leave=False)
    s = _Session(spec, method, passes, dev, threads, dtype, channels_last, beta, frozen, min_run_time,
                 reference_every, seed, size_rank=ranks[0] if ranks else None, bar=bar)
    try:
        for k in range(repeats):
            if k:
                s.reference(k)  # every pass starts with a reference
            for r in _order(list(ranks), orders[k % len(orders)], rng):
                s.measure(k, r)
        return s.close(repeats - 1)
    finally:
        torch.set_num_threads(s.old_threads)
        bar.close()


def _aggregate(seq, method, beta, passes, number) -> list[dict]:
    rows = []
    for p in passes:
        vals_all = _ratios(seq, p)
        ref_med = float(np.median([t for _, _, r, t, _ in vals_all if r == 0]))
        per: dict[int, list[tuple[int, float, float]]] = {}
        for _, k, r, t, q in vals_all:
            per.setdefault(r, []).append((k, t, q))
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


class _Setup:
    """What :func:`sweep` and :func:`staircase_sweep` share: argument checks, the rank range,
    the cache keys and what the cache already holds, and the output frame."""

    def __init__(self, spec, ranks, passes, device, threads, dtype, channels_last, batch, method, alpha, beta,
                 frozen, cache) -> None:
        from .cache import as_cache, timing_key

        for p in passes:
            _check_pass(p)
        self.spec = spec = _spec_at_batch(spec, batch)
        self.method = method = method or spec.method
        if method not in ("svd", "tucker2"):
            raise ValueError(f"sweep needs method 'svd' or 'tucker2' (layer {spec.name!r} has {method!r})")
        if beta is None:
            beta = spec.ranks[1] / spec.ranks[0] if method == "tucker2" and len(spec.ranks) == 2 else 1.0
        self.beta = beta
        if ranks is None:
            from .rankopt import rank_range

            ranks = rank_range(spec, alpha=alpha, beta=beta, method=method)
        self.ranks = sorted({int(r) for r in ranks}, reverse=True)
        if not self.ranks or self.ranks[-1] < 1:
            raise ValueError(f"ranks must be positive integers, got {list(ranks)}")
        self.passes, self.dtype, self.channels_last = tuple(passes), dtype, bool(channels_last)
        self.dev = resolve_device(device)
        self.threads = int(threads or torch.get_num_threads())
        self.dname = _device_name(self.dev)
        self.frozen = tuple(frozen)
        self.store = as_cache(cache)
        self.keys = {p: timing_key(self.dname, dtype, p, spec.timed_signature(p), channels_last, self.threads,
                                self.frozen)
                     for p in passes}
        self.cached: dict[tuple[str, str, int], dict] = {}  # (pass, method, rank) -> row; rank 0: original
        if self.store is not None:
            for p in passes:
                for row in self.store.lookup(self.keys[p]):
                    if row["method"] == "keep" or (row["method"] == method
                                                   and row["r2"] == _r2(method, row["rank"], beta)):
                        self.cached[(p, row["method"], int(row["rank"]))] = row

    def have(self, rank: int, repeats: int) -> bool:
        m = "keep" if rank == 0 else self.method
        return all((p, m, rank) in self.cached and self.cached[(p, m, rank)]["n"] >= repeats for p in self.passes)

    def session(self, min_run_time, reference_every, seed, size_rank, bar=None) -> _Session:
        return _Session(self.spec, self.method, self.passes, self.dev, self.threads, self.dtype,
                        self.channels_last, self.beta, self.frozen, min_run_time, reference_every, seed,
                        size_rank=size_rank, bar=bar)

    def frame(self, measured: list[dict], ranks: Sequence[int]) -> pd.DataFrame:
        if measured and self.store is not None:
            self.store.add(measured, self.keys)
        rows = [dict(r, cached=False) for r in measured]
        done = {(r["pass"], r["method"], r["rank"]) for r in rows}
        want = set(ranks)
        for (p, m, r), row in self.cached.items():
            if (p, m, r) not in done and (m == "keep" or r in want):
                rows.append(dict(row, cached=True))
        s = self.spec
        meta = {"device": str(self.dev), "device_name": self.dname, "torch": torch.__version__,
                "threads": self.threads, "dtype": str(self.dtype).replace("torch.", ""),
                "channels_last": self.channels_last, "frozen": ",".join(self.frozen), "batch": s.input_shape[0],
                "input_shape": "x".join(map(str, s.input_shape)),
                "weight_shape": "x".join(map(str, s.weight_shape)), "signature": s.signature}
        # sorted by (pass, method, rank descending) and the constant columns added before the
        # frame is built: one constructor instead of a sort and a dozen column insertions (a warm
        # rank optimization builds 24 of these)
        rows.sort(key=lambda r: (r["pass"], r["method"], -r["rank"]))
        return pd.DataFrame([{**r, **meta} for r in rows])


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

    Builds modules of the right shapes (never decomposes). Each of ``repeats`` passes visits all
    ranks in the next order of ``orders`` (descending, ascending, shuffled, ...), measuring every
    pass type of a rank back to back; the original layer is timed as a reference at the start
    of each pass and every ``reference_every`` ranks, and each rank's time is also normalised by
    the reference measured nearest to it (linear interpolation in measurement order). A
    measurement is one synchronized ``Timer`` block of ``number`` calls after one warm-up call,
    ``number`` chosen once per pass type so a block lasts about ``min_run_time``.

    Args:
        spec: the layer (from a plan; its input shape and method are used).
        ranks: ranks to time (``r1`` for Tucker2, with ``r2 = floor(beta r1)``); default: the
            eq.-5 rank at ``alpha`` down to the eq.-6 rank (alpha + 1), see
            :func:`lrdnb.rankopt.rank_range`.
        passes: any of :data:`lrdnb.timing.PASSES`.
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
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for o in orders:
        _order([], o, random.Random(0))  # validates
    st = _Setup(spec, ranks, passes, device, threads, dtype, channels_last, batch, method, alpha, beta, frozen,
                cache)
    todo = [r for r in st.ranks if not st.have(r, repeats)]
    measured: list[dict] = []
    if todo or not st.have(0, 1):
        measured = _measure(st.spec, st.method, todo, st.passes, st.dev, st.threads, dtype, channels_last, st.beta,
                            repeats, list(orders), reference_every, min_run_time, st.frozen, seed, progress)
    return st.frame(measured, st.ranks)


def per_repeat(df: pd.DataFrame | Mapping[str, Sequence[str]], column: str = "ratios") -> np.ndarray:
    """Per-repeat values of a sweep frame's ``times_s`` or ``ratios`` column as ``[repeats, rows]``
    (rows in frame order; ``df`` may also be a mapping to the column's values); rows with fewer
    repeats are padded with their median."""
    vals = [[float(x) for x in str(s).split(";") if x] for s in df[column]]
    n = max(len(v) for v in vals)
    out = np.array([v + [float(np.median(v))] * (n - len(v)) for v in vals])
    return out.T

"""The steps of a layer's step-time curve: found coarse to fine, and verified in pairs.

Algorithm 1 (Hajimolahoseini et al. 2023) needs the largest single-rank drop of a layer's step
time over rank. Timing every rank (:func:`lrdnb.sweeps.sweep`, what Fig. 2 shows) costs a
measurement per rank; but on a device the curve is a staircase - it drops where the rank crosses
a multiple of the kernels' tile (16 for this CPU's oneDNN fp32 kernels, 8 for tensor cores) and
is flat in between - so its steps can be found with a fraction of the timings:

* :func:`staircase_sweep` - a coarse grid, then each of the largest coarse drops bisected down to
  the single rank where the time steps;
* :func:`verify_steps` - paired, interleaved re-timing of candidate steps ``c + 1 -> c``, so a
  noise spike is never taken for a step (MEASURING.md: 3-7x slow episodes on this machine).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .plan import LayerSpec
from .provenance import device_name as _device_name, resolve_device
from .sweeps import ORDERS, _calls_for, _module, _order, _Session, _Setup
from .timing import _check_pass, interleaved, make_runner, time_callable

__all__ = ["coarse_grid", "staircase_sweep", "verify_steps"]


def coarse_grid(ranks: Sequence[int], grid: int) -> list[int]:
    """The coarse ranks of :func:`staircase_sweep`: both ends of the range and every multiple of
    ``grid`` inside it, descending.

    Example:
        >>> coarse_grid(range(244, 310), 16)
        [309, 304, 288, 272, 256, 244]
    """
    r = sorted({int(x) for x in ranks}, reverse=True)
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    return [x for i, x in enumerate(r) if i == 0 or i == len(r) - 1 or x % grid == 0]


def staircase_sweep(
    spec: LayerSpec,
    ranks: Sequence[int] | None = None,
    pass_: str = "train",
    grid: int = 16,
    refine: int = 2,
    substantial: float = 0.5,
    verify_rounds: int = 0,
    confirm: float | None = None,
    device: str | torch.device = "auto",
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    batch: int | None = None,
    method: str | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    repeats: int = 2,
    orders: Sequence[str] = ORDERS,
    reference_every: int = 4,
    min_run_time: float = 0.01,
    frozen: Sequence[str] = (),
    cache: Any = None,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """The steps of a layer's step-time curve, found coarse to fine (~5x fewer timings than a sweep).

    Algorithm 1 needs the largest single-rank drop ``t(c + 1) - t(c)`` of the curve. On a device
    the curve is a staircase - flat between ranks where the kernels' tiling changes (Fig. 2: flat
    from 270 to 258, 15% down from 257 to 256) - so the drop can be found without timing every
    rank:

    1. time the coarse grid :func:`coarse_grid` (both ends and every multiple of ``grid``),
       ``repeats`` passes in different orders, like :func:`lrdnb.sweeps.sweep`;
    2. take the largest drop between neighbouring coarse ranks ``lo < hi``, and the highest-rank
       drops of at least ``substantial`` times it, ``refine`` in all (a device with many
       near-equal steps - this CPU has one per multiple of 16 - lets noise decide which is
       largest; the highest of them loses least accuracy, and :func:`lrdnb.choose.algorithm1`'s
       ``tie_tol`` then prefers it);
    3. locate each drop's single-rank step: first time ``lo + 1`` (a tile-aligned grid puts the
       step right at ``lo``); if it sits on the high side, the step is ``lo + 1 -> lo``, else
       bisect ``(lo + 1, hi)``: a rank whose time is nearer ``t(hi)`` than ``t(lo)`` is above
       the step. Each probe is one measurement, normalised by the reference like every other.

    The result is the frame :func:`lrdnb.sweeps.sweep` returns for the ranks measured (coarse +
    probes; cached rows of other ranks in the range too), with ``attrs["steps"]``: the located
    candidates ``c`` (step ``c + 1 -> c``), largest coarse drop first - what :func:`verify_steps`
    re-times and :func:`lrdnb.choose.algorithm1` chooses among. Decisions depend only on measured values, and every measurement is cached, so a
    second call with the same cache re-times nothing and returns the same steps. The price: a
    step hidden inside a coarse interval that also rises elsewhere, or two steps in one
    interval, may be missed or merged; ``grid=1`` is the exhaustive sweep.

    Args:
        pass_: the pass whose curve is searched (one of :data:`lrdnb.timing.PASSES`).
        grid: coarse spacing; a multiple of the device's tile (8 or 16) is best.
        refine: how many coarse drops to locate.
        substantial: drops of at least this fraction of the largest compete by rank (step 2).
        verify_rounds: if > 0, the located steps are re-timed in pairs in the same session
            (:func:`verify_steps`, its table in ``attrs["verified"]``; runners already warm).
        confirm: verify the steps one at a time, largest coarse drop first, and stop at the
            first one confirmed (``faster >= confirm`` and median ratio < 1, as
            :func:`lrdnb.choose.algorithm1` counts it); ``None``: verify all located steps.
        repeats: passes over the coarse grid (each probe is timed once).
        Others: as :func:`lrdnb.sweeps.sweep`.

    Example:
        >>> from lrdnb.plan import LayerSpec
        >>> spec = LayerSpec("c", "conv2d", [64, 64, 3, 3], False, [2, 64, 4, 4], method="tucker2", ranks=[38, 38])
        >>> df = staircase_sweep(spec, pass_="forward", device="cpu", min_run_time=1e-4)
        >>> df.attrs["coarse"], sorted(set(df["method"]))
        ([38, 32, 30], ['keep', 'tucker2'])
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    st = _Setup(spec, ranks, (pass_,), device, threads, dtype, channels_last, batch, method, alpha, beta, frozen,
                cache)
    coarse = coarse_grid(st.ranks, grid)
    rng = random.Random(seed)
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"staircase {st.spec.name or st.spec.signature[:30]}", unit="timing", disable=not progress,
               leave=False)
    sess: list[_Session] = []

    def session() -> _Session:
        if not sess:
            sess.append(st.session(min_run_time, reference_every, seed, coarse[0], bar))
        return sess[0]

    def cached_ratio(r: int, repeats_: int) -> float | None:
        m = "keep" if r == 0 else st.method
        row = st.cached.get((pass_, m, r))
        if row is None or row["n"] < repeats_:
            return None
        q = [float(x) for x in str(row.get("ratios") or "").split(";") if x]
        return float(np.median(q)) if q else float(row["median_s"])

    # the search's outcome is cached too: a warm run re-uses it instead of re-deciding from values
    # that the closing reference re-normalised
    tag = f"{st.method}-stairs-g{grid}-k{refine}-s{substantial:g}-{st.ranks[0]}-{st.ranks[-1]}"
    found = None
    if st.store is not None:
        rows = [r for r in st.store.lookup(st.keys[pass_]) if r["method"] == tag and r["n"] >= repeats]
        if rows:
            found = [int(r["rank"]) for r in sorted(rows, key=lambda r: r["r2"]) if r["rank"] > 0]
    todo = [r for r in coarse if not st.have(r, repeats)]
    measured: list[dict] = []
    try:
        if found is not None and not todo and all(st.have(c, 1) and st.have(c + 1, 1) for c in found):
            steps = found
        else:
            steps = _search(session, cached_ratio, coarse, todo, repeats, orders, rng, refine, substantial, pass_)
            if st.store is not None:
                st.store.add([{"method": tag, "rank": c, "r2": i, "pass": pass_, "median_s": 0.0, "n": repeats}
                              for i, c in enumerate(steps or [0])], st.keys)
        verified = None
        if verify_rounds:  # one step at a time (largest coarse drop first) until one is confirmed
            tables = []
            for group in ([[c] for c in steps] if confirm is not None else [steps]) or [[]]:
                v = verify_steps(st.spec, group, pass_, rounds=verify_rounds, device=st.dev, threads=st.threads,
                                 dtype=dtype, channels_last=channels_last, method=st.method, beta=st.beta,
                                 frozen=st.frozen, min_run_time=min_run_time, cache=st.store, session=session)
                tables.append(v)
                if confirm is not None and ((v["faster"] >= confirm) & (v["ratio"] < 1)).any():
                    break
            verified = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        if sess:
            measured = sess[0].close(repeats)
    finally:
        if sess:
            torch.set_num_threads(sess[0].old_threads)
        bar.close()
    df = st.frame(measured, st.ranks)
    df.attrs["steps"] = steps
    df.attrs["verified"] = verified
    df.attrs["coarse"] = coarse
    return df


def _search(session, cached_ratio, coarse, todo, repeats, orders, rng, refine, substantial, pass_) -> list[int]:
    """Steps 1-3 of :func:`staircase_sweep`: time the coarse grid, bisect the largest drops."""
    for k in range(repeats if todo else 0):
        if k:
            session().reference(k)
        for r in _order(todo, orders[k % len(orders)], rng):
            session().measure(k, r)
    val = {r: (session().ratio(r, pass_) if r in todo else cached_ratio(r, repeats)) for r in coarse}

    def probe(r: int) -> float:
        if r not in val:
            c = cached_ratio(r, 1)
            if c is None:
                session().measure(repeats, r)
                c = session().ratio(r, pass_)
            val[r] = c
        return val[r]

    asc = sorted(coarse)
    drops = sorted(((val[hi] - val[lo], lo, hi) for lo, hi in zip(asc, asc[1:])), reverse=True)
    drops = [x for x in drops if x[0] > 0]
    # the largest drop, then the highest-rank drops of at least `substantial` x the largest: on a
    # device with many near-equal steps (this CPU: one per multiple of 16) noise decides which is
    # largest, and the highest of them loses the least accuracy (Algorithm 1's ties, tie_tol)
    pick = drops[:1] + sorted((x for x in drops[1:] if x[0] >= substantial * drops[0][0]), key=lambda x: -x[2])
    steps: list[int] = []
    for d, lo, hi in pick[:refine]:
        mid = (val[lo] + val[hi]) / 2
        a, b = lo, hi  # invariant: a on the low side of the step, b on the high side
        if b - a > 1:
            if probe(lo + 1) > mid:
                b = lo + 1
            else:
                a = lo + 1
            while b - a > 1:
                m = (a + b) // 2
                if probe(m) > mid:
                    b = m
                else:
                    a = m
        steps.append(a)
    return steps


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
    session: Callable[[], _Session] | None = None,
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
        ``session``: a function returning the open measuring session of :func:`staircase_sweep`, whose
        runners are then used (called only if something needs timing).
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
            pool = [torch.randn(1)]
            need = sorted({*todo, *(c + 1 for c in todo)})
            if session is not None:  # runners already built and warm
                sess = session()
                run = {r: sess._runner(r, pass_) for r in need}
                number = sess.number[pass_]
                warm = all((r, pass_) in sess.seen for r in need)
            else:
                mods = {r: _module(spec, method, r, beta, frozen, pool) for r in need}
                run = {r: make_runner(m, spec.input_shape, pass_, dev, dtype, channels_last) for r, m in mods.items()}
                est = time_callable(run[max(run)], dev, mode="fixed", number=1, threads=threads)["median_s"]
                number, warm = _calls_for(est, min_run_time), True
            df = interleaved({str(r): f for r, f in run.items()}, rounds=rounds, device=dev, threads=threads,
                             progress=progress, mode="fixed", number=number, warmup=0 if warm else 1)
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

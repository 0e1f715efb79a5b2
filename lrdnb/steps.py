"""The steps of a layer's step-time curve: found coarse to fine, and verified in pairs.

Algorithm 1 (Hajimolahoseini et al. 2023) needs the largest single-rank drop of a layer's step
time over rank. Timing every rank (:func:`lrdnb.sweeps.sweep`, what Fig. 2 shows) costs a
measurement per rank; but on a device the curve is a staircase - it drops where the rank crosses
a multiple of the kernels' tile (16 for this CPU's oneDNN fp32 kernels, 8 for tensor cores) and
is flat in between - so its steps can be found with a fraction of the timings:

* :func:`staircase_sweep` - a coarse grid, then each of the largest coarse drops located to the
  single rank where the time steps (its tile boundary tested in pairs first, else bisected);
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
from .choose import confirmed
from .pairs import verify_steps
from .sweeps import ORDERS, _order, _Session, _Setup

__all__ = ["coarse_grid", "staircase_sweep", "verify_steps", "STAIRCASE_REPEATS", "LOCATE"]

#: How :func:`staircase_sweep` finds a coarse drop's single-rank step (its ``locate``).
LOCATE = ("bisect", "boundary")

#: Passes over the coarse grid by default (:func:`staircase_sweep`, :func:`lrdnb.rankopt.optimize_ranks`):
#: the located steps are re-timed in paired rounds anyway, and on ResNet-50 here a second pass
#: cost ~10% more search time for plans no faster (README, ``benchmarks/rankopt_plans.py --alt``).
STAIRCASE_REPEATS = 1


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
    early: float | None = None,
    unanimous: int | None = None,
    min_step: float = 0.0,
    boundaries: bool = False,
    slower: float | None = None,
    locate: str = "bisect",
    device: str | torch.device = "auto",
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    batch: int | None = None,
    method: str | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    repeats: int = STAIRCASE_REPEATS,
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
       ``hi - 1`` (the step just below the upper grid rank), and bisect between them
       otherwise: a rank whose time is nearer ``t(hi)`` than ``t(lo)`` is above the step.
       Each probe is one measurement, normalised by the reference like every other. With
       ``verify_rounds`` the boundary ``lo + 1 -> lo`` is tested in paired rounds first
       (:func:`verify_steps`) instead of by one probe - a 7-10% step against ~5% noise per
       measurement here: single probes sent 1 in 4 searches of the Fig. 2 layer elsewhere.

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
        early: stop verifying a step once it can no longer be confirmed at this fraction of
            rounds (:func:`verify_steps`, ``early``); also the fraction at which a tile
            boundary counts as the step while locating (default 0.8).
        unanimous: with ``early``, also stop verifying a step whose first ``unanimous`` paired
            rounds were all faster (:func:`verify_steps`).
        min_step: a tile boundary counts as the step only if its paired drop is at least this
            (relative): a pair with no step still differs by the FLOP slope (~0.3% per rank),
            and that is seen "faster" in most rounds.
        boundaries: with ``verify_rounds``, also re-time in pairs every other tile boundary
            ``g + 1 -> g`` (``g`` a multiple of ``grid`` inside the range whose coarse interval
            dropped), all in one rotation, so Algorithm 1 compares every step of the staircase
            rather than the ``refine`` that the noisy coarse pass ranked largest. On this CPU
            the located pair changed from search to search on most layers (several near-equal
            steps, one per multiple of 16) and the plans with it. Measured on ResNet-50 here
            (``benchmarks/plan_stability.py``) that did not make plans more alike: the paired
            drops themselves are too noisy (~4% standard error on 5-10% steps) to rank.
        slower: if every coarse rank's time is at least this multiple of the original layer's
            (e.g. 1.1), no step is located or verified (``attrs["steps"]`` empty): Algorithm 1 keeps
            the original layer then whatever the steps, as a 1x1 convolution at 2x2 pixels in NCHW
            on this CPU (ResNet-50's ``layer4.0.downsample.0``: every rank 1.3-1.8x the original).
        locate: ``"bisect"`` (step 3 as above) or ``"boundary"``: a coarse drop's step is taken to
            be its tile boundary ``lo + 1 -> lo`` (pair-tested with ``verify_rounds``) and is never
            searched for inside the interval - no single-rank probes and no second paired test.
            Cheaper (on ResNet-50 here a search took 0.75-0.85 of the time, median, side by side)
            but blind to steps between grid ranks, e.g. at multiples of 8 with ``grid=16``.
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
    if locate not in LOCATE:
        raise ValueError(f"unknown locate {locate!r}; valid: {list(LOCATE)}")
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
    # that the closing reference re-normalised (rows: the located steps, r2 = order; candidates
    # tried and rejected on the way, r2 = 1000 + order; no step located because every coarse rank
    # was ``slower``, one row r2 = -1)
    tag = (f"{st.method}-stairs-g{grid}-k{refine}-s{substantial:g}-{st.ranks[0]}-{st.ranks[-1]}"
           + ("-b" if boundaries and verify_rounds else "") + ("-lb" if locate == "boundary" else ""))
    found = tried = None
    was_hopeless = False
    if st.store is not None:
        rows = [r for r in st.store.lookup(st.keys[pass_]) if r["method"] == tag and r["n"] >= repeats]
        if rows:
            rows = sorted(rows, key=lambda r: r["r2"])
            found = [int(r["rank"]) for r in rows if r["rank"] > 0 and 0 <= r["r2"] < 1000]
            was_hopeless = any(r["r2"] < 0 for r in rows)
            tried = [int(r["rank"]) for r in rows if r["rank"] > 0]
    todo = [r for r in coarse if not st.have(r, repeats)]
    measured: list[dict] = []
    ok_at = early if early is not None else (confirm if confirm is not None else 0.8)

    def verify(cands: list[int]) -> pd.DataFrame:
        return verify_steps(st.spec, cands, pass_, rounds=verify_rounds, device=st.dev, threads=st.threads,
                            dtype=dtype, channels_last=channels_last, method=st.method, beta=st.beta,
                            frozen=st.frozen, min_run_time=min_run_time, cache=st.store, session=session,
                            early=early, unanimous=unanimous, min_step=min_step)

    try:
        verified, hopeless = None, False
        if found is not None and not todo and all(st.have(c, 1) for c in found):
            steps = found
            hopeless = was_hopeless  # replayed, not re-decided from re-normalised values
            if verify_rounds:
                verified = verify(tried or [])
        else:
            val = _coarse_values(session, cached_ratio, coarse, todo, repeats, orders, rng, pass_)
            # every coarse rank clearly slower than the original: Algorithm 1 keeps the original
            # whatever the steps (the chosen rank's time is about that of its coarse interval's ends)
            hopeless = slower is not None and min(val.values()) >= slower
            picks = [] if hopeless else _picks(val, coarse, refine, substantial)

            def probe(r: int) -> float:
                if r not in val:
                    c = cached_ratio(r, 1)
                    if c is None:
                        session().measure(repeats, r)
                        c = session().ratio(r, pass_)
                    val[r] = c
                return val[r]

            if verify_rounds:
                steps, tables = _locate_verified(picks, val, probe, verify, ok_at, min_step,
                                                 sequential=confirm is not None, inside=locate == "bisect")
                if boundaries:
                    done = {int(c) for t in tables for c in t["candidate"]}
                    extra = _boundaries(val, coarse, grid, done)
                    if extra:
                        tables.append(verify(extra))
                        steps = steps + extra
                tried = [int(c) for t in tables for c in t["candidate"]]
                verified = (pd.concat(tables, ignore_index=True).sort_values("candidate", ascending=False)
                            .reset_index(drop=True) if tables else verify([]))
            else:
                steps, tried = [_bisect(val, probe, lo, hi) if locate == "bisect" else lo
                                for _, lo, hi in picks], []
            for c in steps:  # Algorithm 1 reads the chosen rank's time off the curve
                probe(c)
            if st.store is not None:
                st.store.add([{"method": tag, "rank": c, "r2": -1 if hopeless else i, "pass": pass_, "median_s": 0.0,
                               "n": repeats} for i, c in enumerate(steps or [0])]
                             + [{"method": tag, "rank": c, "r2": 1000 + i, "pass": pass_, "median_s": 0.0,
                                 "n": repeats} for i, c in enumerate(tried) if c not in steps], st.keys)
        if sess:
            measured = sess[0].close(repeats)
    finally:
        if sess:
            torch.set_num_threads(sess[0].old_threads)
        bar.close()
    df = st.frame(measured, st.ranks)
    df.attrs["steps"] = steps
    df.attrs["hopeless"] = hopeless
    df.attrs["verified"] = verified
    df.attrs["coarse"] = coarse
    return df


def _coarse_values(session, cached_ratio, coarse, todo, repeats, orders, rng, pass_) -> dict[int, float]:
    """Step 1 of :func:`staircase_sweep`: the coarse grid's reference-normalised times. The
    reference is re-timed every ``reference_every`` measurements and at the close, not at the start of
    each pass (:func:`lrdnb.sweeps.sweep` does that): a coarse pass is a handful of ranks, and the
    original layer is the slowest call of the search (ResNet-50's [512, 512, 3, 3] at 4x4, batch
    8, channels_last: ~76 ms per original train call here, 11-24 ms at Tucker2 ranks 200-300)."""
    for k in range(repeats if todo else 0):
        for r in _order(todo, orders[k % len(orders)], rng):
            session().measure(k, r)
    return {r: (session().ratio(r, pass_) if r in todo else cached_ratio(r, repeats)) for r in coarse}


def _picks(val: dict[int, float], coarse: Sequence[int], refine: int, substantial: float) -> list[tuple]:
    """Step 2: the largest coarse drop ``(drop, lo, hi)``, then the highest-rank drops of at least
    ``substantial`` x the largest, ``refine`` in all. On a device with many near-equal steps (this
    CPU: one per multiple of 16) noise decides which is largest, and the highest of them loses the
    least accuracy (Algorithm 1's ties, ``tie_tol``)."""
    asc = sorted(coarse)
    drops = sorted(((val[hi] - val[lo], lo, hi) for lo, hi in zip(asc, asc[1:])), reverse=True)
    drops = [x for x in drops if x[0] > 0]
    pick = drops[:1] + sorted((x for x in drops[1:] if x[0] >= substantial * drops[0][0]), key=lambda x: -x[2])
    return pick[:refine]


def _boundaries(val: dict[int, float], coarse: Sequence[int], grid: int, done: set[int]) -> list[int]:
    """The tile boundaries ``g`` (step ``g + 1 -> g``, ``g`` a multiple of ``grid``) of coarse
    intervals ``g -> hi`` whose coarse time dropped, not yet re-timed: :func:`staircase_sweep`'s
    ``boundaries``."""
    asc = sorted(coarse)
    return sorted((lo for lo, hi in zip(asc, asc[1:])
                   if lo % grid == 0 and hi - lo > 1 and val[hi] > val[lo] and lo not in done), reverse=True)


def _bisect(val: dict[int, float], probe: Callable[[int], float], lo: int, hi: int, a: int | None = None,
            b: int | None = None) -> int:
    """Step 3 without paired checks: the single-rank step inside the coarse drop ``lo -> hi`` from
    single probes - ``lo + 1`` (a tile-aligned grid puts the step at ``lo``), then ``hi - 1`` (just
    below the upper grid rank), then bisection: a rank nearer ``t(hi)`` than ``t(lo)`` is above
    the step. ``a``/``b``: ranks already known to be below/above the step."""
    mid = (val[lo] + val[hi]) / 2
    a, b = (lo if a is None else a), (hi if b is None else b)  # invariant: a below the step, b above
    if a == lo and b - a > 1:
        if probe(lo + 1) > mid:
            b = lo + 1
        else:
            a = lo + 1
    if b == hi and b - a > 1:
        if probe(hi - 1) <= mid:
            a = hi - 1
        else:
            b = hi - 1
    while b - a > 1:
        m = (a + b) // 2
        if probe(m) > mid:
            b = m
        else:
            a = m
    return a


def _locate_verified(picks, val, probe, verify, ok_at: float, min_step: float,
                     sequential: bool, inside: bool = True) -> tuple[list[int], list]:
    """Step 3 with paired checks (:func:`staircase_sweep` with ``verify_rounds``): for each coarse
    drop ``lo -> hi``, the tile boundary ``lo + 1 -> lo`` is tested first with paired rounds
    (:func:`verify_steps`), so a single noisy probe (a 7-10% step against ~5% noise per
    measurement on this CPU) cannot send the search elsewhere; only if it is rejected is the drop
    located with single probes (:func:`_bisect`: ``hi - 1``, then bisection) and the rank found
    verified (``inside=False``, :func:`staircase_sweep`'s ``locate="boundary"``: not located
    inside; the boundary is the drop's step). Returns the located steps (one per drop) and the
    verification tables."""
    steps: list[int] = []
    tables: list[pd.DataFrame] = []

    def ok(v: pd.DataFrame) -> bool:
        return bool(confirmed(v, ok_at, min_step).any())

    for _, lo, hi in picks:
        tried: list[int] = []
        c_ok = None
        if lo not in steps:
            v = verify([lo])
            tables.append(v)
            tried.append(lo)
            if ok(v):
                c_ok = lo
        if c_ok is None and inside and hi - lo > 1:  # not at the boundary: locate with single probes
            c = _bisect(val, probe, lo, hi, a=lo + 1)
            if c not in tried and c not in steps:
                v = verify([c])
                tables.append(v)
                c_ok = c if ok(v) else None
            if c_ok is None:
                c_ok = c
        steps.append(tried[0] if c_ok is None else c_ok)
        if sequential and ok(tables[-1]):
            break
    return steps, tables

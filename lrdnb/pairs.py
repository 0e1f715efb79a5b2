"""Paired re-timing of candidate steps ``c + 1 -> c`` of a step-time curve.

A sweep or a staircase search (:mod:`lrdnb.steps`) measures each rank once or a few times; a
step seen there may be one slow measurement (MEASURING.md: 3-7x slow episodes, ~5% noise per
measurement here). :func:`verify_steps` times each candidate and its upper neighbour
round-robin (:func:`lrdnb.timing.interleaved`) and reports the per-round ratios, which is what
Algorithm 1 (:func:`lrdnb.choose.algorithm1`) then chooses among.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .plan import LayerSpec
from .provenance import device_name as _device_name, resolve_device
from .sweeps import _POOL, _calls_for, _module, _Session
from .timing import _check_pass, make_runner, time_callable

__all__ = ["verify_steps"]


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
    early: float | None = None,
    unanimous: int | None = None,
    min_step: float = 0.0,
) -> pd.DataFrame:
    """Check candidate steps ``c + 1 -> c`` of a sweep curve with paired, interleaved timings.

    A sweep measures each rank a few times; a step seen there may be one slow measurement. Here
    every candidate ``c`` and its upper neighbour ``c + 1`` are timed round-robin with
    :func:`interleaved` (all pairs in one rotation, ``rounds`` rounds) and the per-round ratio
    ``t(c) / t(c + 1)`` is reported: a real step has every round's ratio below 1.

    Returns:
        One row per candidate: ``candidate``, ``above`` (= c + 1), ``ratio`` (median over rounds),
        ``ratio_min``, ``ratio_max``, ``drop_rel`` (``1 - ratio``), ``rounds``, ``faster`` (fraction
        of rounds with ``ratio < 1``), ``se`` (standard error of the mean log ratio over the rounds,
        the drop's uncertainty that :func:`lrdnb.choose.algorithm1`'s ``tie_z`` uses; NaN with
        fewer than 2 rounds), ``cached``.
        Cached (like sweeps) under the sweep key with method ``"<method>-step"``.
        ``session``: a function returning the open measuring session of :func:`staircase_sweep`, whose
        runners are then used (called only if something needs timing).

    Early stopping (``early``, the ``confirm`` fraction of :func:`lrdnb.choose.algorithm1`): rounds
    are run one at a time and a candidate leaves the rotation as soon as it can no longer be
    confirmed (fewer than ``ceil(early * rounds)`` faster rounds still possible: with 5 rounds and
    0.8, at its second slower round) - the verdict all rounds would give. Confirmed steps get every
    round: Algorithm 1 compares their drops, which need all the precision there is. On this CPU
    that is ~4.3 rounds per candidate instead of 5 (143 cached verifications replayed).
    ``unanimous=k`` also stops a candidate whose first ``k`` rounds were all faster (k = 3: chance
    1/8 for a non-step, stricter than 4 of 5's 6/32; ~3.4 rounds per candidate) - cheaper, but
    the drops of confirmed steps then rest on 3 rounds, and with several near-equal steps (the
    Fig. 2 layer: 304, 288, 272, 256 all 7-10%) the choice among them moved between runs.
    ``min_step``: with ``early``, also stop a candidate whose median drop after 3 rounds is under
    ``min_step`` (a pair that differs by the FLOP slope only is seen faster in most rounds and
    would otherwise run them all).
    Rows of an early-stopped verification are cached under their own tag.
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
    key = timing_key(_device_name(dev), dtype, pass_, spec.timed_signature(pass_), channels_last, threads, frozen)
    if early is not None and not 0 < early <= 1:
        raise ValueError(f"early must be a fraction in (0, 1] (the confirm threshold), got {early}")
    tag = f"{method}-step" if early is None else f"{method}-step-e{early:g}-u{unanimous or 0}-m{min_step:g}"
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
            need = sorted({*todo, *(c + 1 for c in todo)})
            if session is not None:  # runners already built, most of them warm
                sess = session()
                run = {r: sess._runner(r, pass_) for r in need}
                number = sess.number[pass_]
                cold = [r for r in need if (r, pass_) not in sess.seen]
                sess.seen.update((r, pass_) for r in cold)
            else:
                mods = {r: _module(spec, method, r, beta, frozen, _POOL) for r in need}
                run = {r: make_runner(m, spec.input_shape, pass_, dev, dtype, channels_last,
                                      input_requires_grad=spec.input_grad) for r, m in mods.items()}
                # the size estimate (a warm-up and one timed call) warms the largest
                est = time_callable(run[max(run)], dev, mode="fixed", number=1, threads=threads)["median_s"]
                number, cold = _calls_for(est, min_run_time), [r for r in need if r != max(run)]
            for r in cold:  # a new shape's first call builds its kernels: one untimed call each, and
                run[r]()  # only for those (a warm-up round would re-run the warm ones too)
            q_of = _paired_rounds(run, todo, rounds, dev, threads, number, progress, early, unanimous, min_step)
        finally:
            torch.set_num_threads(old_threads)
        for c in todo:
            q = q_of[c]
            rows.append({"method": tag, "rank": c, "r2": c + 1, "pass": pass_, "median_s": float(np.median(q)),
                         "min_s": float(q.min()), "max_s": float(q.max()), "n": int(rounds), "number": number,
                         "times_s": ";".join(f"{x:.6g}" for x in q)})
        if store is not None:
            store.add(rows, {pass_: key})
    out = [dict(r, cached=False) for r in rows] + [dict(have[c], cached=True) for c in cands if c in have]
    res = pd.DataFrame([{"candidate": int(r["rank"]), "above": int(r["rank"]) + 1, "ratio": float(r["median_s"]),
                         "ratio_min": float(r["min_s"]), "ratio_max": float(r["max_s"]),
                         "drop_rel": 1.0 - float(r["median_s"]),
                         "rounds": len([x for x in str(r.get("times_s") or "").split(";") if x]) or int(r["n"]),
                         "faster": _frac_below_one(r.get("times_s"), float(r["max_s"])),
                         "se": _log_se(r.get("times_s")), "cached": r["cached"]}
                        for r in out], columns=["candidate", "above", "ratio", "ratio_min", "ratio_max", "drop_rel",
                                                "rounds", "faster", "se", "cached"])
    return res.sort_values("candidate", ascending=False).reset_index(drop=True)


def _paired_rounds(run, todo, rounds, dev, threads, number, progress, early, unanimous, min_step) -> dict:
    """Per-round ratios ``t(c) / t(c + 1)`` of each candidate, rounds run one at a time (rotating
    order, :func:`interleaved`), candidates dropped once settled (:func:`verify_steps`, ``early``)."""
    from tqdm.auto import tqdm

    need = None if early is None else int(np.ceil(early * rounds - 1e-9))

    def settled(v: list[float]) -> bool:
        fast = sum(x < 1 for x in v)
        return (len(v) - fast > rounds - need
                or bool(unanimous and len(v) >= unanimous and fast == len(v))
                or bool(min_step and len(v) >= 3 and np.median(v) > 1 - min_step))

    q: dict[int, list[float]] = {c: [] for c in todo}
    active = list(todo)
    bar = tqdm(total=rounds, desc="verify steps", unit="round", disable=not progress, leave=False)
    for k in range(rounds):
        ranks = sorted({*active, *(c + 1 for c in active)})
        ranks = ranks[k % len(ranks):] + ranks[: k % len(ranks)]  # rotating order, as interleaved's rounds
        t = _round(run, ranks, dev, threads, number)
        for c in active:
            q[c].append(float(t[c] / t[c + 1]))
        if need is not None:
            active = [c for c in active if not settled(q[c])]
        bar.update()
        if not active:
            break
    bar.close()
    return {c: np.asarray(v) for c, v in q.items()}


def _round(run: dict, ranks: list[int], dev, threads: int, number: int) -> dict[int, float]:
    """Seconds per call of each rank, timed once each in the order given: one round of
    :func:`lrdnb.timing.interleaved` without its frame (a ResNet-50 search runs ~170 rounds)."""
    return {r: time_callable(run[r], dev, mode="fixed", number=number, threads=threads, warmup=0)["median_s"]
            for r in ranks}


def _per_round(per_round: Any) -> list[float]:
    """The per-round ratios a cached verification row stores as ``"r1;r2;..."``."""
    return [float(x) for x in str(per_round or "").split(";") if x and x != "nan"]


def _log_se(per_round: Any) -> float:
    """Standard error of the mean of ``log(ratio)`` over a verification's rounds (NaN if < 2)."""
    vals = np.log(_per_round(per_round))
    return float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) >= 2 else float("nan")


def _frac_below_one(per_round: Any, ratio_max: float) -> float:
    vals = _per_round(per_round)
    if not vals:
        return float(ratio_max < 1.0)
    return float(np.mean(np.asarray(vals) < 1.0))

"""Choosing ranks from measured step-time curves and paired checks (pure functions; no timing).

* :func:`algorithm1` - Algorithm 1 of Hajimolahoseini et al. 2023 ("Speeding up low-rank
  decomposition with rank optimization and sequential freezing", Sec. 2.1) on a measured curve,
  plus the variants a noisy device needs (relative drop, multiples of N, smoothing,
  paired-verified candidates); :func:`step_table` / :func:`top_candidates` /
  :func:`curve_steps` show how it scores a curve.
* :func:`joint_select` - beyond the paper (its conclusion's future work; the runtime lookup
  tables of Idelbayev & Carreira-Perpinan, "beyond FLOPs"): all ranks at once, minimising total
  reconstruction error under a total time budget by Lagrangian relaxation.

:func:`lrdnb.rankopt.optimize_ranks` measures the curves and applies these to a plan;
:func:`confirmed` and :func:`settled` judge paired re-timings, :func:`contract_choice` the final check.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["VARIANTS", "SMOOTHERS", "step_table", "top_candidates", "algorithm1", "confirmed", "settled",
           "paired_table", "contract_choice", "curve_steps", "joint_select"]

VARIANTS = ("paper", "relative")
SMOOTHERS = (None, "median3", "median5", "consistent")


def _running_median(x: np.ndarray, width: int) -> np.ndarray:
    h = width // 2
    return np.array([np.median(x[max(0, i - h): i + h + 1]) for i in range(len(x))])


def step_table(
    ranks: Sequence[int],
    times: Sequence[float] | np.ndarray,
    variant: str = "paper",
    multiple: int | None = None,
    smooth: str | None = None,
    min_drop: float = 0.0,
) -> pd.DataFrame:
    """Every candidate step of a curve, as Algorithm 1 scores them (see :func:`algorithm1`).

    Returns:
        One row per candidate ``c`` (every measured rank but the top), ascending:
        ``candidate``, ``above`` (next measured rank above), ``t_s`` (median time at ``c``),
        ``drop_s`` (time saved going from ``above`` to ``c``, after smoothing), ``drop_rel``
        (``drop_s / t(above)``), ``score`` (``drop_s`` for ``"paper"``, ``drop_rel`` for
        ``"relative"``) and ``valid`` (passes ``multiple`` / ``min_drop`` / consistency).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown Algorithm 1 variant {variant!r}; valid: {list(VARIANTS)}")
    if smooth not in SMOOTHERS:
        raise ValueError(f"unknown smoothing {smooth!r}; valid: {list(SMOOTHERS)}")
    r = np.asarray(ranks, dtype=int)
    t = np.asarray(times, dtype=float)
    t = t[None, :] if t.ndim == 1 else t
    if t.shape[1] != len(r) or len(r) < 2:
        raise ValueError(f"need >= 2 ranks and times of shape [len(ranks)] or [repeats, len(ranks)]; "
                         f"got {len(r)} ranks and times {t.shape}")
    order = np.argsort(r)
    r, t = r[order], t[:, order]
    curve = np.median(t, axis=0)
    step = t[:, 1:] - t[:, :-1]  # step[:, i]: time saved going from r[i+1] down to r[i]
    if smooth in ("median3", "median5"):
        sm = _running_median(curve, int(smooth[-1]))
        drop = sm[1:] - sm[:-1]
    elif smooth == "consistent":
        if t.shape[0] < 2:
            raise ValueError("smooth='consistent' needs per-repeat times: [repeats, len(ranks)], repeats >= 2")
        drop = step.min(axis=0)  # the step as seen by its least convinced repeat
    else:
        drop = np.median(step, axis=0)
    valid = np.ones(len(drop), dtype=bool)
    if smooth == "consistent":
        valid &= drop > 0
    rel = drop / curve[1:]
    if min_drop > 0:
        valid &= rel >= min_drop
    if multiple:
        valid &= r[:-1] % int(multiple) == 0
    return pd.DataFrame({"candidate": r[:-1], "above": r[1:], "t_s": curve[:-1], "drop_s": drop, "drop_rel": rel,
                         "score": rel if variant == "relative" else drop, "valid": valid})


def top_candidates(
    ranks: Sequence[int],
    times: Sequence[float] | np.ndarray,
    k: int = 3,
    variant: str = "paper",
    multiple: int | None = None,
    smooth: str | None = None,
    min_drop: float = 0.0,
) -> list[int]:
    """The ``k`` best candidate steps of a curve, to re-time with :func:`lrdnb.rankopt.verify.verify_steps`.

    Ranked on the (smoothed) :func:`step_table`; a running median can shift a step by one rank
    on a noisy curve, so each pick is snapped to the largest unsmoothed step among itself and its
    two neighbours (keeping ``multiple``)."""
    st = step_table(ranks, times, variant, multiple, smooth, min_drop)
    raw = step_table(ranks, times, variant, multiple, None if smooth != "consistent" else smooth).set_index("candidate")
    out: list[int] = []
    for c in st[st["valid"]].nlargest(len(st), "score")["candidate"]:
        near = [n for n in (c - 1, c, c + 1) if n in raw.index and raw.loc[n, "valid"]] or [c]
        best = int(max(near, key=lambda n: raw.loc[n, "score"]) if len(near) > 1 else near[0])
        if best not in out:
            out.append(best)
        if len(out) >= k:
            break
    return out


def confirmed(verified: pd.DataFrame, confirm: float = 0.8, min_drop: float = 0.0) -> pd.Series:
    """Which rows of a :func:`lrdnb.rankopt.verify.verify_steps` table are confirmed steps: seen faster in
    at least ``confirm`` of the rounds (tables without ``faster``: in all of them), median ratio
    below 1 and a drop of at least ``min_drop``.

    Example:
        >>> v = pd.DataFrame({"ratio": [0.9, 0.99, 0.9], "faster": [1.0, 1.0, 0.6]})
        >>> confirmed(v, 0.8, min_drop=0.02).tolist()
        [True, False, False]
    """
    faster = verified["faster"] if "faster" in verified else (verified["ratio_max"] < 1.0).astype(float)
    return (faster >= confirm) & (verified["ratio"] < 1.0) & (verified["ratio"] <= 1.0 - min_drop)


def paired_table(q: Mapping[int, Sequence[float]], above: int = 1) -> pd.DataFrame:
    """Paired re-timings ``{candidate: per-round ratios t(c) / t(c + above)}`` as the table
    :func:`algorithm1` reads: ``candidate, above, ratio`` (median), ``ratio_min``, ``ratio_max``,
    ``drop_rel`` (``1 - ratio``), ``rounds``, ``faster`` (fraction of rounds with ratio < 1).

    Example:
        >>> paired_table({255: [0.9, 0.92, 1.01]}).round(2).iloc[0, :3].tolist()
        [255.0, 256.0, 0.92]
    """
    rows = [{"candidate": int(c), "above": int(c) + above, "ratio": float(np.median(v)), "ratio_min": float(min(v)),
             "ratio_max": float(max(v)), "drop_rel": 1.0 - float(np.median(v)), "rounds": len(v),
             "faster": float(np.mean(np.asarray(v) < 1.0))} for c, v in q.items() if len(v)]
    cols = ["candidate", "above", "ratio", "ratio_min", "ratio_max", "drop_rel", "rounds", "faster"]
    return pd.DataFrame(rows, columns=cols).sort_values("candidate", ascending=False).reset_index(drop=True)


def settled(ratios: Sequence[float], rounds: int, confirm: float = 0.8, min_drop: float = 0.0) -> bool:
    """Whether a paired check's verdict (:func:`confirmed`) can no longer change, so its
    remaining rounds can be skipped: too many rounds were slower for it ever to be confirmed
    (with 5 rounds and 0.8: at the second slower round), or after 3 rounds its median drop is
    under ``min_drop``. Confirmed steps run every round: their drops are then compared.

    Example:
        >>> settled([1.1, 1.05], rounds=5), settled([0.9, 0.9], rounds=5)
        (True, False)
    """
    need = int(np.ceil(confirm * rounds - 1e-9))
    fast = sum(x < 1 for x in ratios)
    return len(ratios) - fast > rounds - need or bool(min_drop and len(ratios) >= 3
                                                      and np.median(ratios) > 1 - min_drop)


def contract_choice(q: Mapping[str, Sequence[float]], searched: str, confirm: float = 0.8
                    ) -> tuple[str, dict[str, dict[str, float]]]:
    """The plan a whole-model check returns: the searched plan only where paired rounds confirm it
    is faster than every other candidate (faster in ``confirm`` of the rounds, median ratio below
    1); otherwise the fastest other candidate (lowest median), so that noise never trades a
    baseline for a plan that is not shown to be faster.

    ``q[name]``: per-round ratios ``t(name) / t(reference)`` (the reference's are 1). Returns the
    choice and per candidate ``{median, min, max, won}`` (``won``: fraction of rounds faster than
    the reference).

    Example:
        >>> q = {"searched": [0.90, 0.91, 0.95], "input": [1, 1, 1], "rounded": [0.92, 0.90, 0.99]}
        >>> contract_choice(q, "searched")[0], contract_choice(q, "searched", confirm=0.6)[0]
        ('rounded', 'searched')
    """
    stats = {n: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)),
                 "won": float(np.mean(np.asarray(v) < 1.0))} for n, v in q.items()}
    others = [n for n in q if n != searched]
    best = min(others, key=lambda n: (stats[n]["median"], others.index(n)))
    if searched not in q:
        return best, stats
    mine = np.asarray(q[searched])
    ok = all(np.mean(mine / np.asarray(q[n]) < 1.0) >= confirm and np.median(mine / np.asarray(q[n])) < 1.0
             for n in others)
    return (searched if ok else best), stats


def algorithm1(
    ranks: Sequence[int],
    times: Sequence[float] | np.ndarray,
    t_original: float | Sequence[float],
    variant: str = "paper",
    multiple: int | None = None,
    smooth: str | None = None,
    min_drop: float = 0.0,
    verified: pd.DataFrame | None = None,
    tie_tol: float = 0.0,
    confirm: float = 0.8,
) -> tuple[int | None, str]:
    """Algorithm 1 (Hajimolahoseini et al. 2023): the rank just past the biggest step-time drop.

    The paper measures ``t(r)`` for ``r = R .. R_min``, forms ``delta t(r) = t(r) - t(r-1)``
    and takes ``R_opt = argmax delta t``; if ``t(R_opt) >= T`` (the original layer's time) the
    original layer is kept. The pseudo-code's index is ambiguous (``t(r-1)`` is not yet measured
    when ``delta t(r)`` is formed); its text and Fig. 2 are not: going from 257 to 256 saves 15%,
    so 256, the rank *after* the drop, is chosen. Here every candidate ``c`` scores
    ``t(next measured rank above c) - t(c)``, so the choice is ``c = r - 1`` for the paper's
    ``argmax_r delta t(r)``; the top rank ``R`` is never a candidate (nothing above it is timed),
    as in the paper. With the defaults this is exactly the paper's algorithm.

    For noisy devices (beyond the paper): ``smooth``, ``min_drop``, and ``verified`` - paired
    re-measurements of the best candidates (:func:`lrdnb.rankopt.verify.verify_steps`): then only
    candidates whose rounds confirmed the drop (``confirm``) compete, scored by their paired drop, and if
    none is confirmed the top rank ``R`` is kept (no step is worth extra compression). ``tie_tol``
    treats drops within ``tie_tol`` (relative units) of the best as equal and takes the highest of
    those ranks (least accuracy lost), which makes the choice stable when a device has several
    equal steps (an AVX-512 CPU: every multiple of 16).

    Args:
        ranks: the measured ranks (any order; a coarse grid is fine: drops are taken between
            consecutive measured ranks).
        times: seconds per call, ``[len(ranks)]`` or ``[repeats, len(ranks)]`` (one row per
            sweep pass; drops are then taken within each pass and their median used).
        t_original: ``T``, the original layer's time (scalar, or per repeat: the median is used).
        variant: ``"paper"`` (largest drop in seconds) or ``"relative"`` (largest drop as a
            fraction of the time above it).
        multiple: only ranks that are multiples of this are candidates (rank quantization).
        smooth: ``None``; ``"median3"`` / ``"median5"``: running median of the curve over ranks
            before differencing (removes isolated spikes, keeps steps); ``"consistent"``: each
            step is scored by its smallest drop over the repeats (each repeat differenced on its
            own, neighbours measured close in time) and must be positive in every repeat - a
            candidate must beat its neighbour in every pass (needs 2-D ``times``).
        min_drop: candidates must save at least this fraction of ``t`` (verified ones: in their
            paired median); if none does, the top rank ``R`` is returned ("no step above the
            noise").
        verified: :func:`lrdnb.rankopt.verify.verify_steps`'s table for some candidates.
        confirm: a verified step counts if at least this fraction of its rounds saw it (and its
            median ratio is below 1); 0.8 = 4 of 5 rounds, so one disturbed round is tolerated.
        tie_tol: drops within this (relative) of the best count as ties -> highest rank.

    Returns:
        ``(rank, reason)``; ``rank`` is ``None`` when the original layer is at least as fast.

    Example:
        >>> t = [1.0, 1.0, 1.3, 1.3, 1.3]  # ranks 254..258: the step is 255 -> 256
        >>> algorithm1([254, 255, 256, 257, 258], t, t_original=2.0)[0]
        255
    """
    st = step_table(ranks, times, variant, multiple, smooth, min_drop)
    r_all = np.sort(np.asarray(ranks, dtype=int))
    curve = np.median(np.atleast_2d(np.asarray(times, dtype=float))[:, np.argsort(np.asarray(ranks))], axis=0)
    T = float(np.median(np.asarray(t_original, dtype=float)))
    opts = ", ".join(x for x in (smooth, f"x{multiple}" if multiple else "", "verified" if verified is not None
                                 else "", f"ties {tie_tol:g}" if tie_tol else "") if x)
    tag = f"Algorithm 1 ({variant}{', ' + opts if opts else ''})"
    if verified is not None:
        v = verified[confirmed(verified, confirm, min_drop)]
        if multiple:
            v = v[v["candidate"] % int(multiple) == 0]
        cand = v.rename(columns={"drop_rel": "score"})
        why_none = (f"no step confirmed by paired re-timing of {sorted(verified['candidate'].tolist())}"
                    + (f" with a drop of at least {min_drop:.0%}" if min_drop else "") + "; top rank kept")
    else:
        cand = st[st["valid"]]
        why_none = f"no drop of at least {min_drop:.0%} among candidates; top rank kept"
    if cand.empty:
        chosen, how = int(r_all[-1]), why_none
    else:
        best = cand["score"].max()
        tol = tie_tol * (1.0 if verified is not None or variant == "relative" else float(np.median(curve)))
        tied = bool(tie_tol)
        ties = cand[cand["score"] >= best - tol] if tied else cand[cand["score"] == best]
        pick = ties.sort_values("candidate").iloc[-1 if tied else 0]
        chosen = int(pick["candidate"])
        rel = float(pick["score"] if verified is not None else st.loc[st["candidate"] == chosen, "drop_rel"].iloc[0])
        above = int(pick["above"])
        how = f"drop {rel:.1%} at {above}->{chosen}" + (
            f", highest of {len(ties)} tied with the largest" if len(ties) > 1 else "")
    tc = float(curve[r_all == chosen][0])
    if tc >= T:
        return None, (f"{tag}: rank {chosen} ({how}) takes {tc * 1e3:.3g} ms >= original {T * 1e3:.3g} ms; "
                      "original layer kept")
    return chosen, f"{tag}: rank {chosen} ({how}); {1 - tc / T:.0%} faster than original"


def curve_steps(df: pd.DataFrame, pass_: str | None = None, column: str = "norm_s", top: int = 5) -> pd.DataFrame:
    """The largest single-rank drops of a sweep curve: ``rank_from, rank_to, drop_s, drop_rel``.

    Also reports ``noise_rel``: the median absolute relative step over all ranks (what a step
    of no consequence looks like) for comparison.
    """
    d = df[df["method"] != "keep"]
    if pass_ is not None:
        d = d[d["pass"] == pass_]
    d = d.sort_values("rank")
    r, t = d["rank"].to_numpy(), d[column].to_numpy()
    drop = t[1:] - t[:-1]
    rel = drop / t[1:]
    noise = float(np.median(np.abs(rel))) if len(rel) else float("nan")
    out = pd.DataFrame({"rank_from": r[1:], "rank_to": r[:-1], "drop_s": drop, "drop_rel": rel})
    out["noise_rel"] = noise
    return out.sort_values("drop_s", ascending=False).head(top).reset_index(drop=True)


def _options(df: pd.DataFrame, power: float) -> dict[str, dict[str, np.ndarray]]:
    need = {"layer", "rank", "time_s", "error"}
    if not need <= set(df.columns):
        raise ValueError(f"joint_select needs columns {sorted(need)} (+ optional count, weight); got {list(df.columns)}")
    out = {}
    for layer, g in df.groupby("layer", sort=False):
        count = g["count"].to_numpy(float) if "count" in g else np.ones(len(g))
        weight = g["weight"].to_numpy(float) if "weight" in g else np.ones(len(g))
        out[layer] = {"rank": g["rank"].to_numpy(int), "time": count * g["time_s"].to_numpy(float),
                      "cost": count * weight * g["error"].to_numpy(float) ** power, "index": g.index.to_numpy()}
    return out


def joint_select(
    curves: pd.DataFrame,
    budget: float | None = None,
    lam: float | None = None,
    start: Mapping[str, int] | None = None,
    power: float = 2.0,
    iters: int = 60,
) -> dict[str, Any]:
    """Choose every layer's rank at once: least total error within a total time budget.

    Beyond Algorithm 1 (the paper's future work), after the runtime lookup tables of Idelbayev &
    Carreira-Perpinan ("beyond FLOPs"): minimise ``E = sum_l count_l weight_l e_l(r_l)^power``
    subject to ``sum_l count_l t_l(r_l) <= budget``, where ``e_l`` is layer ``l``'s relative
    reconstruction error (eq. 3; :func:`lrdnb.factors.svd_error_curve`,
    :func:`lrdnb.factors.tucker2_error_curve`). With ``power=2`` and ``weight=1`` this is the
    sum of squared relative errors; ``weight = ||W_l||^2`` makes it the total squared Frobenius
    error. Lagrangian relaxation: for a multiplier ``lam`` each layer independently takes
    ``argmin cost + lam * time``; ``lam`` is bisected (log scale) to the cheapest-error feasible
    point, then a greedy pass spends the remaining slack on the largest error reductions.

    Args:
        curves: one row per (layer, option): ``layer``, ``rank``, ``time_s``, ``error`` and
            optionally ``count`` (a signature repeated ``count`` times contributes ``count``
            times its time and error) and ``weight``. Keeping the original layer is an option
            like any other (by convention ``rank=0``, ``error=0``, ``time_s=T``).
        budget: total seconds allowed (over the listed layers).
        lam: a fixed multiplier instead of a budget (seconds are worth ``lam`` error units).
        start: a feasible assignment ``{layer: rank}`` (e.g. the uniform-ratio plan); the result
            is never worse than it.

    Returns:
        ``{"ranks": {layer: rank}, "time_s": total time, "error": total E, "lam": multiplier,
        "budget": budget, "feasible": bool, "table": the chosen rows of curves}``.

    Example:
        >>> df = pd.DataFrame({"layer": ["a"] * 3 + ["b"] * 3, "rank": [0, 8, 4] * 2,
        ...                    "time_s": [4.0, 2.0, 1.0, 4.0, 3.0, 1.0], "error": [0, .1, .5, 0, .1, .2]})
        >>> joint_select(df, budget=4.0)["ranks"]
        {'a': 8, 'b': 4}
    """
    if (budget is None) == (lam is None):
        raise ValueError("give exactly one of budget (seconds) or lam (Lagrange multiplier)")
    opts = _options(curves, power)
    names = list(opts)

    def solve(mult: float) -> dict[str, int]:
        sel = {}
        for n in names:
            o = opts[n]
            obj = o["cost"] + mult * o["time"]
            best = np.flatnonzero(obj <= obj.min() + 1e-15 * max(1.0, abs(obj.min())))
            sel[n] = int(best[np.argmin(o["time"][best])])  # ties: the faster option
        return sel

    def totals(sel: Mapping[str, int]) -> tuple[float, float]:
        return (float(sum(opts[n]["time"][i] for n, i in sel.items())),
                float(sum(opts[n]["cost"][i] for n, i in sel.items())))

    feasible = True
    if lam is not None:
        sel, used = solve(float(lam)), float(lam)
    else:
        fastest = {n: int(np.argmin(opts[n]["time"])) for n in names}
        if totals(fastest)[0] > budget * (1 + 1e-12):
            warnings.warn(f"budget {budget:.4g} s is below the fastest choice {totals(fastest)[0]:.4g} s; "
                          "returning the fastest choice", stacklevel=2)
            sel, used, feasible = fastest, math.inf, False
        else:
            sel, used = solve(0.0), 0.0
            if totals(sel)[0] > budget:
                lo, hi = 0.0, 1.0
                while totals(solve(hi))[0] > budget and hi < 1e30:
                    lo, hi = hi, hi * 16
                sel, used = solve(hi), hi
                for _ in range(iters):
                    mid = math.sqrt(max(lo, 1e-300) * hi) if lo > 0 else hi / 16
                    s_mid = solve(mid)
                    if totals(s_mid)[0] <= budget:
                        hi, sel, used = mid, s_mid, mid
                    else:
                        lo = mid
                    if hi - lo <= 1e-9 * hi:
                        break
            sel = _greedy_fill(sel, opts, budget, totals)
            if start is not None:
                s0 = {n: int(np.flatnonzero(opts[n]["rank"] == start[n])[0]) for n in names}
                if totals(s0)[0] <= budget * (1 + 1e-12):
                    s0 = _greedy_fill(s0, opts, budget, totals)
                    if totals(s0)[1] < totals(sel)[1]:
                        sel = s0
    t_tot, e_tot = totals(sel)
    table = curves.loc[[opts[n]["index"][i] for n, i in sel.items()]].reset_index(drop=True)
    return {"ranks": {n: int(opts[n]["rank"][i]) for n, i in sel.items()}, "time_s": t_tot, "error": e_tot,
            "lam": used, "budget": budget, "feasible": feasible and (budget is None or t_tot <= budget * (1 + 1e-12)),
            "table": table}


def _greedy_fill(sel, opts, budget, totals, max_moves: int = 10_000):
    """Spend leftover budget: repeatedly take the single-layer change with the largest error
    reduction that still fits."""
    sel = dict(sel)
    t_now = totals(sel)[0]
    for _ in range(max_moves):
        best = None
        for n, i in sel.items():
            o = opts[n]
            gain = o["cost"][i] - o["cost"]
            extra = o["time"] - o["time"][i]
            ok = (gain > 1e-15) & (t_now + extra <= budget * (1 + 1e-12))
            if ok.any():
                j = int(np.argmax(np.where(ok, gain, -np.inf)))
                if best is None or gain[j] > best[0]:
                    best = (gain[j], n, j, extra[j])
        if best is None:
            break
        _, n, j, dt = best
        sel[n] = j
        t_now += dt
    return sel

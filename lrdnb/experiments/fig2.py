"""Fig. 2: step time of a decomposed conv layer vs its rank (Hajimolahoseini et al. 2023).

The paper times a [512, 512, 3, 3] conv of ResNet-152 decomposed by Tucker2 at ranks 270..242 on
a V100: the time is flat over most of the range but drops 15% from rank 257 to 256. Algorithm 1
picks the rank just past the largest drop. :func:`step_time_vs_rank` measures the same curve on
this device with :func:`lrdnb.rankopt.sweep` (several independent sweeps, to show how much of the
curve is the device and how much is noise) and runs Algorithm 1 on each sweep and on all pooled.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..spec import LayerSpec
from ..provenance import provenance, resolve_device, run_start
from ..rankopt import Timing, algorithm1, curve_arrays, curve_steps, rank_range, sweep, top_candidates
from ..rankopt.measure import LayerBench
from ..rankopt.sweep import LayerCurves
from ..rankopt.verify import verify_steps

__all__ = ["fig2_spec", "step_time_vs_rank"]

def fig2_spec(weight_shape: Sequence[int] = (512, 512, 3, 3), input_size: int = 14, batch: int = 8,
              method: str = "tucker2") -> LayerSpec:
    """A plan entry for a stride-1 'same' conv of ``weight_shape`` at ``input_size`` pixels."""
    s, c, kh, kw = (int(v) for v in weight_shape)
    io = [int(batch), c, int(input_size), int(input_size)]
    return LayerSpec(name=f"conv{s}x{c}x{kh}x{kw}", kind="conv2d", weight_shape=[s, c, kh, kw], bias=False,
                     input_shape=io, output_shape=[int(batch), s, int(input_size), int(input_size)],
                     padding=[kh // 2, kw // 2], method=method)


def step_time_vs_rank(
    weight_shape: Sequence[int] = (512, 512, 3, 3),
    input_size: int = 14,
    batch: int = 8,
    method: str = "tucker2",
    alpha: float = 2.0,
    beta: float = 1.0,
    rank_max: int | None = None,
    rank_min: int | None = None,
    passes: Sequence[str] = ("train",),
    choice_pass: str = "train",
    device: str = "auto",
    threads: int | None = None,
    dtype: str = "float32",
    channels_last: bool = False,
    repeats: int = 3,
    sweeps: int = 2,
    min_run_time: float = 0.01,
    variant: str = "paper",
    smooth: str | None = "consistent",
    multiple: int | None = None,
    verify_top: int = 3,
    verify_rounds: int = 5,
    tie_tol: float = 0.03,
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fig. 2 on this device: ``sweeps`` independent sweeps of one layer over a rank range.

    Args:
        weight_shape: conv weight ``[S, C, kh, kw]``.
        input_size, batch: input ``[batch, C, input_size, input_size]`` (stride 1, 'same').
        method: ``"tucker2"`` (ranks ``r1``, ``r2 = floor(beta r1)``) or ``"svd"``.
        alpha, beta: the range's defaults: eq. 5 at ``alpha`` down to eq. 6 (``alpha + 1``).
        rank_max, rank_min: an explicit range instead.
        passes: passes to time (:data:`lrdnb.rankopt.PASSES`); ``choice_pass`` is the one
            Algorithm 1 runs on.
        repeats, min_run_time: per sweep (see :func:`lrdnb.rankopt.sweep`).
        sweeps: independent sweeps (different seeds and visit orders) to show the choice's stability.
        variant, smooth, multiple, tie_tol: Algorithm 1's options (:func:`lrdnb.rankopt.algorithm1`).
        verify_top, verify_rounds: re-time each sweep's best candidate steps in interleaved pairs
            (:func:`lrdnb.rankopt.verify.verify_steps`); ``0``: Algorithm 1 on the sweep alone.

    Returns:
        ``(curves, choices)``: the sweep rows with a ``sweep`` column (0, 1, ...), rows sorted by
        sweep, pass, method and descending rank (the original layer: ``method == "keep"``,
        ``rank == 0``); and one row per sweep plus ``"pooled"`` (all sweeps' repeats together)
        with Algorithm 1's ``rank``, ``reason``, the chosen and original times. ``curves.attrs["meta"]``
        holds provenance, the parameters and ``results``: the choices, whether they agree
        (``stable``), the largest single-rank steps and the run-to-run noise.
    """
    if choice_pass not in passes:
        raise ValueError(f"choice_pass {choice_pass!r} must be one of the timed passes {list(passes)}")
    params = dict(locals())
    params.pop("progress")
    dev = resolve_device(device)
    started = run_start()  # date, load and commit of the run's start (provenance)
    spec = fig2_spec(weight_shape, input_size, batch, method)
    if method == "tucker2":
        spec.ranks = [1, max(1, int(beta))]  # only beta matters for the range
    ranks = rank_range(spec, alpha=alpha, beta=beta, method=method)
    hi = int(rank_max) if rank_max is not None else ranks[0]
    lo = int(rank_min) if rank_min is not None else ranks[-1]
    if not 1 <= lo < hi:
        raise ValueError(f"rank range needs 1 <= rank_min < rank_max, got {lo}..{hi}")
    ranks = list(range(hi, lo - 1, -1))
    timing = Timing(device=str(dev), threads=threads, dtype=str(dtype), channels_last=channels_last, cache=None,
                    min_run_time=min_run_time, pass_=choice_pass)
    t = timing.resolve()
    frames = []
    for k in range(sweeps):  # sweeps differ in seed, so in the order of their shuffled passes
        df = sweep(spec, ranks=ranks, passes=passes, timing=t, method=method, beta=beta, repeats=repeats,
                   seed=seed + k, progress=progress)
        frames.append(df.assign(sweep=k))
    curves = pd.concat(frames, ignore_index=True)
    curves["keep_last"] = curves["method"] == "keep"
    curves = (curves.sort_values(["sweep", "pass", "keep_last", "rank"], ascending=[True, True, True, False])
              .drop(columns="keep_last").reset_index(drop=True))

    rows, stacks, Ts, checks = [], [], [], []
    if smooth == "consistent" and repeats < 2:
        smooth = "median3"  # one repeat per sweep: no per-repeat pairs to check
    opts = dict(variant=variant, smooth=smooth, multiple=multiple, tie_tol=tie_tol)
    for k, df in curves.groupby("sweep"):
        r, t2, tm, T = curve_arrays(df, choice_pass)
        stacks.append(t2)
        Ts.append(T)
        vt = None
        if verify_top:
            top = top_candidates(r, t2, verify_top, variant, multiple, smooth)
            bench = LayerBench(spec, method, beta, t, seed=seed + k)
            vt = verify_steps(lambda: bench, LayerCurves(spec, method, beta, t, (choice_pass,)), top, verify_rounds)
            checks.append(vt.assign(sweep=k))
        rows.append(_choice(str(k), r, t2, tm, T, vt, opts))
    pooled = np.concatenate(stacks, axis=0)
    vt = None
    if checks:
        allv = pd.concat(checks, ignore_index=True)
        vt = allv.groupby("candidate", as_index=False).agg(above=("above", "first"), ratio=("ratio", "median"),
                                                           ratio_min=("ratio_min", "min"), ratio_max=("ratio_max", "max"),
                                                           faster=("faster", "mean"))
        vt["drop_rel"] = 1 - vt["ratio"]
    rows.append(_choice("pooled", r, pooled, np.median(pooled, axis=0), float(np.median(Ts)), vt, opts))
    choices = pd.DataFrame(rows)
    meta = provenance(dev, started, **{k: v for k, v in params.items() if k != "device"}, requested_device=device)
    meta["threads"] = int(curves["threads"].iloc[0])  # what the sweeps ran with
    meta["results"] = _summary(curves, choices, choice_pass, ranks)
    meta["results"]["verified"] = pd.concat(checks).to_dict("records") if checks else []
    curves.attrs["meta"] = meta
    return curves, choices


def _choice(name, r, t2, tm, T, verified, opts) -> dict[str, Any]:
    rank, why = algorithm1(r, t2, T, verified=verified, **opts)
    t = float(tm[r == rank][0]) if rank is not None else float("nan")
    top = float(tm[np.argmax(r)])
    return {"sweep": name, "rank": rank, "reason": why, "t_chosen_s": t, "t_top_s": top, "t_original_s": T,
            "speedup_vs_top": top / t if rank is not None else float("nan"),
            "speedup_vs_original": T / t if rank is not None else float("nan")}


def _summary(curves: pd.DataFrame, choices: pd.DataFrame, pass_: str, ranks: list[int]) -> dict[str, Any]:
    per = [c for c in choices["rank"][choices["sweep"] != "pooled"]]
    steps = curve_steps(curves[curves["sweep"] == 0], pass_, top=5)
    out: dict[str, Any] = {
        "range": [min(ranks), max(ranks)],
        "choices": [None if pd.isna(c) else int(c) for c in per],
        "pooled_choice": None if pd.isna(choices["rank"].iloc[-1]) else int(choices["rank"].iloc[-1]),
        "stable": len(set(per)) == 1,
        "steps_sweep0": steps.to_dict("records"),
    }
    if curves["sweep"].nunique() >= 2:
        a = curves[(curves["sweep"] == 0) & (curves["pass"] == pass_) & (curves["method"] != "keep")]
        b = curves[(curves["sweep"] == 1) & (curves["pass"] == pass_) & (curves["method"] != "keep")]
        m = a.merge(b, on="rank", suffixes=("_a", "_b")).sort_values("rank")
        ta, tb = m["norm_s_a"].to_numpy(), m["norm_s_b"].to_numpy()
        ta, tb = ta / np.median(ta), tb / np.median(tb)  # shapes: a sweep-wide slowdown is not noise here
        out["run_to_run_rel"] = float(np.median(np.abs(ta - tb) / ((ta + tb) / 2)))
        da, db = (ta[1:] - ta[:-1]) / ta[1:], (tb[1:] - tb[:-1]) / tb[1:]
        out["step_run_to_run_rel"] = float(np.median(np.abs(da - db)))  # noise of one step estimate
        out["steps_sweep1"] = curve_steps(curves[curves["sweep"] == 1], pass_, top=5).to_dict("records")
    return out

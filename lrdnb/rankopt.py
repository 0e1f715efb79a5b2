"""Rank optimization on the device: the rank range and ``optimize_ranks``.

* :func:`rank_range` - the ranks Algorithm 1 searches: from the eq.-5 rank at ``alpha`` down to
  ``R_min``, the rank at ``alpha + 1`` (eq. 6) (Hajimolahoseini et al. 2023, Sec. 2.1).
* :func:`optimize_ranks` - times each distinct layer signature once (:mod:`lrdnb.sweeps`,
  cached) and chooses ranks with :func:`lrdnb.choose.algorithm1` (Algorithm 1) or
  :func:`lrdnb.choose.joint_select` (all layers at once under a time budget); returns a new plan
  whose ``reason`` column explains every choice.

:func:`algorithm1`, :func:`joint_select` and the other curve functions of :mod:`lrdnb.choose`
are re-exported here.
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import ranks as R
from .plan import LayerSpec, Plan
from .cache import as_cache
from .choose import SMOOTHERS, VARIANTS, algorithm1, curve_steps, joint_select, step_table, top_candidates
from .steps import STAIRCASE_REPEATS, staircase_sweep, verify_steps
from .sweeps import per_repeat, sweep

__all__ = ["VARIANTS", "SMOOTHERS", "rank_range", "step_table", "top_candidates", "algorithm1", "curve_steps", "joint_select", "optimize_ranks",
           "runs_channels_last", "parse_setting", "STAIRCASE_REPEATS", "SWEEP_REPEATS"]

#: :func:`optimize_ranks`' default passes over every rank for the exhaustive search (the staircase
#: search's over its coarse grid: :data:`lrdnb.steps.STAIRCASE_REPEATS`).
SWEEP_REPEATS = 2

#: Seconds between writes of the timing cache during a search (and one write at its end).
FLUSH_EVERY = 5.0


def _alpha_eff(spec: LayerSpec, method: str) -> float:
    c, s = spec.in_channels, spec.out_channels
    kk = spec.kernel[0] * spec.kernel[1]
    if method == "tucker2":
        return c * s * kk / R.tucker2_params(c, s, spec.kernel, *spec.ranks)
    return c * kk * s / R.svd_params(c * kk, s, spec.ranks[0])


def rank_range(
    spec: LayerSpec, alpha: float | None = None, beta: float | None = None, method: str | None = None
) -> list[int]:
    """Ranks from ``R`` (compression ``alpha``, eq. 5) down to ``R_min`` (``alpha + 1``, eq. 6).

    For Tucker2 the ranks are ``r1`` (``r2 = floor(beta r1)``); for SVD the eq.-2 rank of the
    ``S x (C k_h k_w)`` unfolding. With ``alpha=None`` the layer's own ranks are ``R`` and
    ``R_min`` is the rank at (its achieved compression + 1): use that for VBMF, quantized or
    hand-set plans.

    Returns:
        Descending list ``[R, R-1, ..., R_min]``.

    Example:
        >>> spec = LayerSpec("c", "conv2d", [512, 512, 3, 3], False, [8, 512, 14, 14], method="tucker2")
        >>> r = rank_range(spec, alpha=2); (r[0], r[-1], len(r))
        (309, 244, 66)
    """
    method = method or spec.method
    c, s = spec.in_channels, spec.out_channels
    kk = spec.kernel[0] * spec.kernel[1]
    if method == "tucker2":
        if beta is None:
            beta = spec.ranks[1] / spec.ranks[0] if len(spec.ranks) == 2 else 1.0
        if alpha is None:
            if len(spec.ranks) != 2:
                raise ValueError(f"{spec.name}: give alpha, or a spec with Tucker2 ranks")
            top, a = spec.ranks[0], _alpha_eff(spec, method)
        else:
            top, a = R.tucker2_rank(c, s, spec.kernel, alpha, beta)[0], alpha
        low = R.tucker2_rank_min(c, s, spec.kernel, a, beta)[0]
    elif method == "svd":
        if alpha is None:
            if len(spec.ranks) != 1:
                raise ValueError(f"{spec.name}: give alpha, or a spec with an SVD rank")
            top, a = spec.ranks[0], _alpha_eff(spec, method)
        else:
            top, a = R.svd_rank(c * kk, s, alpha), alpha
        low = R.svd_rank(c * kk, s, a + 1.0)
    else:
        raise ValueError(f"unknown method {method!r}; valid: 'svd', 'tucker2'")
    low = max(1, min(low, top))
    return list(range(int(top), int(low) - 1, -1))


def _plan_alpha(plan: Plan, spec: LayerSpec) -> float | None:
    """The eq.-5 ratio the plan used for ``spec``, if its ranks are exactly eq. 5's; else None."""
    m = plan.meta
    if m.get("selector", "ratio") != "ratio" or m.get("quantize") or "fixed" in spec.reason:
        return None
    a = m.get("final_fc_ratio") if (m.get("final_fc_ratio") and spec.name == m.get("final_fc")) else m.get("ratio")
    if a is None:
        return None
    try:
        return a if rank_range(spec, alpha=a)[0] == spec.ranks[0] else None
    except ValueError:
        return None


def _curve(df: pd.DataFrame, pass_: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(ranks ascending, per-repeat times [repeats, ranks], median times, T).

    Every time is its ratio to the original layer measured beside it, times one ``T``: rows
    from different sessions (a partly cached curve) are then comparable even if the machine ran
    at another speed when each was measured."""
    here = df["pass"].to_numpy() == pass_  # (numpy, not frame filters: a warm run does this 24 times)
    keep = df["method"].to_numpy() == "keep"
    T = float(df["norm_s"].to_numpy()[here & keep][0])
    sel = np.flatnonzero(here & ~keep)
    ranks = df["rank"].to_numpy(int)[sel]
    order = np.argsort(ranks, kind="stable")
    q = per_repeat({"ratios": df["ratios"].to_numpy()[sel][order]}, "ratios")
    return ranks[order], q * T, np.median(q, axis=0) * T, T


def _error(weight: torch.Tensor, method: str, rk: Sequence[int], memo: dict) -> float:
    key = id(weight)
    if key not in memo:
        from .factors import svd_error_curve, tucker2_error_curve

        memo[key] = tucker2_error_curve(weight) if method == "tucker2" else svd_error_curve(weight)
    table = memo[key]
    return float(table[rk[0], rk[1]] if method == "tucker2" else table[rk[0]])


def _is_channels_last(t: Any) -> bool:
    """A 4-D tensor laid out channels_last (and not also plain contiguous, as 1x1 or C=1 ones are)."""
    return (isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous())


def runs_channels_last(model: nn.Module, example: Any = None) -> bool:
    """Whether ``model`` runs in the channels_last memory format: ``example`` (a batch) is
    channels_last, or a ``Conv2d`` weight with a kernel larger than 1x1 is (what
    ``model.to(memory_format=torch.channels_last)`` does).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3))
        >>> runs_channels_last(m), runs_channels_last(m.to(memory_format=torch.channels_last))
        (False, True)
    """
    if _is_channels_last(example):
        return True
    return any(_is_channels_last(m.weight) for m in model.modules()
               if isinstance(m, nn.Conv2d) and tuple(m.weight.shape[-2:]) != (1, 1))


def optimize_ranks(
    model: nn.Module,
    example: Any,
    plan: Plan,
    device: str | torch.device = "auto",
    pass_: str = "train",
    method: str = "algorithm1",
    budget: float | None = None,
    lam: float | None = None,
    cache: Any = "default",
    variant: str = "paper",
    multiple: int | None = None,
    smooth: str | None = "consistent",
    min_drop: float = 0.02,
    search: str = "auto",
    grid: int = 16,
    verify_top: int = 2,
    verify_rounds: int = 5,
    confirm: float = 0.8,
    sequential: bool = False,
    early_stop: bool = True,
    unanimous: int | None = None,
    tie_tol: float = 0.03,
    tie_z: float = 0.0,
    boundaries: bool = False,
    slower: float | None = 1.1,
    locate: str = "boundary",
    repeats: int | None = None,
    orders: Sequence[str] = ("desc", "asc", "shuffle"),
    min_run_time: float = 0.004,
    reference_every: int = 16,
    alpha: float | str | None = "plan",
    threads: int | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool | str = "auto",
    frozen: Mapping[str, Sequence[str]] | None = None,
    progress: bool = True,
) -> Plan:
    """Optimize the ranks of a plan on the device (Algorithm 1 per layer, or jointly).

    Each distinct (signature, method, rank range) is timed once over the ranks from the eq.-5 rank
    down to eq. 6's ``R_min`` (cached on disk, so repeated layers and repeated runs cost
    nothing), then

    * ``method="algorithm1"``: :func:`algorithm1` per layer on the reference-normalised
      per-repeat curves, choosing among the candidate steps that paired re-timing confirmed
      (:func:`lrdnb.pairs.verify_steps`); the original layer is kept where it is at least as fast.
      With ``search="staircase"`` (the default for Algorithm 1) the candidate steps are found
      coarse to fine (:func:`lrdnb.steps.staircase_sweep`: every ``grid``-th rank, then
      ``verify_top`` of the largest coarse drops located to single ranks - the tile boundary
      tested in pairs first, single probes otherwise) instead of timing
      every rank (``search="exhaustive"``, :func:`lrdnb.sweeps.sweep`: the paper's procedure,
      ~5x more timings; on ResNet-50 here the plans of both are equally fast and small, see
      ``benchmarks/rankopt_cost.py``);
    * ``method="joint"``: :func:`joint_select` over all layers (options: every swept rank and
      keeping the original), error = relative reconstruction error of the layer's *own* weight,
      objective = sum of squared relative errors; ``budget`` (seconds, summed over the
      decomposed layers, ``pass_`` at the plan's batch) defaults to the input plan's time.

    Args:
        model: the model the plan was made for (its weights are read only by ``"joint"``).
        example: the example batch (kept for :func:`lrdnb.decompose`'s call; shapes come from
            the plan).
        plan: a plan from :func:`lrdnb.plan`; layers with method ``"keep"`` stay kept.
        pass_: ``"forward"``, ``"train"`` or ``"step"`` - what to make fast.
        variant, multiple, smooth, min_drop, tie_tol, tie_z, confirm: see :func:`algorithm1`:
            the highest of the confirmed steps whose paired drops are less than ``tie_tol``
            (default 3%) - or, with ``tie_z`` > 0, less than ``tie_z`` standard errors (1.64:
            one-sided 5%) - below the largest is chosen. ``min_drop`` (default 2%):
            a step must save at least this much in its paired re-timing - the per-round noise
            here is ~5%, so a pair that differs only by the FLOP slope (~0.3% per rank) is
            still seen faster in 4 of 5 rounds about one time in four.
        boundaries: staircase search: pair-test every tile boundary whose coarse interval
            dropped, not only the ``verify_top`` located steps (:func:`lrdnb.steps.staircase_sweep`).
            Neither this nor ``tie_z`` made ResNet-50's plans more alike across cold searches on
            this CPU (``benchmarks/plan_stability.py``: steps of 5-10%, ~4% standard error per verification),
            so both are off by default.
        slower: staircase search: a layer whose every coarse rank measured at least this multiple of
            the original's time keeps the original without its steps being located or verified
            (Algorithm 1 would keep it: the chosen rank takes about its coarse interval's time);
            ``None``: always search. On ResNet-50 in NCHW on this CPU that is
            ``layer4.0.downsample.0`` (a 1x1 convolution at 2x2 output pixels, every rank 1.3-1.8x
            the original; kept in 9 of 12 full searches).
        locate: staircase search: ``"boundary"`` takes each coarse drop's tile boundary
            ``lo + 1 -> lo`` as its step (tested in pairs, never searched for inside the interval);
            ``"bisect"`` also locates the step inside the interval with single probes when the
            boundary is not confirmed (:func:`lrdnb.steps.staircase_sweep`). Set ``grid`` to the
            device's tile with ``"boundary"``: it cannot see steps between grid ranks. On ResNet-50
            here ``"boundary"`` searched in 0.75 of ``"bisect"``'s time side by side (median of 6
            rounds per layout, ``data/rankopt_cost_run6``, ``_channels_last_run13``) and its plans
            trained as fast (median of 4 cold plans each, +18.2 vs +14.9% over LRD in
            channels_last, +20.0 vs +20.1% in NCHW; ``data/rankopt_plans_cpu_run7``,
            ``rankopt_plans_cpu_nchw``); ``"bisect"`` had chosen a rank between grid ranks on 2-4
            of 24 signatures per search, mostly small layers (e.g. SVD rank 24 of layer1's 1x1s).
        early_stop: stop re-timing a step once it can no longer be confirmed
            (:func:`lrdnb.pairs.verify_steps`, ``early=confirm``; same verdicts, ~15% fewer rounds).
        unanimous: with ``early_stop``, also stop re-timing a step whose first ``unanimous``
            paired rounds were all faster (3: chance 1/8 for a non-step, stricter than 4 of 5's
            6/32); cheaper, the confirmed drops then rest on fewer rounds.
        sequential: staircase search: verify the located steps one at a time and stop at the
            first confirmed (cheaper; with several equal steps the choice may vary between runs).
        search: ``"auto"`` (staircase for Algorithm 1, exhaustive for joint), ``"staircase"`` or
            ``"exhaustive"``.
        grid: coarse spacing of the staircase search.
        verify_top: re-time this many best candidate steps of each curve in interleaved pairs
            (:func:`lrdnb.pairs.verify_steps`, ``verify_rounds`` rounds) and let only confirmed
            steps compete; ``0`` with ``search="exhaustive", smooth=None, tie_tol=0, min_drop=0``
            is the paper's Algorithm 1 as is.
        repeats: passes over the ranks timed (:func:`lrdnb.sweeps.sweep`): over the coarse grid when
            searching staircases, default 1 there (the located steps are re-timed in paired rounds
            anyway; on ResNet-50 here a second pass cost ~10% more search time and gave plans no
            faster: ``benchmarks/rankopt_plans.py --alt``, README), 2 for the exhaustive search
            (Algorithm 1's ``"consistent"`` smoothing compares the repeats).
        orders, min_run_time, reference_every, threads: see :func:`lrdnb.sweeps.sweep`.
        channels_last: time the layers in the channels_last memory format; ``"auto"`` (default):
            when the model runs in it (:func:`runs_channels_last`: the example batch or a conv
            weight with a spatial kernel is channels_last), so that ranks are chosen for the
            layout they will train in (the step sizes differ: MEASURING.md).
        frozen: factor roles frozen while training, ``{method: roles}`` (e.g. a freezing
            schedule's ``roles_at(epoch)``, regular freezing: ``{"svd": ["first"], "tucker2":
            ["first", "last"]}``): the ``"train"``/``"step"`` passes then time the decomposed
            layers without those factors' weight gradients, as they will train (the original
            layer is timed whole). Default: nothing frozen.
        alpha: ``"plan"`` (the plan's ratio where its ranks are eq. 5's, else each layer's own
            compression), a number, or ``None`` (each layer's own compression).
        dtype: default: the model's parameter dtype.

    Returns:
        A new :class:`~lrdnb.plan.Plan` (the input is not modified): ranks and method changed,
        ``time_original`` / ``time_decomposed`` filled (seconds per call), ``reason`` explaining
        each choice, and ``meta["rank_optimization"]`` recording how (signatures swept,
        timings taken, seconds spent, device).

    Example:
        >>> import torchvision, lrdnb
        >>> m = torchvision.models.resnet18(); x = torch.zeros(2, 3, 32, 32)
        >>> p = optimize_ranks(m, x, lrdnb.plan(m, x), cache=None, repeats=1)  # doctest: +SKIP
    """
    from .provenance import device_name, resolve_device

    if method not in ("algorithm1", "joint"):
        raise ValueError(f"unknown rank optimization method {method!r}; valid: 'algorithm1', 'joint'")
    if search not in ("auto", "staircase", "exhaustive"):
        raise ValueError(f"unknown search {search!r}; valid: 'auto', 'staircase', 'exhaustive'")
    if search == "auto":
        search = "staircase" if method == "algorithm1" else "exhaustive"
    if search == "staircase" and method == "joint":
        raise ValueError("method='joint' needs every rank's time: use search='exhaustive'")
    if repeats is None:  # (a value < 1 is refused by staircase_sweep / sweep)
        repeats = STAIRCASE_REPEATS if search == "staircase" else SWEEP_REPEATS
    t_start = time.perf_counter()
    dev = resolve_device(device)
    if channels_last == "auto":
        channels_last = runs_channels_last(model, example)
    elif not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True, False or 'auto', got {channels_last!r}")
    frozen = {m: tuple(r) for m, r in (frozen or {}).items()}
    if dtype is None:
        p0 = next(model.parameters(), None)
        dtype = p0.dtype if p0 is not None else torch.float32
    new = Plan.from_dict(plan.to_dict())
    specs = new.decomposed
    groups: dict[tuple, list[LayerSpec]] = {}
    ranges: dict[str, list[int]] = {}
    for s in specs:
        a = _plan_alpha(plan, s) if alpha == "plan" else alpha
        ranges[s.name] = rank_range(s, alpha=a)
        beta = s.ranks[1] / s.ranks[0] if s.method == "tucker2" else 0.0
        groups.setdefault((s.timed_signature(pass_), s.method, beta, tuple(ranges[s.name])), []).append(s)

    from tqdm.auto import tqdm

    curves: dict[tuple, pd.DataFrame] = {}
    checked: dict[tuple, pd.DataFrame | None] = {}  # staircase search: its paired verification
    hopeless: set[tuple] = set()  # staircase search: every coarse rank >= slower x the original
    n_timings, n_swept = 0, 0
    store = as_cache(cache)
    # the cache file is rewritten every FLUSH_EVERY seconds and at the end (also on an error or
    # interrupt): once per signature cost ~17 ms x 24 on ResNet-50, 4% of a search
    with store.held(flush_every=FLUSH_EVERY) if store is not None else contextlib.nullcontext():
        for key, members in tqdm(groups.items(), desc="rank optimization", unit="signature", disable=not progress):
            kw = dict(device=dev, threads=threads, dtype=dtype, channels_last=channels_last, repeats=repeats,
                      orders=orders, reference_every=reference_every, min_run_time=min_run_time, cache=store,
                      frozen=frozen.get(key[1], ()), progress=False)
            df = _time_signature(members[0], key, pass_, search, grid, verify_top, verify_rounds, confirm,
                                 sequential, early_stop, unanimous, min_drop, boundaries, slower, locate, kw)
            checked[key] = df.attrs.pop("verified", None)  # (attrs are deep-copied by every pandas operation)
            if df.attrs.pop("hopeless", False):
                hopeless.add(key)
            fresh = df[~df["cached"].astype(bool)]
            n_timings += int(fresh["n"].sum())
            n_swept += int(not fresh.empty)
            curves[key] = df
    by_name = {s.name: key for key, members in groups.items() for s in members}

    info: dict[str, Any] = {}
    if method == "algorithm1":
        n_verified = 0
        for key, members in groups.items():
            r, t2, tm, T = _curve(curves[key], pass_)
            sm = "median3" if smooth == "consistent" and t2.shape[0] < 2 else smooth  # one repeat: no pairs
            if key in hopeless:
                choice = None
                why = (f"Algorithm 1: every coarse rank at least {slower:g}x the original's time (best "
                       f"{min(tm) / T:.2f}x), so no rank beats it: original layer kept, no steps located")
            elif len(r) >= 2:
                vt = None
                if verify_top and search == "staircase":
                    vt = checked[key]  # re-timed in the search's own session
                    n_verified += int((~vt["cached"].astype(bool)).sum())
                elif verify_top:
                    top = top_candidates(r, t2, verify_top, variant, multiple, sm, min_drop)
                    vt = verify_steps(members[0], top, pass_, rounds=verify_rounds, device=dev, threads=threads,
                                      dtype=dtype, channels_last=channels_last, method=key[1],
                                      frozen=frozen.get(key[1], ()), min_run_time=min_run_time, cache=store,
                                      early=confirm if early_stop else None,
                                      unanimous=unanimous if early_stop else None)
                    n_verified += int((~vt["cached"].astype(bool)).sum())
                choice, why = algorithm1(r, t2, T, variant=variant, multiple=multiple, smooth=sm,
                                         min_drop=min_drop, verified=vt, tie_tol=tie_tol, confirm=confirm,
                                         tie_z=tie_z)
            else:
                choice = int(r[0]) if tm[0] < T else None
                why = f"single rank {r[0]} in range; {'faster' if choice else 'not faster'} than original"
            for s in members:
                _set(new, s, choice, why, tm[r == choice][0] if choice else T, T)
        info["steps_verified"] = n_verified
    else:
        info = _joint(new, specs, curves, by_name, model, pass_, budget, lam)
    meta = dict(new.meta)
    meta["rank_optimization"] = {
        "method": method, "pass": pass_, "device": str(dev), "device_name": device_name(dev),
        "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "threads": threads or torch.get_num_threads(),
        "channels_last": channels_last, "frozen": {m: list(r) for m, r in frozen.items() if r},
        "search": search, "grid": grid if search == "staircase" else None, "variant": variant, "smooth": smooth, "multiple": multiple, "min_drop": min_drop, "repeats": repeats,
        "verify_top": verify_top, "verify_rounds": verify_rounds, "confirm": confirm, "early_stop": early_stop, "unanimous": unanimous, "sequential": sequential, "tie_tol": tie_tol,
        "tie_z": tie_z, "boundaries": boundaries if search == "staircase" else None,
        "slower": slower if search == "staircase" else None,
        "locate": locate if search == "staircase" else None,
        "kept_unsearched": sum(len(groups[k]) for k in hopeless),
        "min_run_time": min_run_time, "signatures": len(groups), "signatures_timed": n_swept,
        "timings": n_timings, "seconds": round(time.perf_counter() - t_start, 3), **info,
    }
    new.meta = meta
    return new


def _time_signature(spec, key, pass_, search, grid, verify_top, verify_rounds, confirm, sequential, early_stop,
                    unanimous, min_drop, boundaries, slower, locate, kw) -> pd.DataFrame:
    """One signature's curve: staircase search (steps located and verified) or exhaustive sweep."""
    if search == "staircase":
        return staircase_sweep(spec, ranks=list(key[3]), pass_=pass_, grid=grid, refine=verify_top or 2,
                               verify_rounds=verify_rounds if verify_top else 0,
                               confirm=confirm if sequential else None, early=confirm if early_stop else None,
                               unanimous=unanimous if early_stop else None, min_step=min_drop, slower=slower,
                               locate=locate, boundaries=boundaries and not sequential, **kw)
    return sweep(spec, ranks=list(key[3]), passes=(pass_,), **kw)


def _set(plan: Plan, spec: LayerSpec, choice: int | None, why: str, t_new: float, T: float) -> None:
    why = f"{spec.reason}; {why}" if spec.reason else why
    if choice is None:
        out = spec.with_ranks([], "keep", why)
    else:
        rk = [choice, max(1, int(spec.ranks[1] / spec.ranks[0] * choice))] if spec.method == "tucker2" else [choice]
        out = spec.with_ranks(rk, spec.method, why)
    out.time_original, out.time_decomposed = float(T), float(t_new)
    plan[spec.name] = out


def _joint(plan, specs, curves, by_name, model, pass_, budget, lam) -> dict[str, Any]:
    rows, memo = [], {}
    for s in specs:
        r, _, tm, T = _curve(curves[by_name[s.name]], pass_)
        w = model.get_submodule(s.name).weight
        beta = s.ranks[1] / s.ranks[0] if s.method == "tucker2" else 0.0
        rows.append({"layer": s.name, "rank": 0, "time_s": T, "error": 0.0, "T": T})
        for rk, t in zip(r, tm):
            full = [int(rk), max(1, int(beta * rk))] if s.method == "tucker2" else [int(rk)]
            rows.append({"layer": s.name, "rank": int(rk), "time_s": float(t), "error": _error(w, s.method, full, memo),
                         "T": T})
    table = pd.DataFrame(rows)
    start = {s.name: s.ranks[0] for s in specs}
    t_start = float(sum(table[(table.layer == n) & (table["rank"] == r)]["time_s"].iloc[0] for n, r in start.items()))
    if budget is None and lam is None:
        budget = t_start
    res = joint_select(table, budget=budget, lam=lam, start=start if lam is None else None)
    for s in specs:
        rk = res["ranks"][s.name]
        row = table[(table.layer == s.name) & (table["rank"] == rk)].iloc[0]
        T = float(row["T"])
        if rk == 0:
            why = f"joint (budget {res['budget']:.4g} s): original layer kept (error 0, {T * 1e3:.3g} ms)"
            _set(plan, s, None, why, T, T)
        else:
            why = (f"joint (budget {res['budget']:.4g} s): rank {rk}, rel. error {row['error']:.3f}, "
                   f"{1 - row['time_s'] / T:.0%} faster than original")
            _set(plan, s, rk, why, float(row["time_s"]), T)
    return {"budget_s": res["budget"], "lam": res["lam"], "predicted_time_s": res["time_s"],
            "predicted_error": res["error"], "start_time_s": t_start,
            "start_error": float(sum(table[(table.layer == n) & (table["rank"] == r)]["error"].iloc[0] ** 2
                                     for n, r in start.items())),
            "feasible": res["feasible"]}


def parse_setting(text: str) -> tuple[str, dict]:
    """``"NAME:key=value,key=value"`` (values as Python literals) -> ``(NAME, {key: value})``:
    a named setting of :func:`optimize_ranks`' options, as the benchmarks' ``--alt`` takes it.

    Example:
        >>> parse_setting("lb:locate='boundary',repeats=2")
        ('lb', {'locate': 'boundary', 'repeats': 2})
    """
    name, _, opts = text.partition(":")
    if not name.isidentifier() or not opts:
        raise ValueError(f"--alt wants NAME:key=value[,key=value...], e.g. r1:repeats=1; got {text!r}")
    known = inspect.signature(optimize_ranks).parameters
    out = {}
    for item in opts.split(","):
        k, eq, v = item.partition("=")
        if not eq or k.strip() not in known:
            raise ValueError(f"--alt {text!r}: {k.strip()!r} is not an option of optimize_ranks "
                             f"(e.g. repeats, unanimous, verify_rounds, sequential)")
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return name, out

"""``optimize_ranks``: the ranks of a plan chosen on the device, never slower than the plan.

* ``method="algorithm1"``: Algorithm 1 of Hajimolahoseini et al. 2023 per distinct layer
  signature (:func:`lrdnb.rankopt.staircase.search_layer`);
* ``method="joint"``: every layer at once, least total reconstruction error within a time budget
  (:func:`lrdnb.rankopt.select.joint_select`; the runtime lookup tables of the beyond-FLOPs paper).

Then the contract: the searched plan, the input plan and the input plan's ranks rounded down to
the search grid (rank quantization, the layers-targeted paper) are timed as whole models in paired
rounds; the searched plan is returned where the rounds confirm it is the fastest, else the faster
baseline (:func:`lrdnb.rankopt.verify.check_plans`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import Any, Mapping

import pandas as pd
import torch
from torch import nn

from .. import ranks as R
from .cache import as_cache
from ..factors import svd_error_curve, tucker2_error_curve
from ..spec import LayerSpec, Plan
from .config import RankSearch, ResolvedTiming, Timing
from .select import joint_select
from .staircase import LayerChoice, search_layer
from .sweep import curve_arrays, rank_range, sweep
from .verify import check_plans

__all__ = ["optimize_ranks", "rounded_plan"]

#: Seconds between writes of the timing cache during a search (and one write at its end).
FLUSH_EVERY = 5.0


def optimize_ranks(
    model: nn.Module,
    example: Any,
    plan: Plan,
    method: str = "algorithm1",
    search: RankSearch | Mapping[str, Any] | None = None,
    timing: Timing | Mapping[str, Any] | None = None,
    budget: float | None = None,
    progress: bool = True,
) -> Plan:
    """Choose the ranks of ``plan``'s decomposed layers by timing them on the device.

    Each distinct layer signature is searched once (repeated layers and repeated runs read the
    timing cache). The returned plan is, in the pass it optimizes, not slower than ``plan`` nor
    than ``plan`` with its ranks rounded down to a multiple of ``search.grid``: all three are
    timed as whole models in paired rounds, and the searched plan is returned only where the
    rounds confirm it is faster than both, else the faster of the two (skipped when
    ``search.check_rounds == 0`` or ``example`` is not one tensor).

    Args:
        model: the model the plan was made for (its weights are read only by ``"joint"``).
        example: the example batch (the whole-model check runs on it).
        plan: from :func:`lrdnb.plan`; layers with method ``"keep"`` stay kept.
        method: ``"algorithm1"`` or ``"joint"``.
        search: how to search (:class:`~lrdnb.rankopt.config.RankSearch` or its dict).
        timing: what to time and where (:class:`~lrdnb.rankopt.config.Timing` or its dict).
        budget: ``"joint"`` only: seconds summed over the decomposed layers; default the input
            plan's.

    Returns:
        A new plan (the input is not modified): ranks and methods, ``time_original`` /
        ``time_decomposed`` (seconds per call; ``time_decomposed`` is None for a layer whose rank
        in a returned baseline plan was not timed), a ``reason`` for every choice, and
        ``meta["rank_optimization"]``: settings, signatures, timings, seconds, and ``check``
        (the whole-model comparison and which plan was returned).

    Example:
        >>> import torchvision, lrdnb
        >>> m = torchvision.models.resnet18(); x = torch.zeros(2, 3, 32, 32)
        >>> p = optimize_ranks(m, x, lrdnb.plan(m, x), timing={"cache": None})  # doctest: +SKIP
    """
    if method not in ("algorithm1", "joint"):
        raise ValueError(f"unknown rank optimization method {method!r}; valid: 'algorithm1', 'joint'")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be an lrdnb Plan, got {type(plan).__name__}")
    search = RankSearch.from_dict(search).resolved(method)
    t = Timing.from_dict(timing).resolve(model, example)
    t0 = time.perf_counter()
    groups = _groups(plan, search)
    store = as_cache(t.cache)
    t = replace(t, cache=store)
    new = Plan.from_dict(plan.to_dict())
    with store.held(flush_every=FLUSH_EVERY) if store is not None else contextlib.nullcontext():
        if method == "algorithm1":
            info = _algorithm1(new, groups, search, t, progress)
        else:
            info = _joint(new, groups, search, t, model, budget, progress)
    t_search = time.perf_counter() - t0
    out, check = _contract(model, example, plan, new, search, t)
    out.meta = dict(out.meta) | {"rank_optimization": {
        "method": method, **t.record(), "search": search.to_dict(), **info,
        "signatures": len(groups), "seconds_search": round(t_search, 3),
        "seconds": round(time.perf_counter() - t0, 3), "check": check}}
    return out


def _groups(plan: Plan, search: RankSearch) -> dict[tuple, list[LayerSpec]]:
    """Decomposed layers by (signature, method, beta, rank range): each group is searched once."""
    groups: dict[tuple, list[LayerSpec]] = {}
    for s in plan.decomposed:
        a = _plan_alpha(plan, s) if search.alpha == "plan" else search.alpha
        rng = tuple(rank_range(s, alpha=a))
        groups.setdefault((s.signature, s.input_grad, s.method, R.beta_of(s.ranks), rng), []).append(s)
    return groups


def _plan_alpha(plan: Plan, spec: LayerSpec) -> float | None:
    """The eq.-5 ratio the plan used for ``spec`` if its ranks are exactly eq. 5's, else None."""
    m = plan.meta
    if m.get("selector", "ratio") != "ratio" or m.get("quantize") or "fixed" in spec.reason:
        return None
    a = m.get("final_fc_ratio") if (m.get("final_fc_ratio") and spec.name == m.get("final_fc")) else m.get("ratio")
    try:
        return a if a is not None and rank_range(spec, alpha=a)[0] == spec.ranks[0] else None
    except ValueError:
        return None


def _set(plan: Plan, spec: LayerSpec, rank: int | None, why: str, t_new: float, T: float) -> None:
    why = f"{spec.reason}; {why}" if spec.reason else why
    if rank is None:
        out = spec.with_ranks([], "keep", why)
    else:
        rk = R.tucker2_pair(rank, R.beta_of(spec.ranks), spec.out_channels) if spec.method == "tucker2" else [rank]
        out = spec.with_ranks(rk, spec.method, why)
    out.time_original, out.time_decomposed = float(T), float(t_new)
    plan[spec.name] = out


def _algorithm1(plan: Plan, groups: dict, search: RankSearch, t: ResolvedTiming, progress: bool) -> dict:
    from tqdm.auto import tqdm

    choices: dict[tuple, LayerChoice] = {}
    for key, members in tqdm(groups.items(), desc="rank search", unit="signature", disable=not progress):
        c = choices[key] = search_layer(members[0], key[-1], search, t)
        for s in members:
            _set(plan, s, c.rank, f"Algorithm 1: {c.reason}", c.t_chosen, c.T)
    return {"timings": sum(c.timings for c in choices.values()),
            "signatures_timed": sum(c.timings > 0 for c in choices.values()),
            "kept_original": sum(len(groups[k]) for k, c in choices.items() if c.rank is None)}


def _joint(plan: Plan, groups: dict, search: RankSearch, t: ResolvedTiming, model: nn.Module,
           budget: float | None, progress: bool) -> dict:
    """Joint selection over every swept rank of every layer (keeping the original is an option):
    error = the layer's relative reconstruction error (eq. 3), objective = sum of squares."""
    from tqdm.auto import tqdm

    rows, errors = [], {}
    for key, members in tqdm(groups.items(), desc="rank sweep", unit="signature", disable=not progress):
        df = sweep(members[0], ranks=list(key[-1]), passes=(t.pass_,), timing=t, repeats=search.repeats,
                   progress=False)
        r, _, tm, T = curve_arrays(df, t.pass_)
        for s in members:
            w = model.get_submodule(s.name).weight
            if id(w) not in errors:
                errors[id(w)] = tucker2_error_curve(w) if s.method == "tucker2" else svd_error_curve(w)
            err = errors[id(w)]
            rows.append({"layer": s.name, "rank": 0, "time_s": T, "error": 0.0, "T": T})
            for rk, tt in zip(r, tm):
                e = err[tuple(R.tucker2_pair(int(rk), R.beta_of(s.ranks), s.out_channels))] \
                    if s.method == "tucker2" else err[int(rk)]
                rows.append({"layer": s.name, "rank": int(rk), "time_s": float(tt), "error": float(e), "T": T})
    table = pd.DataFrame(rows)
    start = {s.name: s.ranks[0] for s in plan.decomposed}
    at = table.set_index(["layer", "rank"])
    t_start = float(sum(at.loc[(n, r), "time_s"] for n, r in start.items()))
    res = joint_select(table, budget=t_start if budget is None else budget, start=start)
    for s in list(plan.decomposed):
        rk = res["ranks"][s.name]
        row = at.loc[(s.name, rk)]
        why = (f"joint (budget {res['budget']:.4g} s): " + ("original layer kept (error 0)" if rk == 0 else
               f"rank {rk}, rel. error {row['error']:.3f}, {1 - row['time_s'] / row['T']:.0%} faster than original"))
        _set(plan, s, rk or None, why, float(row["time_s"]), float(row["T"]))
    return {"budget_s": res["budget"], "predicted_time_s": res["time_s"], "predicted_error": res["error"],
            "start_time_s": t_start, "feasible": res["feasible"]}


def rounded_plan(plan: Plan, grid: int) -> Plan:
    """``plan`` with every decomposed layer's ranks rounded down to a multiple of ``grid`` (rank
    quantization, Ahmed et al. 2022); a rank already below ``grid`` stays as it is (rounding it
    up could make the layer larger than the original).

    Example:
        >>> import torchvision, lrdnb
        >>> m = torchvision.models.resnet18(); p = lrdnb.plan(m, torch.zeros(1, 3, 32, 32))
        >>> rounded_plan(p, 16)["layer4.1.conv2"].ranks, p["layer4.1.conv2"].ranks
        ([304, 304], [309, 309])
    """
    out = Plan.from_dict(plan.to_dict())
    for s in plan.decomposed:
        full = [s.in_channels, s.out_channels] if s.method == "tucker2" else \
            [min(s.in_channels * s.kernel[0] * s.kernel[1], s.out_channels)]
        rk = [r if r < grid else R.quantize_rank(r, grid, f) for r, f in zip(s.ranks, full)]
        out[s.name] = s.with_ranks(rk, s.method, f"{s.reason}; ranks rounded down to x{grid}" if s.reason
                                   else f"ranks rounded down to x{grid}")
    return out


def _contract(model: nn.Module, example: Any, plan: Plan, searched: Plan, search: RankSearch,
              t: ResolvedTiming) -> tuple[Plan, dict]:
    """The searched plan where whole-model paired rounds confirm it beats the input plan and its
    grid-rounded ranks, else the faster of those two; the searched plan with a note where no
    check can run."""
    if search.check_rounds == 0:
        return searched, {"skipped": "check_rounds=0"}
    if not isinstance(example, torch.Tensor):
        return searched, {"skipped": "the example is not one tensor (whole-model timing needs model(example))"}
    cands = {"searched": searched, "input": plan, f"rounded_x{search.grid}": rounded_plan(plan, search.grid)}
    t0 = time.perf_counter()
    name, record = check_plans(model, example, cands, "input", t, search.check_rounds, search.confirm)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    if name == "searched":
        return searched, record
    out = Plan.from_dict(cands[name].to_dict())
    out.meta = dict(searched.meta)
    st = record["plans"]
    for s in out.decomposed:
        new = s.with_ranks(s.ranks, s.method, f"{s.reason}; whole-model check returned the {name} plan: the "
                           f"searched plan was not confirmed faster (time / input plan's, median of "
                           f"{record['rounds']} paired rounds: {name} {st[name]['median']:.3f}, searched "
                           f"{st['searched']['median']:.3f})")
        src = searched[s.name]  # the layer times the search measured, where they apply
        new.time_original = src.time_original
        new.time_decomposed = src.time_decomposed if (src.method, src.ranks) == (s.method, s.ranks) else None
        out[s.name] = new
    return out, record

"""Paired re-timing: of a curve's candidate steps, of a layer against the original, and of
whole decomposed models against each other.

A single timing on this machine kind can be 3-7x off (slow episodes, docs/measuring.md), so no
decision of the rank search rests on one: a step ``c + 1 -> c`` is believed, a layer kept
original, or a plan returned only after the two sides were timed round-robin in the same rounds
(:func:`lrdnb.rankopt.measure.paired_rounds`).
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .cache import as_cache, timing_key
from ..spec import Plan
from ..provenance import device_name
from .config import ResolvedTiming
from .measure import LayerBench, benchmark_timer, calls_for, make_runner, paired_rounds, shape_module
from .select import confirmed, contract_choice, paired_table, settled
from .sweep import LayerCurves

__all__ = ["verify_steps", "original_faster", "shape_model", "check_plans"]


def _paired(bench: Callable[[], LayerBench], store: LayerCurves, kind: str, pairs: dict[int, tuple[int, int]], rounds: int,
            confirm: float, min_drop: float) -> dict[int, list[float]]:
    """Per-round ratios of ``pairs`` (``{key: (a, b)}``, ratio ``t(a) / t(b)``), cached ones read
    back and the rest timed on ``bench()`` and stored under ``kind``."""
    have = {c: store.ratios(kind, c) for c in pairs}
    todo = {c: ab for c, ab in pairs.items() if have[c] is None}
    if todo:
        q = bench().pairs(list(todo.values()), rounds, lambda v: settled(v, rounds, confirm, min_drop))
        fresh = {c: q[ab] for c, ab in todo.items()}
        store.add_paired(kind, fresh)
        have.update(fresh)
    return {c: v for c, v in have.items() if v}


def verify_steps(bench: Callable[[], LayerBench], store: LayerCurves, candidates: Sequence[int], rounds: int = 5,
                 confirm: float = 0.8, min_drop: float = 0.0) -> pd.DataFrame:
    """Steps ``c + 1 -> c`` re-timed in pairs: per round ``t(c) / t(c + 1)``; a candidate leaves
    the rotation once its verdict is settled (:func:`lrdnb.rankopt.select.settled`).

    Returns:
        :func:`lrdnb.rankopt.select.paired_table` of the candidates (what
        :func:`lrdnb.rankopt.select.algorithm1` chooses among).
    """
    q = _paired(bench, store, "step", {int(c): (int(c), int(c) + 1) for c in candidates}, rounds, confirm, min_drop)
    return paired_table(q)


def original_faster(bench: Callable[[], LayerBench], store: LayerCurves, rank: int, rounds: int = 5,
                    confirm: float = 0.8) -> tuple[bool, list[float]]:
    """Is the original layer faster than rank ``rank``? Paired rounds of ``t(original) /
    t(rank)``; yes only when confirmed (faster in ``confirm`` of the rounds, median below 1), so
    a load spike during one timing never decides to keep a layer (Algorithm 1's last line)."""
    q = _paired(bench, store, "orig", {int(rank): (0, int(rank))}, rounds, confirm, 0.0).get(int(rank), [])
    return bool(len(q) and confirmed(paired_table({rank: q}), confirm).iloc[0]), q


def shape_model(model: nn.Module, plan: Plan, frozen: Mapping[str, Sequence[str]] | None = None) -> nn.Module:
    """A copy of ``model`` with every decomposed layer of ``plan`` replaced by a module of its
    shapes and arbitrary weights (:func:`lrdnb.rankopt.measure.shape_module`; ``frozen`` factor
    roles without gradients): what the plan costs to run, without decomposing anything."""
    out = copy.deepcopy(model)
    for s in plan.decomposed:
        old = out.get_submodule(s.name)
        new = shape_module(s, s.method, s.ranks, (frozen or {}).get(s.method, ()))
        out.set_submodule(s.name, new.to(device=old.weight.device, dtype=old.weight.dtype))
    return out


def check_plans(model: nn.Module, example: Any, plans: Mapping[str, Plan], reference: str, t: ResolvedTiming,
                rounds: int, confirm: float = 0.8) -> tuple[str, dict[str, Any]]:
    """Time the whole model decomposed by each plan in paired round-robin rounds (the protocol of
    Table 1) and return the name of the plan to use with the comparison: the first plan (the
    searched one) where the rounds confirm it is the fastest, else the fastest of the others
    (:func:`lrdnb.rankopt.select.contract_choice`).

    Plans with identical ranks are timed once. Rounds stop early, after 3, once every two plans
    were on the same side of each other in every round (the order cannot be a coin's), or once
    the first plan can no longer be confirmed faster than the others. The example must be one tensor. The
    per-round ratios are cached (:mod:`lrdnb.rankopt.cache`, under the plans' ranks and the example's
    shape), so a warm run replays the decision.

    Returns:
        ``(name, record)``: ``record`` has ``rounds``, per plan ``{median, min, max, won}`` of
        ``t(plan) / t(reference)``, ``same_as`` for plans that were duplicates, and the winner.
    """
    distinct: dict[str, str] = {}
    sig: dict[tuple, str] = {}
    for name, p in plans.items():
        key = tuple((s.name, s.method, tuple(s.ranks)) for s in p.decomposed)
        distinct[name] = sig.setdefault(key, name)
    names = list(dict.fromkeys(distinct.values()))
    ref = distinct[reference]
    record: dict[str, Any] = {"reference": reference, "same_as": {n: d for n, d in distinct.items() if n != d}}
    if len(names) == 1:
        return names[0], record | {"rounds": 0, "chosen": distinct[names[0]]}
    others = [n for n in names if n != ref]
    store = _CheckStore(t, example, [ref, *others], [plans[n] for n in [ref, *others]])
    ratios = store.read()
    record["cached"] = ratios is not None
    if ratios is None:
        ratios = _time_plans(model, example, {n: plans[n] for n in names}, ref, t, rounds, names[0], confirm)
        store.write(ratios)
    best, stats = contract_choice(ratios, names[0], confirm)
    return best, record | {"rounds": len(ratios[ref]), "plans": stats, "chosen": best}


def _time_plans(model: nn.Module, example: torch.Tensor, plans: Mapping[str, Plan], ref: str, t: ResolvedTiming,
                rounds: int, first: str, confirm: float) -> dict[str, list[float]]:
    """Per plan, per-round ratios ``t(plan) / t(ref)`` of whole-model runs (``ref``'s are 1)."""
    timer = t.timer or benchmark_timer
    runners = {n: make_runner(shape_model(model, p, t.frozen), tuple(example.shape), t.pass_, t.device, t.dtype,
                              t.channels_last, input_requires_grad=False, inputs=example.detach().clone())
               for n, p in plans.items()}
    for fn in runners.values():  # first calls build kernels
        fn()
    number = calls_for(max(timer(fn, 1, t.threads) for fn in runners.values()), t.min_run_time)
    pairs = [(n, ref) for n in plans if n != ref]

    need = int(np.ceil(confirm * rounds - 1e-9))

    def done(q: dict) -> bool:
        r = {a: v for (a, _), v in q.items()} | {ref: [1.0] * len(next(iter(q.values())))}
        lost = max(sum(x >= y for x, y in zip(r[first], r[n])) for n in r if n != first)
        if lost > rounds - need and len(r[ref]) >= 3:  # the first plan can no longer be confirmed the fastest
            return True
        v = list(r.values())  # every two plans on the same side of each other in every round so far
        return len(v[0]) >= 3 and all(max(x / y for x, y in zip(a, b)) < 1 or min(x / y for x, y in zip(a, b)) > 1
                                      for i, a in enumerate(v) for b in v[i + 1:])

    q = paired_rounds(runners, pairs, rounds, timer, number, t.threads, stop=done)
    return {a: v for (a, _), v in q.items()} | {ref: [1.0] * len(q[pairs[0]])}


class _CheckStore:
    """A whole-model check's per-round ratios in the timing cache: one key per (plans' ranks,
    example shape), a row per plan in the order given (the first is the reference)."""

    def __init__(self, t: ResolvedTiming, example: torch.Tensor, names: list[str], plans: list[Plan]) -> None:
        ident = json.dumps([[(s.name, s.method, s.ranks) for s in p.decomposed] for p in plans]
                           + [list(example.shape)])
        self.names, self.store = names, as_cache(t.cache)
        self.key = timing_key(device_name(t.device), t.dtype, t.pass_,
                              "model-check|" + hashlib.sha1(ident.encode()).hexdigest()[:16], t.channels_last,
                              t.threads, ",".join(f"{m}:{'+'.join(r)}" for m, r in sorted(t.frozen.items()) if r))

    def read(self) -> dict[str, list[float]] | None:
        rows = {int(r["rank"]): r for r in self.store.lookup(self.key)} if self.store is not None else {}
        if sorted(rows) != list(range(len(self.names))):
            return None
        return {n: [float(x) for x in str(rows[i]["ratios"]).split(";") if x] for i, n in enumerate(self.names)}

    def write(self, ratios: dict[str, list[float]]) -> None:
        if self.store is not None:
            self.store.add([{"method": "check", "rank": i, "r2": 0, "pass": self.key["pass"],
                             "median_s": float(np.median(ratios[n])), "n": len(ratios[n]),
                             "ratios": ";".join(f"{x:.6g}" for x in ratios[n])} for i, n in enumerate(self.names)],
                           {self.key["pass"]: self.key})

"""The paper's five methods as model variants built from one base model (Tables 1, 3, 4).

| method    | model                                   | training schedule              |
|-----------|-----------------------------------------|--------------------------------|
| original  | the base model                          | all parameters train           |
| lrd       | ``decompose`` at ``ratio`` (eq. 5 / SVD) | all factors train              |
| rank_opt  | ``decompose`` + Algorithm 1 ranks        | all factors train              |
| freezing  | the ``lrd`` model                        | regular freezing (Sec. 2.2)    |
| combined  | the ``rank_opt`` model                   | ``combined_freezing`` schedule |

Rank optimization runs once and serves both ``rank_opt`` and ``combined``. The paper's Table 1
uses regular freezing for "Freezing" and "Combined"; Table 3 calls Combined "rank opt +
sequential freezing" - pass ``combined_freezing="sequential"`` for that.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from .. import rankopt
from ..decompose import apply
from ..freezing import FreezingSchedule, make_schedule
from ..plan import Plan, plan as make_plan

__all__ = ["METHODS", "Variant", "build_variants"]

METHODS = ("original", "lrd", "rank_opt", "freezing", "combined")


@dataclass
class Variant:
    """One method: its model, the plan it was built from (``None`` for original), its schedule."""

    method: str
    model: nn.Module
    plan: Plan | None
    schedule: FreezingSchedule

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_variants(
    model: nn.Module,
    example_input: Any,
    methods: Sequence[str] = METHODS,
    ratio: float = 2.0,
    weights: str = "hosvd",
    freezing: str = "regular",
    combined_freezing: str = "regular",
    optimize_kwargs: dict[str, Any] | None = None,
    **plan_kwargs: Any,
) -> dict[str, Variant]:
    """Build the requested variants of ``model`` (which is left untouched).

    Args:
        methods: any of :data:`METHODS`, in the order wanted.
        ratio: compression ratio for the decomposed variants.
        weights: Tucker2 weight method (``"hosvd"``, ``"hooi"``, or ``"none"`` when only
            speed matters and weights are irrelevant).
        freezing: schedule name for the ``freezing`` variant.
        combined_freezing: schedule name for ``combined``.
        optimize_kwargs: flat settings of :func:`lrdnb.rankopt.optimize_ranks` (:func:`lrdnb.rankopt.split_settings`: device, pass_, cache, grid, ...).
        **plan_kwargs: for :func:`lrdnb.plan` (selector, quantize, mode, include, ...).

    Returns:
        ``{method: Variant}``.

    Raises:
        ValueError: an unknown method name.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {list(METHODS)}")
    out: dict[str, Variant] = {}
    lrd_plan = rank_plan = None
    if {"lrd", "freezing"} & set(methods):
        lrd_plan = make_plan(model, example_input, ratio=ratio, **plan_kwargs)
    if {"rank_opt", "combined"} & set(methods):
        base = lrd_plan or make_plan(model, example_input, ratio=ratio, **plan_kwargs)
        rank_plan = rankopt.optimize_ranks(model, example_input, base, method="algorithm1",
                                           **rankopt.split_settings(optimize_kwargs))
    for m in methods:
        if m == "original":
            out[m] = Variant(m, copy.deepcopy(model), None, make_schedule("none"))
        elif m in ("lrd", "freezing"):
            sched = make_schedule("none" if m == "lrd" else freezing)
            out[m] = Variant(m, apply(model, lrd_plan, weights=weights), lrd_plan, sched)
        else:
            sched = make_schedule("none" if m == "rank_opt" else combined_freezing)
            out[m] = Variant(m, apply(model, rank_plan, weights=weights), rank_plan, sched)
    return out

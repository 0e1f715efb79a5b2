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

Beside them, the baselines a practitioner would try first (:data:`BASELINES`):

| rank_quant          | the ``lrd`` ranks rounded down to a multiple of ``quant_multiple`` (rank quantization, Ahmed et al. 2022) | all factors train |
| rank_quant_freezing | the ``rank_quant`` model                  | ``combined_freezing`` schedule |

``rank_opt`` is compared with ``rank_quant`` and ``combined`` with ``rank_quant_freezing``
(:data:`BASELINE_OF`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from .. import rankopt
from ..decompose import apply
from ..freezing import FreezingSchedule, make_schedule
from ..paper import METHOD_LABELS
from ..plan import plan as make_plan
from ..spec import Plan

__all__ = ["METHODS", "BASELINES", "BASELINE_OF", "LABELS", "Variant", "build_variants"]

#: The paper's five methods.
METHODS = ("original", "lrd", "rank_opt", "freezing", "combined")
#: The one-line baselines: eq.-5 ranks rounded down to a multiple of 16, with and without freezing.
BASELINES = ("rank_quant", "rank_quant_freezing")
#: Which baseline each of our methods is compared with, in the same rounds.
BASELINE_OF = {"rank_opt": "rank_quant", "combined": "rank_quant_freezing"}
#: Row labels: the paper's, and the baselines'.
LABELS = {**METHOD_LABELS, "rank_quant": "Rank quant. (x16)", "rank_quant_freezing": "Rank quant. + Freezing"}


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
    quant_multiple: int = 16,
    **plan_kwargs: Any,
) -> dict[str, Variant]:
    """Build the requested variants of ``model`` (which is left untouched).

    Args:
        methods: any of :data:`METHODS` and :data:`BASELINES`, in the order wanted.
        ratio: compression ratio for the decomposed variants.
        weights: Tucker2 weight method (``"hosvd"``, ``"hooi"``, or ``"none"`` when only
            speed matters and weights are irrelevant).
        freezing: schedule name for the ``freezing`` variant.
        combined_freezing: schedule name for ``combined``.
        optimize_kwargs: flat settings of :func:`lrdnb.rankopt.optimize_ranks` (:func:`lrdnb.rankopt.split_settings`: device, pass_, cache, grid, ...).
        quant_multiple: the rank quantum N of the ``rank_quant`` baselines.
        **plan_kwargs: for :func:`lrdnb.plan` (selector, quantize, mode, include, ...).

    Returns:
        ``{method: Variant}``.

    Raises:
        ValueError: an unknown method name.
    """
    bad = [m for m in methods if m not in METHODS + BASELINES]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {list(METHODS + BASELINES)}")
    lrd_plan = make_plan(model, example_input, ratio=ratio, **plan_kwargs) if set(methods) - {"original"} else None
    plans = {"lrd": lrd_plan, "freezing": lrd_plan}
    if {"rank_opt", "combined"} & set(methods):
        plans["rank_opt"] = plans["combined"] = rankopt.optimize_ranks(
            model, example_input, lrd_plan, method="algorithm1", **rankopt.split_settings(optimize_kwargs))
    if set(BASELINES) & set(methods):
        plans["rank_quant"] = plans["rank_quant_freezing"] = rankopt.rounded_plan(lrd_plan, quant_multiple)
    schedules = {"freezing": freezing, "combined": combined_freezing, "rank_quant_freezing": combined_freezing}
    built: dict[int, nn.Module] = {}  # one decomposition per plan, copied for the variants sharing it
    out: dict[str, Variant] = {}
    for m in methods:
        if m == "original":
            out[m] = Variant(m, copy.deepcopy(model), None, make_schedule("none"))
            continue
        p = plans[m]
        net = copy.deepcopy(built[id(p)]) if id(p) in built else apply(model, p, weights=weights)
        built.setdefault(id(p), net)
        out[m] = Variant(m, net, p, make_schedule(schedules.get(m, "none")))
    return out

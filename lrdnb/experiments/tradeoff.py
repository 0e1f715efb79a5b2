"""The speed / accuracy trade-off of every rank-choice rule, eager and compiled (beyond the paper).

The paper's conclusion names the next step: choose the ranks of the whole model at once, with
the reconstruction error in view. This module puts every rule lrdnb has on the same work, one
*point* per configuration of one reference model:

==============  ==============================================================================
rule            the model
==============  ==============================================================================
original        the reference itself
lrd             eq. 5 / eq. 2 ranks at a compression ratio (:func:`lrdnb.plan`)
rank_quant      those ranks rounded down to a multiple of 16 (rank quantization, layers-targeted
                paper): the one-line baseline
algorithm1      Algorithm 1 (Hajimolahoseini et al. 2023, Sec. 2.1) on this device, in the window
                from an eq.-5 ratio ``a`` to ``a + 1`` (eq. 6); its never-lose check returns the
                input or the rounded plan unless its own plan is confirmed faster
joint           every layer at once: least total squared reconstruction error (eq. 3) within a
                measured time budget, a fraction of the original layers' time (the runtime lookup
                tables of the beyond-FLOPs paper; :func:`lrdnb.rankopt.joint_select`)
+ freezing      regular / sequential freezing (Algorithm 2) on a chosen point
==============  ==============================================================================

For every point: parameters, FLOPs, the training-step and inference speed-up over the original
measured round-robin in the same rounds (paired per round), the same speed-ups with every model
compiled by ``torch.compile`` against the compiled original, and the test accuracy after the same
fine-tuning recipe from the same reference over seeds (:mod:`~lrdnb.experiments.finetune`).
:func:`front` marks the points no other point beats in both accuracy and training speed.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

from .. import rankopt
from ..decompose import apply
from ..freezing import FreezingSchedule, make_schedule
from ..plan import plan as make_plan
from ..provenance import provenance, resolve_device, run_start
from ..rankopt.measure import interleaved_schedules, make_runner, paired_ratios
from ..spec import Plan
from .finetune import FineTune, Job, finals, job_checkpoint, method_stats, run_jobs
from .references import Recipe, train_reference
from .throughput import count_flops, sign_test

__all__ = ["Point", "build_points", "speed_table", "compile_stats", "pair_table", "front", "RULE_LABELS"]

RULE_LABELS = {"original": "Original", "lrd": "LRD (eq. 5)", "rank_quant": "Rank quant. (x16)",
               "algorithm1": "Algorithm 1", "joint": "Joint (error, time budget)", "freezing": "+ freezing"}


@dataclass
class Point:
    """One configuration: ``name`` (unique label), ``rule`` and ``setting`` (ratio, window or
    budget), its model, plan (``None`` for the original) and freezing schedule."""

    name: str
    rule: str
    setting: str
    model: nn.Module
    plan: Plan | None
    schedule: FreezingSchedule
    info: dict[str, Any]

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _joint_plans(model: nn.Module, example: torch.Tensor, base: Plan, budgets: Sequence[float], opt: dict,
                 progress: bool) -> list[tuple[float, Plan]]:
    """Joint selection at each budget (a fraction of the summed original time of ``base``'s
    decomposed layers); the first call sweeps (and caches) every rank, the others reuse it. The
    whole-model check is off: it returns the fastest plan, which would undo an accurate choice
    made within a looser budget; every point's speed is measured anyway."""
    kw = rankopt.split_settings({**opt, "check_rounds": 0, "progress": progress})
    first = rankopt.optimize_ranks(model, example, base, method="joint", **kw)
    t_orig = sum(s.time_original for s in first if s.time_original)
    kw["progress"] = False
    return [(f, rankopt.optimize_ranks(model, example, base, method="joint", budget=f * t_orig, **kw))
            for f in budgets]


def build_points(
    model: nn.Module,
    example: torch.Tensor,
    ratios: Sequence[float] = (1.5, 2.0, 3.0, 4.0),
    quant: int = 16,
    windows: Sequence[float] = (2.0, 1.5),
    budgets: Sequence[float] = (0.5, 0.6, 0.7, 0.8),
    joint_ratio: float = 1.5,
    freeze: str | None = "algorithm1 2x-3x",
    optimize_kwargs: dict[str, Any] | None = None,
    weights: str = "hosvd",
    progress: bool = True,
    **plan_kwargs: Any,
) -> dict[str, Point]:
    """Every point of the trade-off for ``model`` (left untouched).

    Args:
        ratios: compression ratios of the LRD and rank-quantization points.
        quant: the rank quantum of ``rank_quant``.
        windows: eq.-5 ratios ``a`` Algorithm 1 searches from (window ``a`` -> ``a + 1``; the paper: 2).
        budgets: joint selection's time budgets (fractions of the original layers' time).
        joint_ratio: the eq.-5 ratio whose window (to ``joint_ratio + 1``) the joint selection
            chooses in.
        freeze: the point regular and sequential freezing are added to (``None``: none).
        optimize_kwargs: flat :func:`lrdnb.rankopt.optimize_ranks` settings (device, pass_, cache, ...).
        **plan_kwargs: for :func:`lrdnb.plan` (include, exclude, ...).

    Returns:
        ``{name: Point}`` in a fixed order: original, LRD, rank quant., Algorithm 1, joint, freezing.
    """
    opt = {"pass_": "train", **(optimize_kwargs or {})}
    opt.pop("progress", None)
    pts: dict[str, Point] = {"original": Point("original", "original", "-", copy.deepcopy(model), None,
                                               make_schedule("none"), {})}
    plans: dict[tuple[str, str], Plan] = {}
    lrd = {r: make_plan(model, example, ratio=r, **plan_kwargs) for r in sorted(set(ratios) | set(windows) | {joint_ratio})}
    for r in ratios:
        plans[("lrd", f"{r:g}x")] = lrd[r]
    for r in ratios:
        plans[("rank_quant", f"{r:g}x")] = rankopt.rounded_plan(lrd[r], quant)
    for a in windows:
        plans[("algorithm1", f"{a:g}x-{a + 1:g}x")] = rankopt.optimize_ranks(
            model, example, lrd[a], method="algorithm1", **rankopt.split_settings({**opt, "progress": progress}))
    for f, p in (_joint_plans(model, example, lrd[joint_ratio], budgets, opt, progress) if budgets else []):
        plans[("joint", f"{f:g}")] = p
    built: dict[str, nn.Module] = {}
    for (rule, setting), p in plans.items():
        key = p.to_json()
        net = copy.deepcopy(built[key]) if key in built else apply(model, p, weights=weights)
        built.setdefault(key, net)
        ro = p.meta.get("rank_optimization") or {}
        info = {"returned": (ro.get("check") or {}).get("returned"), "budget_s": ro.get("budget_s"),
                "predicted_error": ro.get("predicted_error"), "feasible": ro.get("feasible")}
        name = f"{rule.replace('_', ' ')} {setting}"
        pts[name] = Point(name, rule, setting, net, p, make_schedule("none"), info)
    if freeze is not None:
        if freeze not in pts:
            raise ValueError(f"freeze={freeze!r} is not a point; valid: {list(pts)}")
        base = pts[freeze]
        for sched in ("regular", "sequential"):
            n = f"{freeze} + {sched}"
            pts[n] = Point(n, "freezing", sched, copy.deepcopy(base.model), base.plan, make_schedule(sched),
                           dict(base.info, on=freeze))
    return pts


def _compiled(model: nn.Module, stats: dict[str, Any]) -> nn.Module:
    """``torch.compile`` (inductor) with the count of graphs it compiles recorded in ``stats``."""
    def backend(gm, inputs):
        stats["graphs"] = stats.get("graphs", 0) + 1
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, inputs)

    return torch.compile(model, backend=backend)


@contextlib.contextmanager
def _graphs_per_code(n: int):
    """Let dynamo keep ``n`` compiled graphs of one code object. Every point is a model of the same
    class, so all their graphs hang off one ``forward``; past ``recompile_limit`` (8) dynamo would
    silently run the rest eagerly (and ``fail_on_recompile_limit_hit`` makes that an error here)."""
    import torch._dynamo.config as cfg

    old = (cfg.recompile_limit, cfg.fail_on_recompile_limit_hit)
    cfg.recompile_limit, cfg.fail_on_recompile_limit_hit = max(n, old[0]), True
    try:
        yield
    finally:
        cfg.recompile_limit, cfg.fail_on_recompile_limit_hit = old


def speed_table(points: dict[str, Point], input_shape: Sequence[int], rounds: int = 10, min_run_time: float = 0.3,
                compile: bool = False, device: str = "auto", threads: int | None = 1,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """See :func:`_speed_table`; with ``compile``, dynamo may keep a graph per runner."""
    with _graphs_per_code(4 * len(points) + 8) if compile else contextlib.nullcontext():
        return _speed_table(points, input_shape, rounds, min_run_time, compile, device, threads, progress)


def _speed_table(points: dict[str, Point], input_shape: Sequence[int], rounds: int = 10, min_run_time: float = 0.3,
                 compile: bool = False, device: str = "auto", threads: int | None = 1,
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training-step (forward + backward + SGD momentum) and inference time of every point, round-robin.

    A schedule whose frozen set alternates (sequential freezing) is timed in both phases and the
    two averaged per round. With ``compile`` every model, the original included, is compiled first
    (its compile time and graph count recorded: a phase change that recompiled every epoch would
    show as graphs growing with epochs; :func:`compile_stats` runs that check).

    Returns:
        ``(per_round, table)``: per round, point and pass the time (``round, variant, pass_,
        median_s``, phases averaged) and one row per point and pass: ``point, pass, median_s, speedup`` (median over rounds of the paired ratio
        ``t_original / t``), ``speedup_min``, ``speedup_max``, ``rounds``, and with ``compile``
        ``compile_s``, ``graphs``.
    """
    dev = resolve_device(device)
    comp: dict[tuple[str, str, int], dict[str, Any]] = {}

    def compiled_runner(m: nn.Module, name: str, pass_: str, phase: int):
        st = comp[(name, pass_, phase)] = {}
        run = make_runner(_compiled(m, st), input_shape, pass_, dev, input_requires_grad=False)
        t0 = time.perf_counter()  # the first calls compile: timed apart from the measurement
        run()
        run()
        st["compile_s"] = time.perf_counter() - t0
        return run

    per = interleaved_schedules({n: (p.model, p.schedule) for n, p in points.items()}, input_shape,
                                ("step", "forward"), dev, compiled_runner if compile else None,
                                rounds=rounds, min_run_time=min_run_time, threads=threads, progress=progress)
    rows = []
    for pass_, d in per.groupby("pass_"):
        q = paired_ratios(d, "original").set_index("variant")
        for name in points:
            row = {"point": name, "pass": "train" if pass_ == "step" else "inference",
                   **q.loc[name, ["median_s", "speedup", "speedup_min", "speedup_max", "rounds"]].to_dict()}
            if compile:
                sts = [v for (n, ps, _), v in comp.items() if n == name and ps == pass_]
                row |= {"compile_s": sum(v.get("compile_s", 0) for v in sts), "graphs": sum(v.get("graphs", 0) for v in sts)}
            rows.append(row)
    return per, pd.DataFrame(rows)


def compile_stats(p: Point, input_shape: Sequence[int], epochs: int = 4, device: str = "auto") -> dict[str, Any]:
    """Graphs ``torch.compile`` builds while ``p``'s schedule changes the frozen set every epoch:
    one compiled model, one training step per epoch for ``epochs`` epochs. Graphs stay at one per
    distinct frozen set (dynamo guards on ``requires_grad`` and keeps each graph) when nothing
    recompiles per epoch."""
    dev = resolve_device(device)
    m = copy.deepcopy(p.model).to(dev)
    st: dict[str, Any] = {}
    run = make_runner(_compiled(m, st), input_shape, "step", dev, input_requires_grad=False)
    per_epoch, times = [], []
    torch._dynamo.reset()  # graphs compiled before (other points, same forward) must not count or crowd
    for e in range(epochs):
        p.schedule.apply(m, e)
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        per_epoch.append(st.get("graphs", 0))
    distinct = len({str(p.schedule.roles_at(e)) for e in range(epochs)})
    return {"point": p.name, "epochs": epochs, "frozen_sets": distinct, "graphs_after_epoch": per_epoch,
            "first_step_s": [round(t, 2) for t in times], "recompiles_per_epoch": per_epoch[-1] > distinct}


def pair_table(per_round: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Paired comparison of two points measured in the same rounds (``per_round`` of
    :func:`speed_table`), per pass: ``ratio`` = median of
    ``t_b / t_a`` (> 1: ``a`` faster), rounds ``a`` won, one-sided sign-test p."""
    rows = []
    for a, b in pairs:
        for pass_, d in per_round.groupby("pass_"):
            w = d.pivot_table(index="round", columns="variant", values="median_s")
            if a not in w or b not in w:
                continue
            r = (w[b] / w[a]).dropna()
            wins = int((r > 1).sum())
            rows.append({"a": a, "b": b, "pass": "train" if pass_ == "step" else "inference",
                         "a_faster_by_pct": 100 * (float(r.median()) - 1), "min_pct": 100 * (float(r.min()) - 1),
                         "max_pct": 100 * (float(r.max()) - 1), "a_won": wins, "rounds": int(len(r)),
                         "p_sign": sign_test(wins, len(r)) if len(r) else math.nan})
    return pd.DataFrame(rows)


def front(table: pd.DataFrame, x: str = "train_speedup", y: str = "acc_mean") -> pd.Series:
    """True for the points no other point beats in both ``x`` and ``y`` (higher is better in both)."""
    xs, ys = table[x].to_numpy(float), table[y].to_numpy(float)
    out = []
    for i in range(len(table)):
        dom = ((xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i])))
        out.append(not bool(dom.any()))
    return pd.Series(out, index=table.index)


def cost_columns(points: dict[str, Point], example: torch.Tensor) -> pd.DataFrame:
    """``point, rule, setting, params, params_ratio, flops, flops_ratio`` (forward FLOPs at the
    example's batch, :func:`~lrdnb.experiments.throughput.count_flops`)."""
    base = points["original"]
    f0, p0 = count_flops(base.model, example), base.params()
    rows = []
    for n, p in points.items():
        f = count_flops(p.model, example)
        rows.append({"point": n, "rule": p.rule, "setting": p.setting, "params": p.params(),
                     "params_ratio": p0 / p.params(), "flops": f, "flops_ratio": f0 / f, **p.info})
    return pd.DataFrame(rows)


def tradeoff_table(
    reference: Recipe,
    finetune: FineTune,
    seeds: Sequence[int] = (0, 1),
    workers: int = 1,
    example_batch: int = 32,
    speed_rounds: int = 10,
    speed_min_run_time: float = 0.3,
    compile_points: Sequence[str] | None = (),
    device: str = "auto",
    checkpoint_dir: Any = None,
    reference_dir: Any = None,
    progress: bool = True,
    **point_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Every point's cost, speed (eager and compiled) and accuracy over seeds; the non-dominated front.

    Order of work: the reference (:func:`~lrdnb.experiments.references.train_reference`, cached),
    the points (:func:`build_points`; the rank searches time layers), every speed measurement on
    the quiet machine, and only then the fine-tuning runs (``workers`` processes), so no timing
    shares the CPU with training.

    Args:
        reference, finetune: :class:`~lrdnb.experiments.references.Recipe` and
            :class:`~lrdnb.experiments.finetune.FineTune`, as in the accuracy tables.
        compile_points: points timed compiled too, beside the compiled original (``None``: all).
        **point_kwargs: for :func:`build_points` (ratios, windows, budgets, freeze, optimize_kwargs, include, ...).

    Returns:
        ``(table, pairs, per_seed, meta)``: one row per point (costs, ``train_speedup`` /
        ``infer_speedup`` eager with min-max over rounds, ``*_compiled`` against the compiled
        original, accuracy mean / sd / drop vs the original with its 95% interval, ``on_front``);
        paired speed comparisons of the rules at matched settings; one row per (point, seed); and
        provenance with the compile-graph check of the freezing points.
    """
    dev = resolve_device(device)
    started = run_start()  # date, load and commit of the run's start (provenance)
    ref = train_reference(reference, dev, reference_dir, progress)
    train = reference.data("train", augment=False, subset=finetune.train_subset)
    example = torch.stack([train[i][0] for i in range(min(example_batch, len(train)))]).to(dev)
    opt = {"device": dev, **point_kwargs.pop("optimize_kwargs", {})}
    t0 = time.perf_counter()
    points = build_points(ref.model, example, optimize_kwargs=opt, progress=progress, **point_kwargs)
    search_s = time.perf_counter() - t0
    shape = (finetune.batch_size, *example.shape[1:])
    table = cost_columns(points, example[:1])
    per_round, speed = speed_table(points, shape, speed_rounds, speed_min_run_time, device=dev, progress=progress)
    table = table.merge(_wide(speed, ""), on="point")
    comp = [n for n in points if compile_points is None or n in compile_points or n == "original"]
    compile_info: dict[str, Any] = {}
    if len(comp) > 1:
        _, cs = speed_table({n: points[n] for n in comp}, shape, speed_rounds, speed_min_run_time, compile=True,
                            device=dev, progress=progress)
        table = table.merge(_wide(cs, "_compiled"), on="point", how="left")
        compile_info = {"per_point": cs[["point", "pass", "compile_s", "graphs"]].to_dict("records"),
                        "freezing": [compile_stats(p, shape, device=dev) for p in points.values() if p.rule == "freezing"
                                     and p.name in comp]}
    pairs = pair_table(per_round, _pairs(points))
    key = dict(ref=reference.key(), ft=asdict(finetune))
    jobs = [Job(n, s, copy.deepcopy(p.model).cpu(), p.schedule.to_dict(),
                job_checkpoint(checkpoint_dir, "tradeoff", n.replace(" ", "_"), s, **key, schedule=p.schedule.to_dict(),
                               plan=None if p.plan is None else {x.name: x.ranks for x in p.plan.layers}))
            for s in seeds for n, p in points.items()]
    hist = run_jobs(jobs, reference, finetune, workers, str(dev), progress)
    last = finals(hist)
    st = method_stats(last, against=("original",)).rename(columns={"name": "point"})
    table = table.merge(st, on="point", how="left")
    table["on_front"] = front(table)
    per_seed = last[["name", "seed", "test_acc"]].rename(columns={"name": "point", "test_acc": "acc"})
    meta = provenance(dev, started, experiment="tradeoff", reference=asdict(reference), finetune=asdict(finetune),
                      seeds=list(seeds), workers=workers, example_batch=example_batch, speed_rounds=speed_rounds,
                      speed_min_run_time=speed_min_run_time, compile_points=comp,
                      points={k: (list(v) if isinstance(v, tuple) else v) for k, v in point_kwargs.items()},
                      optimize_kwargs={k: str(v) for k, v in opt.items()})
    meta["results"] = {"reference": ref.info, "search_s": search_s, "compile": compile_info,
                       "plans": {n: None if p.plan is None else p.plan.summary() for n, p in points.items()}}
    return table, pairs, per_seed, meta


def _wide(speed: pd.DataFrame, suffix: str) -> pd.DataFrame:
    out = None
    for pass_, short in (("train", "train"), ("inference", "infer")):
        d = speed[speed["pass"] == pass_].set_index("point")[["speedup", "speedup_min", "speedup_max"]]
        d.columns = [f"{short}_{c}{suffix}" for c in d.columns]
        out = d if out is None else out.join(d)
    return out.reset_index()


def _pairs(points: dict[str, Point]) -> list[tuple[str, str]]:
    """Algorithm 1 against rank quantization from the same eq.-5 ratio (matched parameters up to
    the search's choice); joint points against the rank-quantized plan of the paper's ratio."""
    out = []
    for n, p in points.items():
        if p.rule == "algorithm1":
            base = f"rank quant {p.setting.split('-')[0]}"
            if base in points:
                out.append((n, base))
        if p.rule == "joint" and "rank quant 2x" in points:
            out.append((n, "rank quant 2x"))
    return out

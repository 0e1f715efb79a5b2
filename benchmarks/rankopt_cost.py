"""Cost of rank optimization vs plain decomposition (issue 3; the paper's Table 2: 30 s vs 264 s).

Measures, in one run on this device, for a torchvision model with random weights:

* ``plain``: ``lrdnb.plan`` + ``lrdnb.apply`` (HOSVD weights), timed ``--rounds + 1`` times;
* ``cold``: ``plan`` + ``optimize_ranks(method="algorithm1")`` with an empty timing cache +
  ``apply``, once per round (each round its own empty cache);
* ``warm``: the same again right after, cache filled;

interleaved ``plain, cold, warm, plain, cold, warm, ..., plain`` so that the machine's slow
episodes hit all three alike; ratios are each cold/warm run over the median plain time. Records
distinct layer signatures, timings taken, steps verified, how many layers moved, and which were
kept original (``kept_original``).
``--exhaustive`` adds one cold run of the exhaustive search (every rank, the paper's procedure)
and counts the layers on which both searches chose the same rank. ``--fig2`` runs the staircase
search twice on the paper's [512, 512, 3, 3] layer (14 x 14, batch 8) and records both choices.
``search_over_plain`` is the rank optimization alone over the median plain time (the
cold/warm runs' plan + apply are the plain run's work; a slow episode during them moves
``ratio_to_plain``, not this). ``--alt NAME:key=value,...`` (repeatable) adds, per round, a cold
run with other ``optimize_ranks`` options (and, with ``--fig2``, two more Fig.-2 searches with
them): another setting side by side (column ``setting``: default / NAME). ``--alt-repeats 2`` is
``--alt alt:repeats=2`` (two coarse passes instead of the default one).
Writes ``data/rankopt_cost.csv`` / ``.json`` with provenance (``lrdnb.results``).

Run:  .venv/bin/python benchmarks/rankopt_cost.py --threads 1 [--exhaustive] [--fig2]
Takes ~1.5 min on a quiet 2-core CPU (+1 min with --exhaustive, +15 s with --fig2).
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
import time

import pandas as pd
import torch
import torchvision

import lrdnb
from lrdnb.cache import TimingCache
from lrdnb.provenance import provenance
from lrdnb.rankopt import STAIRCASE_REPEATS, optimize_ranks, parse_setting
from lrdnb.results import write_results


def load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def plain_run(model, x) -> dict:
    t0, c0, la = time.perf_counter(), time.process_time(), load_avg()
    plan = lrdnb.plan(model, x)
    t_plan = time.perf_counter() - t0
    lrdnb.apply(model, plan)
    return {"run": "plain", "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "plan_s": t_plan, "optimize_s": 0.0, "load_before": la, "load_after": load_avg()}


def optimized_run(name, model, x, device, cache_dir, **opt) -> tuple[dict, lrdnb.plan.Plan]:
    t0, c0, la = time.perf_counter(), time.process_time(), load_avg()
    p = lrdnb.plan(model, x)
    t1 = time.perf_counter()
    p2 = optimize_ranks(model, x, p, device=device, method="algorithm1", cache=TimingCache(cache_dir),
                        progress=False, **opt)
    t2 = time.perf_counter()
    small = lrdnb.apply(model, p2)
    info = p2.meta["rank_optimization"]
    # what the chosen ranks buy, from the plan's own measurements (per layer: its ratio to the
    # original layer x that layer's time), and what they keep
    pred = sum((s.time_decomposed if s.method != "keep" else s.time_original) or 0.0 for s in p2
               if s.time_original)
    orig = sum(s.time_original for s in p2 if s.time_original)
    moved = sum(a.ranks != b.ranks for a, b in zip(p.decomposed, (p2[s.name] for s in p.decomposed)))
    kept = [s.name for s in p.decomposed if p2[s.name].method == "keep"]
    return ({"run": name, "search": info["search"], "seconds": time.perf_counter() - t0,
             "cpu_s": time.process_time() - c0, "plan_s": t1 - t0, "optimize_s": t2 - t1,
             "signatures": info["signatures"], "signatures_timed": info["signatures_timed"],
             "timings": info["timings"], "steps_verified": info.get("steps_verified"), "repeats": info["repeats"],
             "layers": len(p.decomposed),
             "layers_moved": moved, "layers_kept_original": len(kept), "kept_original": " ".join(kept),
             "kept_unsearched": info.get("kept_unsearched"),
             "predicted_layer_time_vs_original": pred / orig if orig else float("nan"),
             "params_ratio": sum(q.numel() for q in small.parameters()) / sum(q.numel() for q in model.parameters()),
             "load_before": la, "load_after": load_avg()}, p2)


def same_layers(a: lrdnb.plan.Plan, b: lrdnb.plan.Plan) -> int:
    """How many of ``b``'s layers ``a`` gives the same method and ranks."""
    return sum((a[s.name].method, a[s.name].ranks) == (s.method, s.ranks) for s in b)


def run(model_name: str, size: int, batch: int, device: str, rounds: int, exhaustive: bool,
        alts: dict[str, dict] | None = None, **opt) -> list[dict]:
    """The interleaved plain / cold / warm runs (and, per round, one cold run per ``alts`` setting:
    ``{name: optimize_ranks options}``, column ``setting``)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)()
    x = torch.randn(batch, 3, size, size)
    rows, plans = [plain_run(model, x)], []
    for k in range(rounds):
        with tempfile.TemporaryDirectory() as cache_dir:
            for name in ("cold", "warm"):
                row, p2 = optimized_run(name, model, x, device, cache_dir, **opt)
                rows.append({**row, "round": k, "setting": "default"})
                plans.append(p2)
        for name, alt in (alts or {}).items():
            with tempfile.TemporaryDirectory() as cache_dir:
                row, _ = optimized_run("cold", model, x, device, cache_dir, **{**opt, **alt})
                rows.append({**row, "round": k, "setting": name})
        rows.append(plain_run(model, x))
    if exhaustive:
        with tempfile.TemporaryDirectory() as cache_dir:
            row, p_ex = optimized_run("cold", model, x, device, cache_dir, **{**opt, "search": "exhaustive"})
        rows.append({**row, "round": rounds, "setting": "exhaustive"})
        rows.append(plain_run(model, x))
        for r in rows:
            if r["run"] == "cold" and r.get("setting") == "default":
                p2 = plans[2 * r["round"]]
                r["same_choice_as_exhaustive"] = same_layers(p2, p_ex)
    # plan stability: per cold round, the fraction of layers whose (method, ranks) another round's
    # cold search also chose, averaged over the other rounds
    cold = plans[0::2]
    for r in rows:
        if r["run"] == "cold" and r.get("setting") == "default" and len(cold) > 1:
            k = r["round"]
            r["same_ranks_as_other_rounds"] = statistics.mean(same_layers(cold[k], cold[j]) / len(cold[j])
                                                              for j in range(len(cold)) if j != k)
    plain = statistics.median(r["seconds"] for r in rows if r["run"] == "plain")
    plain_cpu = statistics.median(r["cpu_s"] for r in rows if r["run"] == "plain")
    for r in rows:
        r["ratio_to_plain"] = r["seconds"] / plain
        r["cpu_ratio_to_plain"] = r["cpu_s"] / plain_cpu
        # the rank optimization alone, in units of the plain decomposition: the plan + apply
        # around it are the plain run's own work, whose run-to-run spread (a slow episode during
        # a warm run's apply) is then left out; ratio_to_plain ~ 1 + this
        r["search_over_plain"] = r["optimize_s"] / plain
    return rows


def fig2_check(device: str, **opt) -> dict:
    """Two staircase searches of the paper's Fig.-2 layer: located steps, paired checks, choices."""
    from lrdnb.plan import LayerSpec
    from lrdnb.rankopt import _curve, algorithm1, rank_range
    from lrdnb.steps import staircase_sweep

    spec = LayerSpec("fig2", "conv2d", [512, 512, 3, 3], False, [8, 512, 14, 14], output_shape=[8, 512, 14, 14],
                     padding=[1, 1], method="tucker2", ranks=[309, 309])
    # the settings optimize_ranks uses: its defaults, overridden by the run's options
    o = {k: p.default for k, p in inspect.signature(optimize_ranks).parameters.items()
         if p.default is not inspect.Parameter.empty}
    o.update({k: v for k, v in opt.items() if v is not None})
    o["repeats"] = o["repeats"] or STAIRCASE_REPEATS
    out = []
    for seed in (0, 1):
        t0 = time.perf_counter()
        df = staircase_sweep(spec, ranks=rank_range(spec, alpha=2), pass_="train", grid=o["grid"],
                             refine=o["verify_top"], verify_rounds=o["verify_rounds"],
                             confirm=o["confirm"] if o["sequential"] else None,
                             early=o["confirm"] if o["early_stop"] else None, min_step=o["min_drop"],
                             boundaries=o["boundaries"] and not o["sequential"], locate=o["locate"],
                             repeats=o["repeats"], min_run_time=o["min_run_time"],
                             reference_every=o["reference_every"], channels_last=o["channels_last"],
                             device=device, seed=seed)
        r, t2, _, T = _curve(df, "train")
        sm = "median3" if o["smooth"] == "consistent" and t2.shape[0] < 2 else o["smooth"]
        choice, why = algorithm1(r, t2, T, smooth=sm, verified=df.attrs["verified"], tie_tol=o["tie_tol"],
                                 tie_z=o["tie_z"],
                                 confirm=o["confirm"], min_drop=o["min_drop"])
        v = df.attrs["verified"]
        out.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 2), "steps": df.attrs["steps"],
                    "ranks_timed": sorted(int(x) for x in df[df.method != "keep"]["rank"]),
                    "verified": {int(c): {"ratio": round(float(q), 4), "faster": float(f)}
                                 for c, q, f in zip(v["candidate"], v["ratio"], v["faster"])},
                    "choice": choice, "reason": why})
    return {"sweeps": out, "stable": out[0]["choice"] == out[1]["choice"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=None,
                    help="passes over the coarse grid (default: optimize_ranks' own, 1 for the staircase search)")
    ap.add_argument("--verify-rounds", type=int, default=5, help="paired rounds per located step")
    ap.add_argument("--confirm", type=float, default=0.8, help="fraction of paired rounds that must see the step")
    ap.add_argument("--rounds", type=int, default=2, help="cold/warm pairs (each with its own empty cache)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the whole run (default: torch's); 1 on an oversubscribed machine")
    ap.add_argument("--exhaustive", action="store_true", help="also one cold run timing every rank")
    ap.add_argument("--sequential", action="store_true",
                    help="verify located steps one at a time, stop at the first confirmed (cheaper, less stable)")
    ap.add_argument("--fig2", action="store_true", help="also two staircase searches of the Fig.-2 layer")
    ap.add_argument("--no-early-stop", action="store_true", help="verify every located step for all rounds")
    ap.add_argument("--alt-repeats", type=int, default=0,
                    help="also one cold run per round with this many coarse passes (e.g. 2): --alt alt:repeats=N")
    ap.add_argument("--alt", action="append", default=[], metavar="NAME:key=value,...",
                    help="also one cold run per round with these optimize_ranks options (repeatable), "
                         "e.g. lb:locate='boundary'")
    ap.add_argument("--channels-last", action="store_true",
                    help="time layers in channels_last (the layout Table 1 trains in); default NCHW")
    ap.add_argument("--tie-tol", type=float, default=None,
                    help="optimize_ranks' tie_tol (drops within it of the largest are ties -> highest rank)")
    ap.add_argument("--tie-z", type=float, default=None,
                    help="optimize_ranks' tie_z (drops within this many standard errors of the largest are ties)")
    ap.add_argument("--boundaries", action="store_true",
                    help="pair-test every tile boundary of a dropping coarse interval, not only the located steps")
    ap.add_argument("--locate", choices=["boundary", "bisect"], default=None,
                    help="optimize_ranks' locate (default: its own, boundary)")
    ap.add_argument("--out", default="data")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    opt = dict(repeats=a.repeats, sequential=a.sequential, verify_rounds=a.verify_rounds, confirm=a.confirm,
               early_stop=not a.no_early_stop, channels_last=a.channels_last)
    if a.tie_tol is not None:
        opt["tie_tol"] = a.tie_tol
    if a.tie_z is not None:
        opt["tie_z"] = a.tie_z
    if a.boundaries:
        opt["boundaries"] = True
    if a.locate:
        opt["locate"] = a.locate
    try:
        alts = dict(parse_setting(t) for t in a.alt)
    except ValueError as e:
        ap.error(str(e))
    if "default" in alts or ("alt" in alts and a.alt_repeats):
        ap.error("--alt: 'default' names the default setting (and 'alt' is --alt-repeats'); choose another NAME")
    if a.alt_repeats:
        alts["alt"] = {"repeats": a.alt_repeats}
    rows = run(a.model, a.size, a.batch, a.device, a.rounds, a.exhaustive, alts, **opt)
    df = pd.DataFrame(rows)
    meta = provenance(a.device, model=a.model, size=a.size, batch=a.batch, rounds=a.rounds, weights="random",
                      threads=torch.get_num_threads(), search_default="staircase", alt=alts, **opt)
    meta["paper_table2_s"] = {"resnet50": {"vanilla": 30, "rank_optimization": 264}}
    meta["caveat"] = ("load_before/after is the 1-min load average; ratios use the median of the interleaved "
                      "plain runs")
    if a.fig2:
        meta["fig2_staircase"] = fig2_check(a.device, **opt)
        for name, alt in alts.items():
            meta[f"fig2_staircase_{name}"] = fig2_check(a.device, **{**opt, **alt})
    write_results(df, "rankopt_cost", meta, folder=a.out)
    cols = [c for c in ("run", "search", "setting", "repeats", "round", "seconds", "optimize_s", "ratio_to_plain",
                        "search_over_plain", "timings",
                        "steps_verified", "layers_moved", "layers_kept_original", "same_choice_as_exhaustive",
                        "same_ranks_as_other_rounds",
                        "predicted_layer_time_vs_original", "params_ratio", "load_before") if c in df]
    print(df[cols].to_string(index=False))
    for name in ["fig2_staircase"] + [f"fig2_staircase_{n}" for n in alts]:
        for s in meta.get(name, {}).get("sweeps", []):
            print(name, s["seed"], s["seconds"], "s; steps", s["steps"], "verified", s["verified"], "->", s["choice"])


if __name__ == "__main__":
    main()

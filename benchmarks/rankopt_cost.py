"""Cost of rank optimization vs plain decomposition (issue 3; the paper's Table 2: 30 s vs 264 s).

Measures, in one run on this device, for a torchvision model with random weights:

1. ``plain``: ``lrdnb.plan`` + ``lrdnb.apply`` (HOSVD weights);
2. ``cold``: ``plan`` + ``optimize_ranks(method="algorithm1")`` with an empty timing cache + ``apply``;
3. ``warm``: the same again, cache filled;

and records distinct layer signatures, timings taken, steps verified, how many layers moved, and
the ratios to ``plain``. Optionally (``--fig2``) two independent Fig.-2 sweeps of the paper's
[512, 512, 3, 3] layer: largest single-rank steps vs run-to-run noise and Algorithm 1's choices.
Writes ``data/rankopt_cost.csv`` / ``.json`` with provenance (``lrdnb.results``).

Run:  .venv/bin/python benchmarks/rankopt_cost.py [--model resnet50 --size 64 --batch 8] [--fig2]
Takes ~2-5 min on a quiet 2-core CPU (plus ~4 min with --fig2). Timings on a shared machine are
only indicative: other processes inflate both the plain and the optimized runs.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import pandas as pd
import torch
import torchvision

import lrdnb
from lrdnb.cache import TimingCache
from lrdnb.provenance import provenance
from lrdnb.rankopt import optimize_ranks
from lrdnb.results import write_results


def load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def run(model_name: str, size: int, batch: int, device: str, cache_dir: str, **opt) -> list[dict]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)()
    x = torch.randn(batch, 3, size, size)
    rows = []

    t0, c0, la = time.perf_counter(), time.process_time(), load_avg()
    plan = lrdnb.plan(model, x)
    t_plan = time.perf_counter() - t0
    lrdnb.apply(model, plan)
    rows.append({"run": "plain", "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                 "plan_s": t_plan, "optimize_s": 0.0, "load_before": la, "load_after": load_avg()})
    for name in ("cold", "warm"):
        t0, c0, la = time.perf_counter(), time.process_time(), load_avg()
        p = lrdnb.plan(model, x)
        t1 = time.perf_counter()
        p2 = optimize_ranks(model, x, p, device=device, method="algorithm1", cache=TimingCache(cache_dir),
                            progress=False, **opt)
        t2 = time.perf_counter()
        lrdnb.apply(model, p2)
        info = p2.meta["rank_optimization"]
        moved = sum(a.ranks != b.ranks for a, b in zip(p.decomposed, (p2[s.name] for s in p.decomposed)))
        kept = sum(p2[s.name].method == "keep" for s in p.decomposed)
        rows.append({"run": name, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                     "plan_s": t1 - t0, "optimize_s": t2 - t1,
                     "signatures": info["signatures"], "signatures_timed": info["signatures_timed"],
                     "timings": info["timings"], "steps_verified": info.get("steps_verified"),
                     "layers": len(p.decomposed), "layers_moved": moved, "layers_kept_original": kept,
                     "load_before": la, "load_after": load_avg()})
    # the floor of any exact per-rank sweep: one call of every swept rank (from the cache)
    frames = [pd.read_csv(f) for f in TimingCache(cache_dir).folder.glob("timings_*.csv")]
    if frames:
        t = pd.concat(frames)
        dec = t[t["method"].isin(["svd", "tucker2"])]
        rows[1]["ranks_swept"] = int(len(dec))
        rows[1]["one_call_per_rank_s"] = float(dec["median_s"].sum())
    plain, plain_cpu = rows[0]["seconds"], rows[0]["cpu_s"]
    for r in rows:
        r["ratio_to_plain"] = r["seconds"] / plain
        r["cpu_ratio_to_plain"] = r["cpu_s"] / plain_cpu
    return rows


def fig2_check(device: str) -> dict:
    from lrdnb.experiments.fig2 import step_time_vs_rank

    curves, choices = step_time_vs_rank(device=device, sweeps=2, progress=False)
    res = curves.attrs["meta"]["results"]
    return {"fig2_choices": res["choices"], "fig2_stable": res["stable"], "fig2_pooled": res["pooled_choice"],
            "fig2_run_to_run_rel": res.get("run_to_run_rel"), "fig2_step_noise_rel": res.get("step_run_to_run_rel"),
            "fig2_top_steps": res["steps_sweep0"], "fig2_verified": res["verified"],
            "fig2_reasons": choices["reason"].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the whole run (default: torch's); 1 on an oversubscribed machine")
    ap.add_argument("--fig2", action="store_true", help="also two Fig.-2 sweeps (stability of Algorithm 1)")
    ap.add_argument("--out", default="data")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as cache_dir:
        rows = run(a.model, a.size, a.batch, a.device, cache_dir, repeats=a.repeats)
    df = pd.DataFrame(rows)
    meta = provenance(a.device, model=a.model, size=a.size, batch=a.batch, repeats=a.repeats, weights="random",
                      threads=torch.get_num_threads())
    meta["paper_table2_s"] = {"resnet50": {"vanilla": 30, "rank_optimization": 264}}
    meta["caveat"] = ("shared CPU: load_before/after is the 1-min load average; other processes slow "
                      "plain and optimized runs alike but unevenly")
    if a.fig2:
        meta["fig2"] = fig2_check(a.device)
    write_results(df, "rankopt_cost", meta, folder=a.out)
    print(df.to_string(index=False))
    if a.fig2:
        print({k: v for k, v in meta["fig2"].items() if k != "fig2_verified"})


if __name__ == "__main__":
    main()

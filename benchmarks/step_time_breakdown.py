"""Where a training step's time goes, by op category, for the Table-1 variants (issue 5).

Table 1's Combined reaches ~0.68 of its FLOP-predicted gain on this CPU. The FLOP prediction
applies to convolutions and matrix products only; this benchmark measures, with
``torch.profiler`` (:func:`lrdnb.experiments.optime.op_time_breakdown`), how much of one train
step (forward + backward + SGD momentum, the Table-1 runner) each op category takes for
``original``, ``lrd``, ``rank_opt`` and ``combined`` built exactly as Table 1 builds them
(:func:`lrdnb.experiments.variants.build_variants`, the cpu profile's settings), profiled in
``--rounds`` round-robin rounds (medians printed; every round in the CSV). Profiled
self-times are not wall-clock speed-ups (the profiler adds overhead per op); compare categories
within a variant and across variants, not with Table 1's images/s.
Writes ``out/benchmarks/data/step_time_breakdown_cpu.csv`` / ``.json`` with provenance.

Run:  .venv/bin/python benchmarks/step_time_breakdown.py [--model resnet50 --size 64 --batch 16]
Takes ~3 min on a 2-core CPU (rank optimization included).
"""
from __future__ import annotations

import argparse

import pandas as pd
import torch

from lrdnb.experiments.optime import op_time_breakdown
from lrdnb.experiments.variants import build_variants
from lrdnb.models import get_model
from lrdnb.provenance import provenance
from lrdnb.results import write_results
from lrdnb.rankopt import make_runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=2, help="profiled train steps per variant and round")
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds; medians over rounds are printed")
    ap.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    ap.add_argument("--out", default="out/benchmarks/data", help="results folder (publish with: python -m lrdnb publish out/benchmarks)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cl = not a.nchw
    model = get_model(a.model, num_classes=1000, image_size=a.size).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    methods = ["original", "lrd", "rank_opt", "combined"]
    variants = build_variants(model, x, methods, optimize_kwargs={"threads": a.threads, "channels_last": cl,
                                                                  "progress": False})
    runs = {}
    for m, v in variants.items():
        v.schedule.apply(v.model, epoch=0)
        runs[m] = make_runner(v.model, tuple(x.shape), "step", "cpu", channels_last=cl, input_requires_grad=False)
    rows = []
    for k in range(a.rounds):  # round-robin, rotating order: a slow episode hits every variant alike
        order = methods[k % len(methods):] + methods[:k % len(methods)]
        for m in order:
            df = op_time_breakdown(runs[m], calls=a.calls)
            rows += [{"round": k, "method": m, **r} for r in df.to_dict("records")]
    out = pd.DataFrame(rows)
    wide = out.pivot_table(index="category", columns="method", values="seconds", aggfunc="median")[methods]
    wide = wide.sort_values("original", ascending=False)
    print(f"seconds per train step (profiled self CPU time, median of {a.rounds} round-robin rounds):")
    print((wide * 1e3).round(1).to_string())
    print("\nshare of the step:")
    print((wide / wide.sum()).round(3).to_string())
    print("\nvs original (ratio of profiled seconds):")
    print((wide.div(wide["original"], axis=0)).round(2).to_string())
    meta = provenance("cpu", model=a.model, image_size=a.size, batch=a.batch, threads=a.threads, calls=a.calls, rounds=a.rounds,
                      channels_last=cl, weights="random", pass_="step (forward + backward + SGD momentum)",
                      caveat="torch.profiler self CPU time; the profiler's per-op overhead inflates small ops")
    write_results(out, "step_time_breakdown_cpu", meta, folder=a.out)


if __name__ == "__main__":
    main()

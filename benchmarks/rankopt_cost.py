"""Cost of rank optimization against a plain decomposition (the paper's Table 2: 30 s vs 264 s).

For a torchvision model with random weights, in one run on this device, interleaved
``plain, cold, warm, plain, cold, warm, ..., plain`` so that the machine's slow episodes hit all
three alike:

* ``plain``: ``lrdnb.plan`` + ``lrdnb.apply`` (HOSVD weights);
* ``cold``: ``plan`` + ``optimize_ranks`` with an empty timing cache + ``apply``; its time is
  split into the search (``search_s``) and the final whole-model check (``check_s``);
* ``warm``: the same right after, with the cache it filled.

Each cold / warm time is divided by the median plain time (``ratio_to_plain``). Writes
``out/benchmarks/data/rankopt_cost[_TAG].csv`` / ``.json`` with provenance (``python -m lrdnb publish
out/benchmarks`` makes it the reference in ``data/``).

Run:  .venv/bin/python benchmarks/rankopt_cost.py [--rounds 6] [--channels-last]
Takes ~2-3 min on a quiet 2-core CPU (ResNet-50, 64 px, batch 8).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torchvision

import lrdnb
from lrdnb.provenance import provenance
from lrdnb.results import write_results


def _load() -> float:
    return os.getloadavg()[0]


def plain_run(model, x) -> dict:
    t0, la = time.perf_counter(), _load()
    lrdnb.apply(model, lrdnb.plan(model, x))
    return {"run": "plain", "seconds": time.perf_counter() - t0, "load_before": la, "load_after": _load()}


def optimized_run(name: str, model, x, cache: str, threads: int) -> dict:
    t0, la = time.perf_counter(), _load()
    p = lrdnb.plan(model, x)
    p2 = lrdnb.optimize_ranks(model, x, p, timing={"cache": cache, "threads": threads}, progress=False)
    lrdnb.apply(model, p2)
    info = p2.meta["rank_optimization"]
    chk = info["check"]
    return {"run": name, "seconds": time.perf_counter() - t0, "search_s": info["seconds_search"],
            "check_s": chk.get("seconds", 0.0), "check_rounds": chk.get("rounds", 0),
            "check_chosen": chk.get("chosen", "-"), "signatures": info["signatures"], "timings": info["timings"],
            "layers_kept_original": sum(s.method == "keep" for s in p2 if s.name in {d.name for d in p.decomposed}),
            "layers_moved": sum(p2[s.name].ranks != s.ranks for s in p.decomposed),
            "params_ratio": p2.summary()["params_ratio"], "load_before": la, "load_after": _load()}


def run(model_name: str, size: int, batch: int, rounds: int, threads: int, channels_last: bool) -> list[dict]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)()
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    rows = [plain_run(model, x)]
    for k in range(rounds):
        with tempfile.TemporaryDirectory() as cache:
            for name in ("cold", "warm"):
                rows.append({**optimized_run(name, model, x, cache, threads), "round": k})
        rows.append(plain_run(model, x))
    plain = statistics.median(r["seconds"] for r in rows if r["run"] == "plain")
    for r in rows:
        r["ratio_to_plain"] = r["seconds"] / plain
        r["search_over_plain"] = r.get("search_s", 0.0) / plain
        r["check_over_plain"] = r.get("check_s", 0.0) / plain
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", default="out/benchmarks/data", help="results folder (publish with: python -m lrdnb publish out/benchmarks)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import pandas as pd

    # provenance at the start: its load average is the machine's before the run
    meta = provenance("cpu", model=a.model, size=a.size, batch=a.batch, rounds=a.rounds, threads=a.threads,
                      channels_last=a.channels_last, weights="random")
    df = pd.DataFrame(run(a.model, a.size, a.batch, a.rounds, a.threads, a.channels_last))
    name = "rankopt_cost" + ("_channels_last" if a.channels_last else "")
    write_results(df, name, meta, folder=a.out)
    cols = ["run", "round", "seconds", "ratio_to_plain", "search_over_plain", "check_over_plain", "check_rounds",
            "check_chosen", "timings", "layers_kept_original", "params_ratio", "load_before"]
    print(df[[c for c in cols if c in df]].round(3).to_string(index=False))
    for run_ in ("cold", "warm"):
        d = df[df["run"] == run_]
        print(f"{run_}/plain: median {d['ratio_to_plain'].median():.2f} (min {d['ratio_to_plain'].min():.2f}, "
              f"max {d['ratio_to_plain'].max():.2f}); search {d['search_over_plain'].median():.2f}, "
              f"check {d['check_over_plain'].median():.2f} of plain")
    print(f"wrote {a.out}/{name}.csv/.json")


if __name__ == "__main__":
    main()

"""Table 1 under several input sizes and memory formats (issue 5): which targets hold where.

Runs :func:`lrdnb.experiments.throughput.throughput_table` for one model over a grid of
(image size, batch, channels_last), each configuration a full round-robin run of the five
methods, and collects per configuration: every method's training / inference speed-up over the
original, Combined's fraction of its FLOP-predicted gain, and Rank Opt. vs LRD (median paired
gain, rounds won, one-sided sign test). Writes ``out/benchmarks/data/table1_configs_cpu.csv`` / ``.json`` with
provenance (``lrdnb.results``) and prints the targets per configuration.

Run:  .venv/bin/python benchmarks/table1_configs.py [--model resnet50 --rounds 8 --threads 1]
Takes ~8 min on a quiet 2-core CPU for ResNet-50.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from lrdnb.experiments.throughput import sign_test, throughput_table
from lrdnb.provenance import provenance
from lrdnb.results import write_results

CONFIGS = [(64, 16, False), (64, 16, True), (128, 8, False), (128, 8, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="out/benchmarks/data", help="results folder (publish with: python -m lrdnb publish out/benchmarks)")
    a = ap.parse_args()
    rows, meta_runs = [], []
    for size, batch, cl in CONFIGS:
        t0 = time.perf_counter()
        df, meta = throughput_table([a.model], batch=batch, image_size=size, device=a.device, rounds=a.rounds,
                                    threads=a.threads, channels_last=cl, progress=False)
        meta_runs.append({"image_size": size, "batch": batch, "channels_last": cl, "date": meta["date"],
                          "seconds": round(time.perf_counter() - t0, 1)})
        d = df.set_index("method")
        row = {"image_size": size, "batch": batch, "channels_last": cl,
               "original_train_img_s": d.at["original", "train_img_s"],
               "original_infer_img_s": d.at["original", "infer_img_s"]}
        for m in ("lrd", "rank_opt", "freezing", "combined"):
            row[f"{m}_train_pct"] = d.at[m, "train_delta_pct"]
            row[f"{m}_infer_pct"] = d.at[m, "infer_delta_pct"]
        row["combined_flop_speedup"] = d.at["combined", "train_flop_speedup"]
        row["combined_achieved"] = d.at["combined", "train_achieved"]
        row["flop_time_share"] = d.at["original", "train_flop_time_share"]
        for p in ("train", "infer"):
            wins, n = int(d.at["rank_opt", f"{p}_vs_lrd_wins"]), int(d.at["rank_opt", f"{p}_rounds"])
            row[f"rank_opt_vs_lrd_{p}_pct"] = d.at["rank_opt", f"{p}_vs_lrd_pct"]
            row[f"rank_opt_vs_lrd_{p}_wins"] = f"{wins}/{n}"
            row[f"rank_opt_vs_lrd_{p}_p"] = sign_test(wins, n)
        row["aa_control_infer_pct"] = d.at["freezing", "infer_vs_lrd_pct"]
        rows.append(row)
        print(pd.DataFrame([row]).round(3).T.to_string(header=False), flush=True)
    out = pd.DataFrame(rows)
    meta = provenance(a.device, model=a.model, rounds=a.rounds, threads=a.threads, configs=CONFIGS,
                      weights="random", ratio=2.0)
    meta["runs"] = meta_runs
    meta["targets"] = {"combined_train_pct": 46, "combined_achieved": 0.7, "rank_opt_vs_lrd_sign_p": 0.05}
    write_results(out, f"table1_configs_{'cpu' if a.device in ('auto', 'cpu') else a.device}", meta, folder=a.out)
    cols = ["image_size", "batch", "channels_last", "original_train_img_s", "combined_train_pct", "combined_achieved",
            "rank_opt_vs_lrd_train_pct", "rank_opt_vs_lrd_train_wins", "rank_opt_vs_lrd_infer_pct",
            "rank_opt_vs_lrd_infer_wins", "aa_control_infer_pct"]
    print(out[cols].round(2).to_string(index=False))


if __name__ == "__main__":
    main()

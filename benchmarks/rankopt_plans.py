"""Do cold rank searches return plans that train faster than plain LRD and than the same ranks
rounded down to a multiple of 16 (the one-line baseline)? Measured side by side.

``--plans K`` independent cold searches of ResNet-50 (``lrdnb.optimize_ranks``, each with its own
empty timing cache; Table 1's settings: 64 px, batch 16, 1 thread, channels_last; ``--nchw``:
NCHW), optionally with ``--load N`` CPU-burning processes running beside the searches (a busy
machine; they are stopped before anything is measured). Then the original, the plain LRD model
(eq.-5 ranks at ratio 2: the input plan), the rounded plan (x16) and the K searched plans are
timed round-robin (every round all variants in a rotating order; train = forward + backward +
SGD step, infer = eval forward; each measurement one block of ``--calls`` calls). Per plan:
parameters and FLOPs relative to the original, the median paired speed-up over LRD and over the
rounded plan (min-max), rounds won, the one-sided sign test, and the search's split into search
and whole-model check.

Writes ``out/benchmarks/data/rankopt_plans_TAG.csv``/``.json`` (raw rounds and the plans' ranks in the JSON) and
``out/benchmarks/figures/rankopt_plans_TAG.png`` (``python -m lrdnb publish out/benchmarks``: the reference).

Run:  .venv/bin/python benchmarks/rankopt_plans.py [--plans 3] [--rounds 20] [--load 2]
Takes ~5 min on a quiet 2-core CPU (3 plans, 20 rounds).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time

import pandas as pd
import torch

import lrdnb
from lrdnb.experiments.throughput import count_flops, paired_vs, pass_summary
from lrdnb.models import get_model
from lrdnb.provenance import provenance
from lrdnb.rankopt import interleaved, make_runner, rounded_plan
from lrdnb.results import read_results, save_figure, write_results

PASSES = {"train": "step", "infer": "forward"}


def _burn(stop) -> None:  # one busy core: the background load of a shared machine
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def build(model_name: str, size: int, batch: int, plans: int, threads: int, seed: int, load: int,
          channels_last: bool = True):
    """The models (original, LRD, rounded x16, ``plans`` cold searched plans), the plans, and each
    search's seconds (search, check); ``load`` burner processes run during the searches."""
    torch.manual_seed(seed)
    base = get_model(model_name, image_size=size).eval()
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        base, x = base.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    lrd_plan = lrdnb.plan(base, x, ratio=2)
    found, cost = {}, {}
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(load)]
    for b in burners:
        b.start()
    try:
        for k in range(plans):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                p = lrdnb.optimize_ranks(base, x, lrd_plan, timing={"cache": d, "threads": threads}, progress=False)
                info = p.meta["rank_optimization"]
                found[f"rank_opt_{k + 1}"] = p
                cost[f"rank_opt_{k + 1}"] = {"seconds": time.perf_counter() - t0, "search_s": info["seconds_search"],
                                             "check_s": info["check"].get("seconds", 0.0),
                                             "check_chosen": info["check"].get("chosen", "-")}
    finally:
        stop.set()
        for b in burners:
            b.join()
    plans_ = {"lrd": lrd_plan, "rounded_x16": rounded_plan(lrd_plan, 16), **found}
    models = {"original": base, **{v: lrdnb.apply(base, p, weights="none") for v, p in plans_.items()}}
    return models, plans_, cost


def measure(models: dict, size: int, batch: int, rounds: int, calls: int, threads: int,
            channels_last: bool = True) -> pd.DataFrame:
    shape = (batch, 3, size, size)
    out, raw_all = None, []
    flop_x = torch.randn(2, 3, size, size)
    base = pd.DataFrame({"variant": list(models),
                         "params": [sum(p.numel() for p in m.parameters()) for m in models.values()],
                         "train_flops": [count_flops(m, flop_x, train=True) for m in models.values()],
                         "infer_flops": [count_flops(m, flop_x, train=False) for m in models.values()]})
    for p, runner_pass in PASSES.items():
        runners = {n: make_runner(m, shape, runner_pass, "cpu", channels_last=channels_last, input_requires_grad=False)
                   for n, m in models.items()}
        raw = interleaved(runners, rounds=rounds, device="cpu", threads=threads, progress=True, mode="fixed",
                          number=calls, warmup=1)
        raw_all += [{"pass": p, **r} for r in raw.to_dict("records")]
        s = pass_summary(raw, batch, "original", p)
        s = s.merge(paired_vs(raw, "rounded_x16", p), on="variant")
        out = s if out is None else out.merge(s, on="variant")
    df = base.merge(out, on="variant")
    for c in ("params", "train_flops", "infer_flops"):
        df[f"{c}_ratio"] = df[c] / float(df.loc[df["variant"] == "original", c].iloc[0])
    return df, raw_all


def plot(df: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int((df["variant"] != "original").sum())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4 + 0.12 * n), sharey=True)
    for ax, p in zip(axes, PASSES):
        d = df[df["variant"] != "original"]
        for _, r in d.iterrows():
            colour = {"lrd": "C0", "rounded_x16": "C1"}.get(r["variant"], "C2")
            ax.errorbar(r["train_flops_ratio" if p == "train" else "infer_flops_ratio"], r[f"{p}_vs_lrd_pct"],
                        yerr=[[r[f"{p}_vs_lrd_pct"] - r[f"{p}_vs_lrd_min"]], [r[f"{p}_vs_lrd_max"] - r[f"{p}_vs_lrd_pct"]]],
                        fmt="o" if r["variant"].startswith("rank_opt") else "s", capsize=3, color=colour,
                        label=f"{r['variant']} ({int(r[f'{p}_vs_lrd_wins'])}/{int(r[f'{p}_rounds'])})")
        ax.axhline(0, color="grey", lw=1)
        ax.set_xlabel(f"{p} FLOPs / original")
        ax.set_title(f"{p} (median, min-max of paired rounds)", fontsize=9)
        # below the axes: with several settings the legend would hide points
        ax.legend(fontsize=7, title="faster than LRD in", title_fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.16), ncol=2 if n > 6 else 1)
    axes[0].set_ylabel("% faster than LRD")
    fig.suptitle("ResNet-50 plans of independent cold rank searches vs LRD and x16-rounded ranks", fontsize=10)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--plans", type=int, default=3, help="independent cold rank searches")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=2, help="calls per measurement (Table 1's cpu profile: 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="CPU-burning processes beside the searches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/benchmarks/data", help="results folder (publish with: python -m lrdnb publish out/benchmarks)")
    ap.add_argument("--figures", default="out/benchmarks/figures")
    ap.add_argument("--tag", default=None, help="file name tag (default: cpu[_nchw][_loadN])")
    ap.add_argument("--nchw", action="store_true", help="search and time in NCHW instead of channels_last")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from the written results")
    a = ap.parse_args()
    tag = a.tag or "cpu" + ("_nchw" if a.nchw else "") + (f"_load{a.load}" if a.load else "")
    name = f"rankopt_plans_{tag}"
    if a.replot:
        df, meta = read_results(name, a.out)
        save_figure(plot(df), name, meta, folder=a.figures)
        return
    if a.plans < 1 or a.rounds < 1 or a.calls < 1:
        ap.error("--plans, --rounds and --calls must be >= 1")
    torch.set_num_threads(a.threads)
    cl = not a.nchw
    # provenance at the start: its load average is the machine's before the run
    meta = provenance("cpu", model=a.model, size=a.size, batch=a.batch, plans=a.plans, rounds=a.rounds,
                      calls=a.calls, threads=a.threads, channels_last=cl, load=a.load, weights="random", seed=a.seed)
    models, plans, cost = build(a.model, a.size, a.batch, a.plans, a.threads, a.seed, a.load, channels_last=cl)
    df, raw = measure(models, a.size, a.batch, a.rounds, a.calls, a.threads, channels_last=cl)
    for c in ("search_s", "check_s", "check_chosen"):
        df[c] = df["variant"].map({k: v[c] for k, v in cost.items()})
    meta.update(search=cost, rounds_raw=raw, plans={k: {s.name: [s.method, s.ranks] for s in p} for k, p in plans.items()})
    write_results(df, name, meta, folder=a.out)
    save_figure(plot(df), name, meta, folder=a.figures)
    cols = ["variant", "params_ratio", "train_flops_ratio", "train_delta_pct", "train_vs_lrd_pct", "train_vs_lrd_wins",
            "train_vs_rounded_x16_pct", "train_vs_rounded_x16_wins", "train_vs_rounded_x16_p", "infer_vs_lrd_pct",
            "infer_vs_rounded_x16_pct", "infer_vs_rounded_x16_wins", "search_s", "check_s", "check_chosen"]
    print(df[[c for c in cols if c in df]].round(3).to_string(index=False))
    print(f"wrote {a.out}/{name}.csv/.json and {a.figures}/{name}.png")


if __name__ == "__main__":
    main()

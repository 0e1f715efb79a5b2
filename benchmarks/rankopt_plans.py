"""Is Rank Opt. faster than plain LRD for the plan a cold search gives? (issue 5, Table 1's row)

Cold rank searches on this CPU return different plans (``benchmarks/plan_stability.py``), so
Table 1's Rank Opt. row measures one draw. Here ``--plans K`` independent cold searches of
ResNet-50 (each ``lrdnb.rankopt.optimize_ranks`` with its own empty timing cache, Table 1's
settings: 64 px, batch 16, 1 thread, channels_last; ``--nchw``: NCHW) give K Rank Opt. models, which are timed
round-robin beside the original and the plain LRD model (every round all K + 2 variants in a
rotating order; train = forward + backward + SGD step, infer = eval forward; each measurement one
block of ``--calls`` calls after one warm-up call per variant, as Table 1's ``cpu`` profile).
Per plan: parameters and FLOPs relative to the original, the median paired speed-up over LRD
(min-max), rounds faster than LRD, the one-sided sign test, and the speed-up over the original.

``--alt NAME:key=value,...`` (repeatable) adds ``--plans`` cold plans per other setting of
``optimize_ranks`` (e.g. ``r1:repeats=1``, one coarse pass), their searches interleaved with the
default ones and all plans timed in the same rounds: is a cheaper search's plan as fast?

Writes ``data/rankopt_plans_cpu.csv``/``.json`` (raw rounds and the plans' ranks in the JSON)
and ``figures/rankopt_plans_cpu.png``.

Run:  .venv/bin/python benchmarks/rankopt_plans.py [--plans 4] [--rounds 20] [--alt r1:repeats=1] [--replot]
Takes ~5 min on a quiet 2-core CPU (4 plans, 20 rounds).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd
import torch

import lrdnb
from lrdnb.cache import TimingCache
from lrdnb.experiments.throughput import count_flops, pass_summary, sign_test
from lrdnb.models import get_model
from lrdnb.provenance import provenance
from lrdnb.rankopt import optimize_ranks, parse_setting
from lrdnb.results import read_results, save_figure, write_results
from lrdnb.timing import interleaved, make_runner

PASSES = {"train": "step", "infer": "forward"}


def build(model_name: str, size: int, batch: int, plans: int, threads: int, seed: int,
          settings: dict[str, dict] | None = None, channels_last: bool = True):
    """The models: original, LRD, and ``plans`` cold Rank Opt. plans per setting (``rank_opt``:
    the defaults; the searches of the settings interleaved, so a slow episode hits all alike)."""
    settings = {"rank_opt": {}, **(settings or {})}
    torch.manual_seed(seed)
    base = get_model(model_name, image_size=size).eval()
    x = torch.randn(batch, 3, size, size)
    lrd_plan = lrdnb.plan(base, x, ratio=2)
    found, search_s = {}, {}
    names = list(settings)
    for k in range(plans):
        for name in names[k % len(names):] + names[:k % len(names)]:
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                found[f"{name}_{k + 1}"] = optimize_ranks(base, x, lrd_plan, method="algorithm1", device="cpu",
                                                          threads=threads, channels_last=channels_last,
                                                          cache=TimingCache(d),
                                                          progress=False, **settings[name])
                search_s[f"{name}_{k + 1}"] = time.perf_counter() - t0
    found = {v: found[v] for v in sorted(found, key=lambda v: (names.index(v.rsplit("_", 1)[0]), v))}
    models = {"original": base, "lrd": lrdnb.apply(base, lrd_plan, weights="none")}
    models.update({v: lrdnb.apply(base, p, weights="none") for v, p in found.items()})
    return models, {"lrd": lrd_plan, **found}, search_s


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
        s[f"{p}_vs_lrd_p"] = [sign_test(int(w), int(n)) for w, n in zip(s[f"{p}_vs_lrd_wins"], s[f"{p}_rounds"])]
        out = s if out is None else out.merge(s, on="variant")
    df = base.merge(out, on="variant")
    for c in ("params", "train_flops", "infer_flops"):
        df[f"{c}_ratio"] = df[c] / float(df.loc[df["variant"] == "original", c].iloc[0])
    return df, raw_all


def setting_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per search setting, the median over its plans of: speed-up over LRD (train / infer, %),
    rounds faster than LRD, parameters, and the search's seconds."""
    d = df[~df["setting"].isin(["original", "lrd"])]
    return d.groupby("setting", sort=False).agg(
        plans=("variant", "size"), train_vs_lrd_pct=("train_vs_lrd_pct", "median"),
        train_vs_lrd_wins=("train_vs_lrd_wins", "median"), infer_vs_lrd_pct=("infer_vs_lrd_pct", "median"),
        params_ratio=("params_ratio", "median"), search_s=("search_s", "median"))


def plot(df: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int((df["variant"] != "original").sum())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4 + 0.12 * n), sharey=True)
    for ax, p in zip(axes, PASSES):
        d = df[df["variant"] != "original"]
        settings = list(dict.fromkeys(d["setting"] if "setting" in d else d["variant"]))
        for _, r in d.iterrows():
            colour = f"C{settings.index(r.get('setting', r['variant'])) % 10}" if len(settings) > 2 else None
            ax.errorbar(r["train_flops_ratio" if p == "train" else "infer_flops_ratio"], r[f"{p}_vs_lrd_pct"],
                        yerr=[[r[f"{p}_vs_lrd_pct"] - r[f"{p}_vs_lrd_min"]], [r[f"{p}_vs_lrd_max"] - r[f"{p}_vs_lrd_pct"]]],
                        fmt="s" if r["variant"] == "lrd" else "o", capsize=3, color=colour,
                        label=f"{r['variant']} ({int(r[f'{p}_vs_lrd_wins'])}/{int(r[f'{p}_rounds'])})")
        ax.axhline(0, color="grey", lw=1)
        ax.set_xlabel(f"{p} FLOPs / original")
        ax.set_title(f"{p} (median, min-max of paired rounds)", fontsize=9)
        # below the axes: with several settings the legend would hide points
        ax.legend(fontsize=7, title="faster than LRD in", title_fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.16), ncol=2 if n > 6 else 1)
    axes[0].set_ylabel("% faster than LRD")
    fig.suptitle("ResNet-50 Rank Opt. plans from independent cold searches (this CPU)", fontsize=10)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--plans", type=int, default=4, help="independent cold rank searches")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=2, help="calls per measurement (Table 1's cpu profile: 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="data")
    ap.add_argument("--figures", default="figures")
    ap.add_argument("--tag", default=None, help="file name tag (default: cpu, or cpu_nchw with --nchw)")
    ap.add_argument("--alt", action="append", default=[], metavar="NAME:key=value,...",
                    help="also --plans cold plans with these optimize_ranks options (repeatable), e.g. "
                         "r1:repeats=1 - searched interleaved with the default ones, timed in the same rounds")
    ap.add_argument("--nchw", action="store_true",
                    help="search and time in NCHW (a plain torchvision model's layout) instead of channels_last")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from the written results")
    a = ap.parse_args()
    try:
        alts = dict(parse_setting(t) for t in a.alt)
    except ValueError as e:
        ap.error(str(e))
    if "rank_opt" in alts:
        ap.error("--alt: 'rank_opt' names the default setting; choose another NAME")
    name = f"rankopt_plans_{a.tag or ('cpu_nchw' if a.nchw else 'cpu')}"
    if a.replot:
        df, meta = read_results(name, a.out)
        save_figure(plot(df), name, meta, folder=a.figures)
        return
    if a.plans < 1 or a.rounds < 1 or a.calls < 1:
        ap.error("--plans, --rounds and --calls must be >= 1")
    torch.set_num_threads(a.threads)
    cl = not a.nchw
    models, plans, search_s = build(a.model, a.size, a.batch, a.plans, a.threads, a.seed, alts, channels_last=cl)
    for m in models.values():
        m.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    df, raw = measure(models, a.size, a.batch, a.rounds, a.calls, a.threads, channels_last=cl)
    df.insert(1, "setting", [v if v in ("original", "lrd") else v.rsplit("_", 1)[0] for v in df["variant"]])
    df["search_s"] = df["variant"].map(search_s)
    meta = provenance("cpu", model=a.model, size=a.size, batch=a.batch, plans=a.plans, rounds=a.rounds,
                      calls=a.calls, threads=a.threads, channels_last=cl, weights="random", seed=a.seed)
    meta.update(search_s=search_s, rounds_raw=raw, settings={"rank_opt": {}, **alts},
                plans={k: {s.name: [s.method, s.ranks] for s in p} for k, p in plans.items()})
    write_results(df, name, meta, folder=a.out)
    save_figure(plot(df), name, meta, folder=a.figures)
    cols = ["variant", "params_ratio", "train_flops_ratio", "train_delta_pct", "train_vs_lrd_pct", "train_vs_lrd_wins",
            "train_vs_lrd_p", "infer_vs_lrd_pct", "infer_vs_lrd_wins", "infer_vs_lrd_p"]
    print(df[cols].round(3).to_string(index=False))
    if alts:
        print("per setting (median over its plans):")
        print(setting_summary(df).round(3).to_string())
    print(f"wrote {a.out}/{name}.csv/.json and {a.figures}/{name}.png")


if __name__ == "__main__":
    main()

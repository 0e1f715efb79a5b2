"""How stable are rank-optimized plans across cold searches, and what does stability cost?

Runs ``benchmarks/rankopt_cost.py`` (ResNet-50, 64 px, batch 8, 1 thread, channels_last, each
round a cold search with its own empty timing cache) once per setting of Algorithm 1's
noise handling, then summarises each setting: cold cost as a multiple of the plain
decomposition (median, min-max), how many of the model's layers two cold searches give the same
rank (``same_ranks``: per round, the mean over the other rounds), and the plans' parameter
fraction (min-max). Writes ``<out>/rankopt_cost_<setting>.*`` (one per setting, from
rankopt_cost.py), ``<out>/plan_stability.csv``/``.json`` and ``figures/plan_stability_cpu.png``.

Settings (each a rankopt_cost.py flag set; ``default`` = optimize_ranks' defaults when these
were measured, 2026-12-02/03 - two coarse passes and bisection inside coarse intervals, since then
one pass and tile boundaries only by default; every setting here keeps ``--repeats 2 --locate
bisect`` so that a rerun measures what the committed runs did):

* ``default``: located steps (2 per layer) verified in 5 paired rounds, ties within 3%;
* ``tie_z``: ties also within 1.64 standard errors of the paired drops (``tie_z=1.64``);
* ``tie_z_boundaries``: and every tile boundary of a dropping coarse interval pair-tested;
* ``verify10``: 10 paired rounds per step instead of 5;
* ``highest_step``: every boundary tested, all confirmed steps tie -> the highest confirmed step
  (``tie_tol=1``; departs from Algorithm 1's argmax).

``--noise K`` also re-verifies the steps ``145 -> 144``, ``137 -> 136`` and ``129 -> 128`` of one
layer (Tucker2 [256, 256, 3, 3] at 8x8, batch 8, channels_last, 1 thread - a layer3 shape of
the runs above) in K fresh 5-round paired verifications (new modules, no cache), writing each
drop with its standard error to ``<out>/step_noise.*``: how far one verification's drop is
from the next one's.

Run:  .venv/bin/python benchmarks/plan_stability.py [--rounds 6] [--only default,tie_z] [--summarize-only] [--noise 8]
Takes ~4 min per setting on a quiet 2-core CPU (6 rounds), ~1 min for --noise 8.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from lrdnb.provenance import provenance
from lrdnb.results import read_results, save_figure, write_results

SETTINGS = {
    "default": ["--repeats", "2", "--locate", "bisect"],
    "tie_z": ["--repeats", "2", "--locate", "bisect", "--tie-z", "1.64"],
    "tie_z_boundaries": ["--repeats", "2", "--locate", "bisect", "--tie-z", "1.64", "--boundaries"],
    "verify10": ["--repeats", "2", "--locate", "bisect", "--verify-rounds", "10"],
    "highest_step": ["--repeats", "2", "--locate", "bisect", "--tie-tol", "1", "--boundaries"],
}


def summarize(folder: Path, names: list[str]) -> pd.DataFrame:
    """One row per setting from its ``rankopt_cost_<name>`` results."""
    rows = []
    for name in names:
        try:
            df, meta = read_results(f"rankopt_cost_{name}", folder)
        except FileNotFoundError:
            continue
        cold = df[(df["run"] == "cold") & df["same_ranks_as_other_rounds"].notna()]
        warm = df[df["run"] == "warm"]
        rows.append({"setting": name, "flags": " ".join(SETTINGS.get(name, [])), "rounds": len(cold),
                     "cold_ratio_median": cold["ratio_to_plain"].median(),
                     "cold_ratio_min": cold["ratio_to_plain"].min(), "cold_ratio_max": cold["ratio_to_plain"].max(),
                     "cold_under_3x": int((cold["ratio_to_plain"] < 3).sum()),
                     "warm_ratio_median": warm["ratio_to_plain"].median(),
                     "plain_s_median": df.loc[df["run"] == "plain", "seconds"].median(),
                     "timings_median": cold["timings"].median(), "steps_verified_median": cold["steps_verified"].median(),
                     "same_ranks_mean": cold["same_ranks_as_other_rounds"].mean(),
                     "same_ranks_min": cold["same_ranks_as_other_rounds"].min(),
                     "same_ranks_max": cold["same_ranks_as_other_rounds"].max(),
                     "params_min": cold["params_ratio"].min(), "params_max": cold["params_ratio"].max(),
                     "layer_time_min": cold["predicted_layer_time_vs_original"].min(),
                     "layer_time_max": cold["predicted_layer_time_vs_original"].max(),
                     "date": meta.get("date")})
    return pd.DataFrame(rows)


def step_noise(k: int, rounds: int = 5) -> pd.DataFrame:
    """``k`` independent paired verifications (:func:`lrdnb.pairs.verify_steps`, fresh modules,
    no cache) of three candidate steps of one layer: drop and standard error per verification."""
    import torch

    from lrdnb.pairs import verify_steps
    from lrdnb.plan import LayerSpec

    torch.set_num_threads(1)
    spec = LayerSpec("layer3-shape", "conv2d", [256, 256, 3, 3], False, [8, 256, 8, 8], output_shape=[8, 256, 8, 8],
                     padding=[1, 1], method="tucker2", ranks=[154, 154])
    rows = []
    for i in range(k):
        v = verify_steps(spec, [144, 136, 128], "train", rounds=rounds, channels_last=True, min_run_time=0.004,
                         cache=None)
        rows += [{"verification": i, "step": f"{c + 1}->{c}", "drop": 1 - q, "se": se, "faster": f}
                 for c, q, se, f in zip(v["candidate"], v["ratio"], v["se"], v["faster"])]
    return pd.DataFrame(rows)


def plot(summary: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for _, r in summary.iterrows():
        ax.errorbar(r["cold_ratio_median"], r["same_ranks_mean"],
                    xerr=[[r["cold_ratio_median"] - r["cold_ratio_min"]], [r["cold_ratio_max"] - r["cold_ratio_median"]]],
                    yerr=[[r["same_ranks_mean"] - r["same_ranks_min"]], [r["same_ranks_max"] - r["same_ranks_mean"]]],
                    fmt="o", capsize=3, label=f"{r['setting']} (params {r['params_min']:.3f}-{r['params_max']:.3f})")
    ax.axvline(3.0, color="grey", ls="--", lw=1)
    ax.text(3.0, ax.get_ylim()[0], " issue-3 target: < 3x", color="grey", va="bottom", fontsize=8)
    ax.set_xlabel("cold rank optimization / plain decomposition time (median, min-max)")
    ax.set_ylabel("layers with the same rank as another cold search")
    ax.set_title("ResNet-50 rank optimization: plan stability vs cost (this CPU)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="cold searches per setting")
    ap.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings to run")
    ap.add_argument("--summarize-only", action="store_true", help="only summarise results already in --out")
    ap.add_argument("--noise", type=int, default=0, help="also K fresh verifications of one layer's steps")
    ap.add_argument("--out", default="data/plan_stability")
    ap.add_argument("--figures", default="figures")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n]
    bad = [n for n in names if n not in SETTINGS]
    if bad:
        sys.exit(f"unknown setting(s) {bad}; valid: {', '.join(SETTINGS)}")
    out = Path(a.out)
    here = Path(__file__).resolve().parent
    if not a.summarize_only:
        for i, name in enumerate(names, 1):
            print(f"[plan_stability] {i}/{len(names)} {name}: rankopt_cost.py {' '.join(SETTINGS[name])}", flush=True)
            tmp = out / f".{name}"
            subprocess.run([sys.executable, str(here / "rankopt_cost.py"), "--threads", "1", "--channels-last",
                            "--rounds", str(a.rounds), *SETTINGS[name], "--out", str(tmp)], check=True)
            for ext in ("csv", "json"):  # finished settings are kept even if a later one is interrupted
                (tmp / f"rankopt_cost.{ext}").replace(out / f"rankopt_cost_{name}.{ext}")
            tmp.rmdir()
    if a.noise:
        noise = step_noise(a.noise)
        write_results(noise, "step_noise", provenance("cpu", layer="tucker2 [256, 256, 3, 3] ranks 154, 8x8",
                                                      batch=8, threads=1, channels_last=True, rounds=5,
                                                      min_run_time=0.004, verifications=a.noise), folder=out)
        print(noise.groupby("step")[["drop", "se"]].agg(["min", "median", "max"]).round(3).to_string())
    summary = summarize(out, list(SETTINGS))
    if summary.empty:
        sys.exit(f"no rankopt_cost_<setting> results in {out}: run without --summarize-only first")
    meta = provenance("cpu", model="resnet50", size=64, batch=8, threads=1, channels_last=True,
                      settings={k: SETTINGS[k] for k in summary["setting"]},
                      source=f"{out}/rankopt_cost_<setting>.json (each with its own provenance)")
    write_results(summary, "plan_stability", meta, folder=out)
    save_figure(plot(summary), "plan_stability_cpu", meta, folder=a.figures)
    cols = ["setting", "cold_ratio_median", "cold_ratio_min", "cold_ratio_max", "cold_under_3x", "same_ranks_mean",
            "same_ranks_min", "same_ranks_max", "params_min", "params_max"]
    print(summary[cols].round(3).to_string(index=False))
    print(f"[plan_stability] wrote {out}/plan_stability.csv/.json and {a.figures}/plan_stability_cpu.png")


if __name__ == "__main__":
    main()

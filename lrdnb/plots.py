"""Plots of the experiments' DataFrames (matplotlib; no computation beyond reshaping).

Each function takes the table an :mod:`lrdnb.experiments` function returned and gives back a
``matplotlib.figure.Figure``; notebooks save it with :func:`lrdnb.results.save_figure`.
Functions are self-contained (one per paper artifact) and appended by their authors.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .paper import FIG3, METHOD_LABELS

__all__ = ["plot_throughput", "plot_decomposition_time"]


def plot_throughput(
    ours: pd.DataFrame,
    paper: pd.DataFrame | None = None,
    passes: Sequence[str] = ("train", "infer"),
    title: str | None = None,
):
    """Table 1 as bars: speed-up (%) over the original per method, ours (with min-max whiskers
    from the per-round paired ratios) beside the paper's, one panel per (pass, model).

    Args:
        ours: :func:`lrdnb.experiments.throughput.throughput_table`'s table.
        paper: :func:`lrdnb.paper.table1` (or ``None`` for ours only).
        passes: which of ``train`` / ``infer`` to show (those present in ``ours``).
    """
    passes = [p for p in passes if f"{p}_delta_pct" in ours]
    models = list(dict.fromkeys(ours["model"]))
    fig, axes = plt.subplots(len(passes), len(models), figsize=(4.2 * len(models), 3.2 * len(passes)),
                             squeeze=False, sharey="row")
    for i, p in enumerate(passes):
        for j, m in enumerate(models):
            ax = axes[i, j]
            d = ours[ours["model"] == m]
            x = np.arange(len(d))
            med = d[f"{p}_delta_pct"].to_numpy()
            err = np.vstack([med - d[f"{p}_delta_min"].to_numpy(), d[f"{p}_delta_max"].to_numpy() - med])
            w = 0.4 if paper is not None else 0.7
            ax.bar(x - (w / 2 if paper is not None else 0), med, w, yerr=err, capsize=3,
                   label="ours: median (whiskers: min-max over rounds)", color="tab:blue")
            if paper is not None:
                pp = paper[paper["model"] == m].set_index("method")
                vals = [pp[f"{p}_delta_pct"].get(k, np.nan) for k in d["method"]]
                ax.bar(x + w / 2, vals, w, label="paper (V100)", color="tab:gray")
            if f"{p}_flop_speedup" in d:
                ax.scatter(x, 100 * (d[f"{p}_flop_speedup"].to_numpy() - 1), marker="_", s=300, color="tab:red",
                           zorder=3, label="FLOP-predicted")
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xticks(x, d["label"] if "label" in d else d["method"], rotation=30, ha="right")
            ax.set_title(f"{m}: {'training' if p == 'train' else 'inference'}")
            if j == 0:
                ax.set_ylabel("speed-up over original (%)")
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle((title + "\n" if title else "") + "bars: median of per-round paired ratios of round-robin "
                 "timing; whiskers: min-max over the rounds", fontsize=10)
    fig.tight_layout()
    return fig


def plot_decomposition_time(ours: pd.DataFrame, paper: pd.DataFrame | None = None, title: str | None = None):
    """Table 2 as grouped bars: seconds to decompose per model, ours (solid) and the paper's (hatched,
    same colour per method), log scale, legend beside the axes."""
    names = {"lrd_hosvd_s": f"{METHOD_LABELS['lrd']} (HOSVD)", "lrd_hooi_s": f"{METHOD_LABELS['lrd']} (HOOI)",
             "rank_opt_cold_s": f"{METHOD_LABELS['rank_opt']}, cold cache",
             "rank_opt_warm_s": f"{METHOD_LABELS['rank_opt']}, warm cache", "freezing_s": METHOD_LABELS["freezing"]}
    colors = {"lrd_hosvd_s": "tab:blue", "lrd_hooi_s": "tab:cyan", "rank_opt_cold_s": "tab:red",
              "rank_opt_warm_s": "tab:pink", "freezing_s": "tab:green"}
    models = list(ours["model"])
    series = [(names[c], ours[c].to_numpy(float), colors[c], None) for c in names if c in ours]
    if paper is not None:
        pp = paper.set_index("model").reindex(models)
        series += [(f"paper: {METHOD_LABELS[k]}", pp[f"{k}_s"].to_numpy(float), colors[col], "//")
                   for k, col in (("lrd", "lrd_hosvd_s"), ("rank_opt", "rank_opt_cold_s"), ("freezing", "freezing_s"))
                   if f"{k}_s" in pp]
    fig, ax = plt.subplots(figsize=(min(12.0, 4.0 + 0.3 * len(series) * len(models)), 3.8))
    x = np.arange(len(models))
    w = 0.8 / len(series)
    for k, (name, vals, color, hatch) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * w, vals, w, label=name, color=color, hatch=hatch,
               edgecolor="white" if hatch else None, alpha=0.6 if hatch else 1.0)
    ax.set_yscale("log")
    ax.set_xticks(x, models)
    ax.set_ylabel("decomposition time (s)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_convergence(
    df: pd.DataFrame,
    summary: pd.DataFrame | None = None,
    start_acc: float | None = None,
    reference_acc: float | None = None,
    title: str | None = None,
):
    """Fig. 3: test accuracy per fine-tuning epoch, one line per freezing schedule, and (with
    ``summary``) epochs to the target accuracy beside the paper's.

    Colours follow the paper (sequential black, regular red). With ``summary``
    (:func:`lrdnb.experiments.fig3.summarize`) the target accuracy is drawn, the epoch each
    schedule first reaches it is marked, and a second panel compares the epochs to the target,
    as a fraction of the fine-tuning budget, with the paper's (95% on CIFAR-10, 30 epochs).

    Args:
        df: :func:`lrdnb.experiments.fig3.freezing_convergence`'s table (``schedule``,
            ``epochs_done``, ``test_acc``).
        summary: per-schedule summary with ``target_acc`` and ``epochs_to_target``.
        start_acc: accuracy right after decomposition, drawn at epoch 0 for every schedule.
        reference_acc: accuracy of the undecomposed model, drawn as a horizontal line.
    """
    colors = {"sequential": "black", "regular": "tab:red", "none": "tab:blue"}
    with_paper = summary is not None and len(summary) and "paper_epochs_to_target" in summary
    fig, axes = plt.subplots(1, 2 if with_paper else 1, figsize=(10.5 if with_paper else 6.4, 4.0), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if with_paper else None)
    ax = axes[0, 0]
    for name, d in df.groupby("schedule", sort=False):
        d = d.sort_values("epochs_done")
        x, y = d["epochs_done"].tolist(), (100 * d["test_acc"]).tolist()
        if start_acc is not None:
            x, y = [0] + x, [100 * start_acc] + y
        ax.plot(x, y, marker="o", ms=3, color=colors.get(name), label=f"{name} freezing")
    if reference_acc is not None:
        ax.axhline(100 * reference_acc, color="tab:green", lw=0.8, label=f"undecomposed {100 * reference_acc:.2f}%")
    if summary is not None and len(summary):
        target = 100 * float(summary["target_acc"].iloc[0])
        ax.axhline(target, color="gray", ls="--", lw=0.8, label=f"target {target:.2f}%")
        for _, r in summary.iterrows():
            if np.isfinite(r["epochs_to_target"]):
                ax.axvline(r["epochs_to_target"], color=colors.get(r["schedule"]), ls=":", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("fine-tuning epoch (0 = right after decomposition)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    if with_paper:
        _epochs_to_target_panel(axes[0, 1], summary, colors)
    fig.tight_layout()
    return fig


def _epochs_to_target_panel(ax, summary: pd.DataFrame, colors: dict) -> None:
    s = summary.set_index("schedule").reindex([k for k in ("sequential", "regular") if k in set(summary["schedule"])])
    budget = s["epochs"].astype(float) if "epochs" in s else pd.Series(np.nan, index=s.index)
    ours = s["epochs_to_target"].astype(float) / budget
    theirs = s["paper_epochs_to_target"].astype(float) / FIG3["epochs"]
    x = np.arange(len(s))
    for dx, vals, n, label, hatch in ((-0.2, ours, s["epochs_to_target"], "ours", None),
                                      (0.2, theirs, s["paper_epochs_to_target"], "paper (V100)", "//")):
        bars = ax.bar(x + dx, vals, 0.4, color=[colors.get(k) for k in s.index], hatch=hatch,
                      edgecolor="white" if hatch else None, alpha=0.55 if hatch else 1.0, label=label)
        for b, e in zip(bars, n):
            if np.isfinite(b.get_height()):
                ax.annotate(f"{e:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            fontsize=8)
    ax.set_xticks(x, [f"{k} freezing" for k in s.index])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("epochs to target / epochs fine-tuned")
    ax.set_title(f"epochs to target (labels); paper: {100 * FIG3['target_acc']:.0f}% in {FIG3['epochs']} epochs",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left")


__all__ += ["plot_convergence"]


def plot_step_time_curve(
    df: pd.DataFrame,
    chosen: int | None = None,
    highlight: Sequence[int] = (257, 256, 270, 242),
    pass_: str | None = None,
    column: str = "norm_s",
    title: str | None = None,
):
    """Fig. 2 of the sequential-freezing paper: step time vs rank (top) and its first
    difference ``delta t(r) = t(r) - t(r-1)`` (bottom), from a :func:`lrdnb.sweeps.sweep` frame.

    Args:
        df: sweep frame (rows with ``method == "keep"`` give the original layer's time ``T``,
            drawn as a dashed line); may hold several sweeps (column ``sweep``), one line each.
        chosen: Algorithm 1's rank, marked in both panels.
        highlight: ranks the paper highlights (257/256: the 15% step; 270..242: a flat stretch);
            those inside the swept range are marked.
        pass_: which pass to draw (default: ``train`` if present, else the first).
        column: ``norm_s`` (reference-normalised) or ``median_s`` (raw).
    """
    passes = list(dict.fromkeys(df["pass"]))
    pass_ = pass_ or ("train" if "train" in passes else passes[0])
    d = df[df["pass"] == pass_]
    groups = list(d.groupby("sweep")) if "sweep" in d else [(None, d)]
    fig, (top, bot) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    lo = hi = None
    for i, (name, g) in enumerate(groups):
        c = g[g["method"] != "keep"].sort_values("rank")
        r, t = c["rank"].to_numpy(), c[column].to_numpy() * 1e3
        lo, hi = (r.min(), r.max()) if lo is None else (min(lo, r.min()), max(hi, r.max()))
        lab = f"sweep {name}" if name is not None else "decomposed (Tucker2/SVD)"
        line, = top.plot(r, t, ".-", ms=3, lw=1, label=lab)
        if {"min_s", "max_s"} <= set(c.columns) and column == "median_s":
            top.fill_between(r, c["min_s"] * 1e3, c["max_s"] * 1e3, alpha=0.15, color=line.get_color())
        w = 0.8 / len(groups)
        bot.bar(r[1:] + (i - (len(groups) - 1) / 2) * w, t[1:] - t[:-1], width=w, color=line.get_color())
        keep = g[g["method"] == "keep"]
        if len(keep):
            top.axhline(float(keep[column].iloc[0]) * 1e3, ls="--", lw=1, color=line.get_color(),
                        label=f"original layer T{'' if name is None else f' ({name})'}")
    shown = sorted(h for h in highlight if lo is not None and lo <= h <= hi)
    for i, h in enumerate(shown):
        for ax in (top, bot):
            ax.axvline(h, color="gray", lw=0.8, ls=":")
        if i + 1 < len(shown) and shown[i + 1] - h <= 2:
            continue  # neighbours (256/257) share one label
        lab = f"{shown[i - 1]}/{h}" if i and h - shown[i - 1] <= 2 else str(h)
        top.annotate(f"paper: {lab}", (h, 1.0), xycoords=("data", "axes fraction"), fontsize=7, ha="center",
                     va="bottom", rotation=0 if len(shown) < 3 else 30)
    if chosen is not None:
        for ax in (top, bot):
            ax.axvline(chosen, color="tab:red", lw=1.5)
        top.plot([], [], color="tab:red", label=f"Algorithm 1: {chosen}")
    bot.axhline(0, color="black", lw=0.8)
    top.set_ylabel(f"{pass_} time per call (ms)")
    bot.set_ylabel("delta t(r) = t(r) - t(r-1) (ms)")
    bot.set_xlabel("rank")
    if any(h in shown for h in (256, 257)):
        top.plot([], [], color="gray", lw=0.8, ls=":", label="paper (V100): 257 -> 256 is 15% faster")
    top.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(0.0, 0.95))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ += ["plot_step_time_curve"]


def plot_accuracy_table(
    ours: pd.DataFrame,
    history: pd.DataFrame | None = None,
    compare: pd.DataFrame | None = None,
    title: str | None = None,
):
    """Tables 3 / 4: fine-tuning curves per method, accuracy drop and training speed-up vs the paper.

    One row of panels per model in ``ours``: test accuracy per fine-tuning epoch (epoch 0 = right
    after decomposition), accuracy drop vs the original, training speed-up vs the original (the
    round-robin ``train_speedup_rr`` as bars with min-max whiskers where measured, the
    fine-tuning runs' ``train_speedup_pct`` as marks).

    Args:
        ours: :func:`lrdnb.experiments.accuracy.accuracy_table`'s table (one or more models).
        history: its per-epoch table; ``None`` leaves out the curves panels.
        compare: :func:`lrdnb.experiments.accuracy.side_by_side` (paper bars); ``None`` = ours only.
    """
    models = list(dict.fromkeys(ours["model"])) if "model" in ours else [None]
    panels = (["curves"] if history is not None else []) + ["drop", "speed"]
    fig, grid = plt.subplots(len(models), len(panels), figsize=(4.6 * len(panels), 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        sel = (lambda d: d if model is None or d is None else d[d["model"] == model])
        _accuracy_row(dict(zip(panels, grid[row])), sel(ours), sel(history), sel(compare), model)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _accuracy_row(axes: dict, ours: pd.DataFrame, history, compare, model) -> None:
    labels = list(ours["label"])
    if history is not None:
        ax = axes["curves"]
        for m, d in history.groupby("method", sort=False):
            ax.plot(d["epochs_done"], 100 * d["test_acc"], "o-", ms=3, label=d["label"].iloc[0])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("fine-tuning epochs (0 = right after decomposition)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(str(model or ""), fontsize=9)
        ax.legend(fontsize=8)
    x = np.arange(len(ours))
    w = 0.4 if compare is not None else 0.7
    sh = w / 2 if compare is not None else 0
    rr = "train_speedup_rr" in ours
    for key, col, pcol, ylab in (("drop", "drop_pts", "paper_drop_pts", "accuracy drop vs original (points)"),
                                 ("speed", "train_speedup_pct", "paper_train_speedup_pct",
                                  "training speed-up vs original (%)")):
        ax = axes[key]
        if key == "speed" and rr:  # round-robin timings as bars (min-max whiskers), fine-tuning runs as marks
            med = 100 * (ours["train_speedup_rr"].to_numpy() - 1)
            err = np.vstack([med - 100 * (ours["train_speedup_rr_min"].to_numpy() - 1),
                             100 * (ours["train_speedup_rr_max"].to_numpy() - 1) - med])
            ax.bar(x - sh, med, w, yerr=err, capsize=3, color="tab:blue", label="ours (round-robin)")
            if col in ours:
                ax.scatter(x - sh, ours[col], marker="_", s=250, color="tab:red", zorder=3,
                           label="ours (fine-tuning runs)")
        else:
            ax.bar(x - sh, ours[col] if col in ours else np.nan, w, color="tab:blue", label="ours")
        if compare is not None:
            p = compare.set_index("method")[pcol]
            pm = compare["paper_model"].iloc[0]
            ax.bar(x + sh, [p.get(m, np.nan) for m in ours["method"]], w, color="tab:gray", label=f"paper ({pm})")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_ylabel(ylab)
        ax.legend(fontsize=7)
    axes["speed"].set_title("round-robin steps (whiskers: min-max over rounds); fine-tuning runs indicative" if rr else
                            "indicative (sequential fine-tuning runs)", fontsize=8)


__all__ += ["plot_accuracy_table"]

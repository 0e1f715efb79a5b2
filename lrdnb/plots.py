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
    seeds: pd.DataFrame | None = None,
    comparison: dict | None = None,
    reference_acc: float | None = None,
    title: str | None = None,
):
    """Fig. 3 over seeds: test accuracy per fine-tuning epoch per freezing schedule (mean line,
    min-max band, thin per-seed lines) and, with ``seeds``, each seed's epochs to the target as a
    fraction of the budget beside the paper's single run.

    Colours follow the paper (sequential black, regular red).

    Args:
        df: :func:`lrdnb.experiments.fig3.freezing_convergence`'s table (``schedule, seed,
            epochs_done, test_acc``; ``epochs_done`` 0 = right after decomposition).
        seeds: :func:`lrdnb.experiments.fig3.per_seed` (``target_acc``, ``epochs_to_target``).
        comparison: :func:`lrdnb.experiments.fig3.compare`, written under the second panel.
        reference_acc: accuracy of the undecomposed reference, drawn as a horizontal line.
    """
    colors = {"sequential": "black", "regular": "tab:red", "none": "tab:blue"}
    two = seeds is not None and len(seeds)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6.4, 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if two else None)
    ax = axes[0, 0]
    for name, d in df.groupby("schedule", sort=False):
        w = d.pivot_table(index="epochs_done", columns="seed", values="test_acc", aggfunc="first") * 100
        c = colors.get(name)
        for col in w:
            ax.plot(w.index, w[col], color=c, lw=0.6, alpha=0.35)
        ax.fill_between(w.index, w.min(axis=1), w.max(axis=1), color=c, alpha=0.15, lw=0)
        ax.plot(w.index, w.mean(axis=1), "o-", ms=3, color=c, label=f"{name} freezing (mean of {w.shape[1]} seeds, min-max band)")
    if reference_acc is not None:
        ax.axhline(100 * reference_acc, color="tab:green", lw=0.8, label=f"undecomposed reference {100 * reference_acc:.2f}%")
    if two:
        target = 100 * float(seeds["target_acc"].iloc[0])
        ax.axhline(target, color="gray", ls="--", lw=0.8, label=f"target {target:.2f}% (fixed before fine-tuning)")
        lo = min(target, float(df[df["epochs_done"] > 0]["test_acc"].min() * 100))
        ax.set_ylim(lo - 1.5, max(target, 100 * float(df["test_acc"].max()), 100 * (reference_acc or 0)) + 0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("fine-tuning epoch (0 = right after decomposition, below the axis when low)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    if two:
        _epochs_to_target_panel(axes[0, 1], seeds, colors, comparison)
    fig.tight_layout()
    return fig


def _epochs_to_target_panel(ax, seeds: pd.DataFrame, colors: dict, comparison: dict | None) -> None:
    names = [k for k in ("sequential", "regular") if k in set(seeds["schedule"])]
    for i, k in enumerate(names):
        d = seeds[seeds["schedule"] == k]
        frac = d["epochs_to_target"].astype(float) / d["epochs"].astype(float)
        jitter = np.linspace(-0.08, 0.08, len(d)) if len(d) > 1 else np.zeros(1)
        ax.scatter(i - 0.2 + jitter, frac, color=colors.get(k), s=22, zorder=3, label="ours, one dot per seed" if i == 0 else None)
        if frac.notna().any():
            ax.hlines(frac.mean(), i - 0.35, i - 0.05, color=colors.get(k), lw=2)
        missed = int(frac.isna().sum())
        if missed:
            ax.annotate(f"{missed} seed(s) never reached it", (i - 0.2, 1.02), ha="center", fontsize=7)
        paper = FIG3.get(k, {}).get("epochs_to_target", np.nan) / FIG3["epochs"]
        ax.bar(i + 0.2, paper, 0.3, color=colors.get(k), hatch="//", edgecolor="white", alpha=0.55,
               label="paper (one run, V100)" if i == 0 else None)
    ax.set_xticks(range(len(names)), [f"{k} freezing" for k in names])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("epochs to target / epochs fine-tuned")
    ax.set_title(f"epochs to target; paper: {100 * FIG3['target_acc']:.0f}% on CIFAR-10 in {FIG3['epochs']} epochs",
                 fontsize=9)
    if comparison:
        c = comparison
        p = f" (sign test p = {c['p_sign_a_first']:.2f})" if c["a_first"] + c["b_first"] else ""
        ratio = (f"{c['ratio_mean']:.2f} +- {c['ratio_ci95']:.2f} (95% interval, {c['ratio_seeds']} seeds"
                 if c.get("ratio_seeds", 0) > 1 and not c.get("seeds_not_reached") else
                 f"{c['ratio_censored_mean']:.2f} (misses counted at budget + 1")
        ax.set_xlabel(f"sequential reached the target first in {c['a_first']} of {c['seeds']} seeds, regular in "
                      f"{c['b_first']}{p};\nepochs to target, sequential / regular: "
                      f"{ratio}; paper {c['paper_ratio']:.2f});\n"
                      f"final accuracy, sequential - regular: {c['final_diff_pts']:+.2f} +- {c['final_diff_ci95']:.2f} pts "
                      f"(paper {c['paper_final_diff_pts']:+.2f})", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")


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
    per_seed: pd.DataFrame | None = None,
    references: dict[str, dict] | None = None,
):
    """Tables 3 / 4 over seeds: the reference's training, fine-tuning curves per method, accuracy
    drop and training speed-up.

    One row of panels per model in ``ours``: the reference's test accuracy per training epoch
    (:func:`plot_reference`), test accuracy per fine-tuning epoch (mean and
    min-max band over seeds; epoch 0 = right after decomposition), the drop vs the original (bars:
    mean +- sd of the per-seed paired drops, dots: seeds, diamonds: the paper's one run) and the
    training speed-up (the round-robin ``train_speedup_rr`` with min-max whiskers where measured).

    Args:
        ours: :func:`lrdnb.experiments.accuracy.accuracy_table`'s table (one or more models).
        history: its per-epoch table; ``None`` leaves out the curves panels.
        compare: :func:`lrdnb.experiments.accuracy.side_by_side` (the paper's values); ``None`` = ours only.
        per_seed: its per-seed table (dots on the drop panel).
        references: model -> its reference's ``info`` (:class:`lrdnb.experiments.references.Reference`);
            ``None`` leaves out the reference panels.
    """
    models = list(dict.fromkeys(ours["model"])) if "model" in ours else [None]
    panels = (["reference"] if references else []) + (["curves"] if history is not None else []) + ["drop", "speed"]
    fig, grid = plt.subplots(len(models), len(panels), figsize=(4.8 * len(panels), 3.8 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        sel = (lambda d: d if model is None or d is None else d[d["model"] == model])
        o = sel(ours)
        if compare is not None:
            c = sel(compare)[["method", "paper_model", "paper_drop_pts", "paper_train_speedup_pct"]]
            o = o.merge(c, on="method", how="left")
        axes = dict(zip(panels, grid[row]))
        if references:
            info = references[model] if model in references else next(iter(references.values()))
            plot_reference(info, axes["reference"])
        _accuracy_row(axes, o, sel(history), sel(per_seed), model)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _accuracy_row(axes: dict, ours: pd.DataFrame, history, per_seed, model) -> None:
    labels = list(ours["label"])
    if history is not None:
        ax = axes["curves"]
        for m, d in history.groupby("method", sort=False):
            w = d.pivot_table(index="epochs_done", columns="seed", values="test_acc", aggfunc="first") * 100
            line, = ax.plot(w.index, w.mean(axis=1), "o-", ms=3, label=d["label"].iloc[0])
            ax.fill_between(w.index, w.min(axis=1), w.max(axis=1), color=line.get_color(), alpha=0.15, lw=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("fine-tuning epochs (0 = right after decomposition)")
        ax.set_ylabel("test accuracy (%): mean, min-max band over seeds")
        ax.set_title(str(model or ""), fontsize=9)
        tail = history[history["epochs_done"] > 0]["test_acc"] * 100
        if len(tail):
            ax.set_ylim(tail.min() - 1, tail.max() + 0.5)
        ax.legend(fontsize=7)
    x = np.arange(len(ours))
    ax = axes["drop"]
    ax.bar(x, ours["drop_vs_original"].fillna(0), 0.6, yerr=ours["drop_vs_original_sd"].fillna(0), capsize=3,
           color="tab:blue", alpha=0.7, label="ours: mean +- sd of per-seed drops")
    if per_seed is not None and "original" in set(per_seed["method"]):
        o = per_seed[per_seed["method"] == "original"].set_index("seed")["acc"]
        for i, m in enumerate(ours["method"]):
            d = per_seed[per_seed["method"] == m].set_index("seed")["acc"]
            ax.scatter(np.full(len(d), i), 100 * (o.reindex(d.index) - d), s=10, color="black", zorder=3,
                       label="ours: one seed" if i == 0 else None)
    if "paper_drop_pts" in ours:
        ax.scatter(x, ours["paper_drop_pts"], marker="D", s=28, color="tab:orange", zorder=4,
                   label=f"paper ({ours['paper_model'].iloc[0]}, one run)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("accuracy drop vs original (points)")
    ax.legend(fontsize=7)
    ax = axes["speed"]
    rr = "train_speedup_rr" in ours
    if rr:
        med = 100 * (ours["train_speedup_rr"].to_numpy() - 1)
        err = np.vstack([med - 100 * (ours["train_speedup_rr_min"].to_numpy() - 1),
                         100 * (ours["train_speedup_rr_max"].to_numpy() - 1) - med])
        ax.bar(x, med, 0.6, yerr=err, capsize=3, color="tab:blue", label="ours (round-robin, min-max)")
    else:
        ax.bar(x, 100 * (ours["train_speedup"] - 1), 0.6, color="tab:blue", label="ours (fine-tuning runs)")
    if "paper_train_speedup_pct" in ours:
        ax.scatter(x, ours["paper_train_speedup_pct"], marker="D", s=28, color="tab:orange", zorder=4, label="paper")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("training speed-up vs original (%)")
    ax.legend(fontsize=7)
    ax.set_title("round-robin training steps" if rr else "indicative (fine-tuning runs)", fontsize=8)


def plot_reference(info: dict, ax=None):
    """A reference's training: test accuracy per epoch of the cosine schedule and of each warm
    restart (dashed lines where the lr jumps back up), titled with the plateau criterion (the
    last 2 epochs' gain over the best before them, :func:`lrdnb.experiments.references.plateau`)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 3.8))
    h = pd.DataFrame(info["rows"])
    ax.plot(h["epoch"] + 1, 100 * h["test_acc"], "o-", ms=3, color="tab:blue", label="test accuracy")
    jumps = h["epoch"][h["lr"].diff() > 0]
    for e in jumps:
        ax.axvline(e + 0.5, color="gray", ls="--", lw=0.8)
    if len(jumps):
        ax.plot([], [], color="gray", ls="--", lw=0.8, label="warm restart")
    tail = 100 * h["test_acc"].iloc[len(h) // 2:]
    ax.set_ylim(tail.min() - 1.5, tail.max() + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"training epoch ({info['n_train']:,} images)")
    ax.set_ylabel("reference test accuracy (%)")
    from .experiments.references import PLATEAU_PTS

    gain = info.get("plateau_pts", float("nan"))
    ax.set_title(f"reference {100 * info['acc']:.2f}%; last 2 epochs {gain:+.2f} pts "
                 f"({'plateau' if gain < PLATEAU_PTS else 'not plateaued'}: < {PLATEAU_PTS})", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    return ax.figure


__all__ += ["plot_accuracy_table", "plot_reference"]


def plot_tradeoff(table: pd.DataFrame, paper_table: pd.DataFrame | None = None, paper_model: str = "resnet50",
                  title: str | None = None):
    """The trade-off front: accuracy drop vs training speed-up of every point, and how much of each
    point's speed-up survives ``torch.compile``.

    Left: x = training-step speed-up over the original (median of paired rounds, whiskers
    min-max), y = accuracy drop vs the fine-tuned original (mean of per-seed drops, whiskers +- sd;
    up is better); the non-dominated points joined by a line; the paper's methods (ResNet-50,
    CIFAR-10, V100, one run each) as diamonds. Right: eager vs compiled training speed-up of the
    compiled points (each over its own original, eager or compiled).

    Args:
        table: :func:`lrdnb.experiments.tradeoff.tradeoff_table`'s table.
        paper_table: :func:`lrdnb.paper.table3` (``None``: no paper points).
    """
    colors = {"original": "black", "lrd": "tab:blue", "rank_quant": "tab:orange", "algorithm1": "tab:green",
              "joint": "tab:purple", "freezing": "tab:red"}
    comp = "train_speedup_compiled" in table and table["train_speedup_compiled"].notna().sum() > 1
    fig, axes = plt.subplots(1, 2 if comp else 1, figsize=(13 if comp else 7.5, 5.2), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if comp else None)
    ax = axes[0, 0]
    drop = table["drop_vs_original"].fillna(0.0)
    for rule, d in table.groupby("rule", sort=False):
        dd = drop[d.index]
        ax.errorbar(d["train_speedup"], dd, xerr=[d["train_speedup"] - d["train_speedup_min"],
                                                  d["train_speedup_max"] - d["train_speedup"]],
                    yerr=d["drop_vs_original_sd"].fillna(0), fmt="o", ms=5, capsize=2, lw=0.8,
                    color=colors.get(rule), label=rule.replace("_", " "))
        for _, r in d.iterrows():
            ax.annotate(r["setting"] if rule != "original" else "original", (r["train_speedup"], drop[r.name]),
                        xytext=(4, 3), textcoords="offset points", fontsize=7, color=colors.get(rule))
    f = table[table["on_front"]].sort_values("train_speedup")
    ax.plot(f["train_speedup"], drop[f.index], "-", color="gray", lw=1.2, zorder=0, label="non-dominated front")
    if paper_table is not None:
        p = paper_table[paper_table["model"] == paper_model].set_index("method")
        top = p.loc["original", "cifar10_acc"]
        for m in ("lrd", "rank_opt", "freezing", "combined"):
            if m in p.index:
                ax.scatter(1 + p.loc[m, "train_speedup_pct"] / 100, top - p.loc[m, "cifar10_acc"], marker="D", s=30,
                           facecolors="none", edgecolors="tab:brown", zorder=4,
                           label="paper (ResNet-50, CIFAR-10, V100)" if m == "lrd" else None)
                ax.annotate(f"paper {METHOD_LABELS.get(m, m)}", (1 + p.loc[m, "train_speedup_pct"] / 100,
                                                                top - p.loc[m, "cifar10_acc"]),
                            xytext=(4, -9), textcoords="offset points", fontsize=6, color="tab:brown")
    ax.axhline(0, color="black", lw=0.6)
    ax.invert_yaxis()
    ax.set_xlabel("training-step speed-up over the original (x; round-robin, min-max)")
    ax.set_ylabel("accuracy drop vs the original (points; mean +- sd over seeds; up = better)")
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    if comp:
        ax = axes[0, 1]
        d = table[table["train_speedup_compiled"].notna() & (table["rule"] != "original")]
        x = np.arange(len(d))
        ax.bar(x - 0.2, d["train_speedup"], 0.4, color="tab:blue", label="eager, over the eager original")
        ax.bar(x + 0.2, d["train_speedup_compiled"], 0.4, color="tab:gray",
               yerr=[d["train_speedup_compiled"] - d["train_speedup_min_compiled"],
                     d["train_speedup_max_compiled"] - d["train_speedup_compiled"]], capsize=2,
               label="compiled, over the compiled original")
        ax.axhline(1, color="black", lw=0.8)
        ax.set_xticks(x, d["point"], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("training-step speed-up (x)")
        ax.set_title("how much speed-up survives torch.compile (inductor)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ += ["plot_tradeoff"]

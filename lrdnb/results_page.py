"""``docs/results.md``, generated from the reference results in ``data/`` and the paper's numbers.

``python -m lrdnb results`` writes it; ``publish`` regenerates it; a test regenerates it and fails
on any difference from the committed page, so the page never drifts from the data. Every table
shows ours beside the paper's and says which file each number comes from, when and where it was
measured, and at which commit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import paper
from .publish import read_index
from .reference import ARTIFACTS, read_meta

__all__ = ["render", "write"]


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if pd.isna(v):
            return "-"
        return f"{v:.0f}" if v.is_integer() or abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def _source(data: Path, stem: str) -> str:
    meta = read_meta(data, stem) or {}
    commit = meta.get("commit")
    commit = f"commit `{commit}`{' (uncommitted changes)' if meta.get('dirty') else ''}" if commit else "commit not recorded"
    load = meta.get("load_start")
    load = f", load average {load[0]:.2f} at the start" if load else ""
    return (f"Source: `data/{stem}.csv` - measured {str(meta.get('date', '?'))[:16].replace('T', ' ')} UTC on "
            f"{meta.get('device_name', '?')} (torch {meta.get('torch', '?')}, {meta.get('threads', '?')} threads{load}), "
            f"{commit}.")


def _table1(df: pd.DataFrame) -> pd.DataFrame:
    p = paper.table1().set_index(["model", "method"])
    rows = []
    for r in df.itertuples():
        key = (r.model, r.method)
        rows.append({"model": r.model, "method": r.label,
                     "train: ours (%)": r.train_delta_pct,
                     "train min..max": f"{r.train_delta_min:.0f}..{r.train_delta_max:.0f}",
                     "train: paper (%)": p["train_delta_pct"].get(key, float("nan")),
                     "inference: ours (%)": r.infer_delta_pct,
                     "inference: paper (%)": p["infer_delta_pct"].get(key, float("nan"))})
    return pd.DataFrame(rows)


def _table2(df: pd.DataFrame) -> pd.DataFrame:
    p = paper.table2().set_index("model")
    return pd.DataFrame([{"model": r.model, "LRD: ours (s)": r.lrd_hosvd_s, "LRD: paper (s)": p["lrd_s"].get(r.model),
                          "rank opt. cold: ours (s)": r.rank_opt_cold_s, "rank opt. warm: ours (s)": r.rank_opt_warm_s,
                          "rank opt.: paper (s)": p["rank_opt_s"].get(r.model),
                          "freezing: ours (s)": r.freezing_s, "freezing: paper (s)": p["freezing_s"].get(r.model)}
                         for r in df.itertuples()])


def _accuracy(df: pd.DataFrame, table: pd.DataFrame, paper_model: str) -> pd.DataFrame:
    p = table[table["model"] == paper_model].set_index("method")
    top = p.loc["original", "cifar10_acc"]
    rows = []
    for r in df.itertuples():
        rr = getattr(r, "train_speedup_rr", float("nan"))
        rows.append({"method": r.label, "accuracy: ours (%)": 100 * r.acc, "drop: ours (points)": r.drop_pts,
                     "drop: paper (points)": top - p["cifar10_acc"].get(r.method, float("nan")),
                     "training speed-up: ours (%)": 100 * (rr - 1) if not pd.isna(rr) else r.train_speedup_pct,
                     "training speed-up: paper (%)": p["train_speedup_pct"].get(r.method, float("nan"))})
    return pd.DataFrame(rows)


def _fig2(df: pd.DataFrame) -> pd.DataFrame:
    f = paper.FIG2
    out = df[["sweep", "rank", "speedup_vs_original", "reason"]].rename(
        columns={"rank": "Algorithm 1 rank: ours", "speedup_vs_original": "speed-up vs original (x)"})
    out.insert(2, "paper", f"{f['rank']} (step {f['step_from']}->{f['step_to']}, {f['step_pct']:.0f}%)")
    return out


def _fig3(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{"schedule": r.schedule, "target: ours (%)": 100 * r.target_acc,
                          "epochs to target: ours": r.epochs_to_target,
                          "epochs to 95%: paper": r.paper_epochs_to_target, "final: ours (%)": 100 * r.final_acc,
                          "final: paper (%)": 100 * r.paper_final_acc} for r in df.itertuples()])


def _section(name: str, data: Path, tag: str) -> str | None:
    a = ARTIFACTS[name]
    stem = a.main(tag)
    if not (data / f"{stem}.csv").exists():
        return None
    df = pd.read_csv(data / f"{stem}.csv")
    table = {"table1": _table1, "table2": _table2, "fig2": _fig2, "fig3": _fig3,
             "table3": lambda d: _accuracy(d, paper.table3(), "resnet50"),
             "table4": lambda d: _accuracy(d, paper.table4(), "vit_b_16")}.get(name)
    if table is None:
        return None
    who = f"`{df['model'].iloc[0]}` on {df['dataset'].iloc[0]}" if {"model", "dataset"} <= set(df.columns) else ""
    notes = {
        "table1": "Speed-ups over the original: medians of per-round paired ratios (round-robin timing), min..max "
                  "over the rounds. Paper: V100, 224 px; ours: the `cpu` profile (64 px, batch 16).",
        "table2": "Paper: NVIDIA GPU, 224 px; ours: the `cpu` profile's shapes. Rank optimization *cold*: empty "
                  "timing cache; *warm*: a second run reading it back.",
        "fig2": "Algorithm 1 per independent sweep and pooled. Paper: V100.",
        "fig3": "Ours: a CPU-sized model on Fashion-MNIST, target = the lower final accuracy minus 0.5 points; "
                "paper: ResNet-50 on CIFAR-10 (V100), target 95%.",
        "table3": f"Ours: {who}; paper: ResNet-50 on CIFAR-10 (V100). "
                  "Compare drops, not absolute accuracies. Speed-ups: round-robin training steps.",
        "table4": f"Ours: {who}; paper: ViT-B/16 on CIFAR-10 "
                  "(Ascend 910). Compare drops, not absolute accuracies. Speed-ups: round-robin training steps.",
    }[name]
    figs = [f"figures/{s}_{tag}.png" for s in a.figures]
    fig = "".join(f"\n\n![{a.title}](../{f})" for f in figs if (data.parent / f).exists())
    return f"## {a.title}\n\n{notes}\n\n{_md(table(df))}\n\n{_source(data, stem)}{fig}\n"


def render(root: str | Path, tag: str = "cpu") -> str:
    """The results page for the reference in ``root/data`` (results tagged ``tag``)."""
    root = Path(root)
    data = root / "data"
    parts = ["# Results: ours beside the paper's\n",
             "Generated by `python -m lrdnb results` from the reference results in `data/` and the paper's numbers "
             "in `lrdnb/paper.py`; do not edit by hand. Speed numbers depend on the device they were measured on "
             "(and need an otherwise idle machine); the paper measured on NVIDIA V100 GPUs (Tables 1-3, Figs. 2-3) "
             "and Ascend 910 NPUs (Table 4). Earlier reference results: `data/archive/INDEX.csv`.\n"]
    parts += [s for s in (_section(n, data, tag) for n in ARTIFACTS) if s]
    others = sorted(p.stem for p in data.glob("*.csv")
                    if not any(p.stem in (a.main(tag), *[f"{s}_{tag}" for s in a.data]) or p.stem == a.main(tag)
                               for a in ARTIFACTS.values()))
    if others:
        rows = [{"file": f"`data/{s}.csv`", "measured": str((read_meta(data, s) or {}).get("date", "?"))[:10],
                 "device": (read_meta(data, s) or {}).get("device_name", "?")} for s in others]
        parts.append("## Other current measurements\n\nWritten by the scripts in `benchmarks/` (see "
                     "`docs/history.md`).\n\n" + _md(pd.DataFrame(rows)) + "\n")
    n = len(read_index(root))
    parts.append(f"## Archive\n\n{n} earlier results, listed in `data/archive/INDEX.csv`.\n")
    return "\n".join(parts)


def write(root: str | Path, path: str | Path | None = None, tag: str = "cpu") -> Path:
    """Write :func:`render` to ``path`` (default ``root/docs/results.md``)."""
    from .results import atomic_write_text

    path = Path(path) if path is not None else Path(root) / "docs" / "results.md"
    return atomic_write_text(path, render(root, tag))

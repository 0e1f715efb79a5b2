"""The paper artifacts, their key numbers, and how a run compares with the committed reference.

An *artifact* is what one notebook produces: result tables (``NAME_<tag>.csv`` + ``.json``) and a
figure. :func:`key_numbers` reads a few headline numbers of an artifact from a results folder,
:func:`paper_numbers` gives the same quantities from the paper (:mod:`lrdnb.paper`), and
:func:`comparison` / :func:`conclusion` put them side by side. ``python -m lrdnb reproduce`` prints
the comparison of its run with the reference; every notebook ends with the conclusion line.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import paper

__all__ = ["Artifact", "ARTIFACTS", "artifact", "key_numbers", "paper_numbers", "comparison", "conclusion",
           "read_meta", "source_line"]


@dataclass(frozen=True)
class Artifact:
    """One paper artifact: the notebook that makes it, its result stems and figure stems (without
    the ``_<tag>`` suffix) and a title."""

    name: str
    notebook: str
    title: str
    data: tuple[str, ...]
    figures: tuple[str, ...]
    tagged: bool = True

    def files(self, tag: str) -> list[str]:
        """File names (``.csv``, ``.json``, ``.png``) a run with ``tag`` writes."""
        sfx = f"_{tag}" if self.tagged else ""
        return ([f"{s}{sfx}.{e}" for s in self.data for e in ("csv", "json")]
                + [f"{s}{sfx}.png" for s in self.figures])

    def main(self, tag: str) -> str:
        """Stem of the result that holds the key numbers."""
        return f"{self.data[0]}_{tag}" if self.tagged else self.data[0]


#: the artifacts in the order ``reproduce`` runs their notebooks (keys = ``--only`` names).
ARTIFACTS = {a.name: a for a in (
    Artifact("fig2", "fig2_step_time_vs_rank", "Fig. 2: step time vs rank, Algorithm 1's choice",
             ("fig2_algorithm1", "fig2_step_time_vs_rank"), ("fig2_step_time_vs_rank",)),
    Artifact("table1", "table1_throughput", "Table 1: training / inference speed-up over the original",
             ("table1_throughput",), ("table1_throughput",)),
    Artifact("table2", "table2_decomposition_time", "Table 2: decomposition time",
             ("table2_decomposition_time",), ("table2_decomposition_time",)),
    Artifact("fig3", "fig3_sequential_vs_regular_freezing", "Fig. 3: sequential vs regular freezing",
             ("fig3_summary", "fig3_seeds", "fig3_convergence"), ("fig3_sequential_vs_regular_freezing",)),
    Artifact("table3", "table3_resnet_accuracy", "Table 3: ResNet accuracy and training speed-up",
             ("table3_resnet_accuracy", "table3_resnet_accuracy_seeds", "table3_resnet_accuracy_history"),
             ("table3_resnet_accuracy",)),
    Artifact("table4", "table4_vit_accuracy", "Table 4: ViT accuracy and training speed-up",
             ("table4_vit_accuracy", "table4_vit_accuracy_seeds", "table4_vit_accuracy_history"),
             ("table4_vit_accuracy",)),
    Artifact("tradeoff", "tradeoff_speed_accuracy", "Beyond the paper: speed / accuracy front of every rank rule",
             ("tradeoff_points", "tradeoff_pairs", "tradeoff_seeds"), ("tradeoff_front",)),
    Artifact("explore", "explore_rank_tradeoffs", "Rank trade-off explorer: joint choice at the initial budget",
             ("explore_rank_tradeoffs",), (), tagged=False),
)}


def artifact(name: str) -> Artifact:
    """The artifact called ``name`` (short name or notebook stem).

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    for a in ARTIFACTS.values():
        if name in (a.name, a.notebook):
            return a
    raise ValueError(f"unknown artifact {name!r}; valid: {', '.join(ARTIFACTS)}")


def read_meta(folder: str | Path, stem: str) -> dict[str, Any] | None:
    """The provenance (``meta``) of ``folder/stem.json``, or ``None`` if there is no such file."""
    path = Path(folder) / f"{stem}.json"
    return json.loads(path.read_text()).get("meta", {}) if path.exists() else None


def source_line(meta: dict[str, Any] | None) -> str:
    """``"<device>, <YYYY-MM-DD>, commit <sha>"``: where and when a result was measured."""
    if not meta:
        return "no result"
    commit = meta.get("commit")
    commit = f"commit {commit}{'+dirty' if meta.get('dirty') else ''}" if commit else "commit not recorded"
    return f"{meta.get('device_name', meta.get('device', '?'))}, {str(meta.get('date', '?'))[:10]}, {commit}"


# ---- key numbers: {quantity: value} (floats, or strings where a value is a label) -------------------

def _pct(x: float) -> float:
    return 100.0 * (x - 1.0)


def _table1(df: pd.DataFrame) -> dict[str, Any]:
    from .experiments.variants import LABELS

    m = df[df["model"] == df["model"].iloc[0]].set_index("method")
    out: dict[str, Any] = {"model": df["model"].iloc[0]}
    for k in ("combined", "rank_opt", "lrd", "freezing", "rank_quant", "rank_quant_freezing"):
        if k in m.index:
            out[f"{LABELS[k]} training speed-up (%)"] = float(m.loc[k, "train_delta_pct"])
    if "combined" in m.index and "infer_delta_pct" in m:
        out["Combined inference speed-up (%)"] = float(m.loc["combined", "infer_delta_pct"])
    for k, base in (("rank_opt", "Rank quant."), ("combined", "Rank quant. + Freezing")):
        if k in m.index and "train_vs_baseline_pct" in m and pd.notna(m.loc[k, "train_vs_baseline_pct"]):
            out[f"{LABELS[k]} vs {base}, training (%)"] = float(m.loc[k, "train_vs_baseline_pct"])
    return out


def _table1_paper() -> dict[str, Any]:
    return _table1(paper.table1()) | {"model": "ResNet-50 (V100)"}


def _table2(df: pd.DataFrame) -> dict[str, Any]:
    r = df.iloc[0]
    lrd = float(r["lrd_hosvd_s"] if "lrd_hosvd_s" in r else r["lrd_s"])
    opt = float(r["rank_opt_cold_s"] if "rank_opt_cold_s" in r else r["rank_opt_s"])
    return {"model": r["model"], "LRD (s)": lrd, "rank optimization (s)": opt,
            "rank optimization / LRD (x)": opt / lrd}


def _table2_paper() -> dict[str, Any]:
    return _table2(paper.table2()) | {"model": "ResNet-50 (NVIDIA GPU)"}


def _accuracy(df: pd.DataFrame) -> dict[str, Any]:
    df = _seeded(df)
    m = df[df["model"] == df["model"].iloc[0]].set_index("method")
    out: dict[str, Any] = {"model": df["model"].iloc[0]}
    if "combined" in m.index:
        out["Combined accuracy drop (points)"] = float(m.loc["combined", "drop_vs_original"])
        rr = m.loc["combined"].get("train_speedup_rr")
        out["Combined training speed-up (%)"] = (_pct(float(rr)) if rr is not None and not pd.isna(rr)
                                                 else _pct(float(m.loc["combined", "train_speedup"])))
    if "lrd" in m.index:
        out["LRD accuracy drop (points)"] = float(m.loc["lrd", "drop_vs_original"])
    out["original accuracy (%)"] = float(m.loc["original", "acc_mean"])
    return out


def _accuracy_paper(table: pd.DataFrame, model: str, device: str) -> dict[str, Any]:
    t = table[table["model"] == model].set_index("method")["cifar10_acc"]
    sp = table[table["model"] == model].set_index("method")["train_speedup_pct"]
    return {"model": f"{paper.MODEL_LABELS[model]}, CIFAR-10 ({device})",
            "Combined accuracy drop (points)": float(t["original"] - t["combined"]),
            "Combined training speed-up (%)": float(sp["combined"]),
            "LRD accuracy drop (points)": float(t["original"] - t["lrd"]), "original accuracy (%)": float(t["original"])}


def _fig2(df: pd.DataFrame) -> dict[str, Any]:
    r = df.set_index(df["sweep"].astype(str)).loc["pooled"] if "pooled" in set(df["sweep"].astype(str)) else df.iloc[-1]
    step = re.search(r"drop ([\d.]+)% at (\d+)->(\d+)", str(r.get("reason", "")))
    return {"Algorithm 1 rank": int(r["rank"]) if not pd.isna(r["rank"]) else "kept original",
            "largest step": f"{step.group(2)}->{step.group(3)}" if step else "none confirmed",
            "largest step (% of time)": float(step.group(1)) if step else float("nan"),
            "speed-up vs original layer (x)": float(r["speedup_vs_original"])}


def _fig2_paper() -> dict[str, Any]:
    f = paper.FIG2
    return {"model": "Tucker2 of ResNet-152's [512, 512, 3, 3] conv (V100)", "Algorithm 1 rank": f["rank"],
            "largest step": f"{f['step_from']}->{f['step_to']}",
            "largest step (% of time)": f["step_pct"], "speed-up vs original layer (x)": float("nan")}


def _seeded(df: pd.DataFrame) -> pd.DataFrame:
    """A result written before results had seeds (one run: ``acc``, ``drop_pts``, ``epochs_to_target``),
    in the columns of the seeded ones."""
    if "acc" in df and "acc_mean" not in df:
        df = df.assign(acc_mean=100 * df["acc"], drop_vs_original=df["drop_pts"],
                       train_speedup=1 + df["train_speedup_pct"] / 100)
    if "epochs_to_target" in df and "epochs_to_target_mean" not in df:
        df = df.assign(epochs_to_target_mean=df["epochs_to_target"], final_acc_mean=df["final_acc"])
    return df


def _fig3(df: pd.DataFrame) -> dict[str, Any]:
    s = _seeded(df).set_index("schedule")
    out: dict[str, Any] = {}
    for k in ("sequential", "regular"):
        if k in s.index:
            out[f"epochs to target, {k}"] = float(s.loc[k, "epochs_to_target_mean"])
    for k in ("sequential", "regular"):
        if k in s.index:
            out[f"final accuracy, {k} (%)"] = 100 * float(s.loc[k, "final_acc_mean"])
    out["target accuracy (%)"] = 100 * float(s["target_acc"].iloc[0])
    return out


def _fig3_paper() -> dict[str, Any]:
    f = paper.FIG3
    return {"model": "ResNet-50, CIFAR-10 (V100)",
            "epochs to target, sequential": f["sequential"]["epochs_to_target"],
            "epochs to target, regular": f["regular"]["epochs_to_target"],
            "final accuracy, sequential (%)": 100 * f["sequential"]["final_acc"],
            "final accuracy, regular (%)": 100 * f["regular"]["final_acc"], "target accuracy (%)": 100 * f["target_acc"]}


def _explore(df: pd.DataFrame) -> dict[str, Any]:
    return {"predicted time (fraction of original)": float(df["time_s"].sum() / df["time_original"].sum()),
            "parameters (fraction of original)": float(df["params"].sum() / df["params_before"].sum()),
            "layers decomposed": int((df["method"] != "keep").sum())}


def _tradeoff(df: pd.DataFrame) -> dict[str, Any]:
    t = df.set_index("point")
    out: dict[str, Any] = {"points on the front": ", ".join(df[df["on_front"]]["point"])}
    for n in ("rank quant 2x", "algorithm1 2x-3x", "algorithm1 2x-3x + sequential"):
        if n in t.index:
            out[f"{n}: training speed-up (x)"] = float(t.loc[n, "train_speedup"])
            out[f"{n}: accuracy drop (points)"] = float(t.loc[n, "drop_vs_original"])
    return out


_OURS: dict[str, Callable[[pd.DataFrame], dict[str, Any]]] = {
    "fig2": _fig2, "table1": _table1, "table2": _table2, "fig3": _fig3, "table3": _accuracy, "table4": _accuracy,
    "tradeoff": _tradeoff, "explore": _explore}
_PAPER: dict[str, Callable[[], dict[str, Any]]] = {
    "fig2": _fig2_paper, "table1": _table1_paper, "table2": _table2_paper, "fig3": _fig3_paper,
    "table3": lambda: _accuracy_paper(paper.table3(), "resnet50", "V100"),
    "table4": lambda: _accuracy_paper(paper.table4(), "vit_b_16", "Ascend 910"),
    "tradeoff": dict, "explore": dict}


def key_numbers(name: str, folder: str | Path, tag: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(numbers, meta)`` of artifact ``name`` as written to ``folder`` by a run tagged ``tag``;
    ``({}, None)`` when the folder has no such result."""
    a = artifact(name)
    csv = Path(folder) / f"{a.main(tag)}.csv"
    if not csv.exists():
        return {}, None
    return _OURS[a.name](pd.read_csv(csv)), read_meta(folder, a.main(tag))


def paper_numbers(name: str) -> dict[str, Any]:
    """The paper's values of the quantities :func:`key_numbers` reports (``{}`` where it has none)."""
    return _PAPER[artifact(name).name]()


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if v.is_integer():
            return f"{v:.0f}"
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def comparison(name: str, run: tuple[str | Path, str], reference: tuple[str | Path, str] | None = None) -> str:
    """A text table: the key numbers of a run, of the reference and of the paper, side by side.

    Args:
        name: artifact name.
        run: ``(data folder, tag)`` of the run.
        reference: ``(data folder, tag)`` of the committed reference (``None``: leave it out).
    """
    a = artifact(name)
    ours, ours_meta = key_numbers(name, *run)
    cols = [("ours", ours, f"{run[0]} ({source_line(ours_meta)})")]
    if reference is not None:
        ref, ref_meta = key_numbers(name, *reference)
        cols.append(("reference", ref, f"{reference[0]} ({source_line(ref_meta)})"))
    pap = paper_numbers(name)
    cols.append(("paper", pap, pap.get("model", "the paper's figure") if pap else "no number in the paper"))
    lines = [f"{a.title}"] + [f"  {n + ':':11s}{where}" for n, _, where in cols]
    rows = [k for k in dict.fromkeys(k for _, d, _ in cols for k in d) if k != "model"]
    head = ["quantity"] + [n for n, _, _ in cols]
    body = [[k] + [_fmt(d.get(k)) for _, d, _ in cols] for k in rows]
    if "model" in ours or (reference is not None and "model" in cols[1][1]):
        body.insert(0, ["model"] + [str(d.get("model", "-")) for _, d, _ in cols])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + body]
    return "\n".join(lines)


def conclusion(name: str, folder: str | Path, tag: str, n: int = 3) -> str:
    """One line: this run's first ``n`` headline numbers next to the paper's."""
    ours, meta = key_numbers(name, folder, tag)
    pap = paper_numbers(name)
    if not ours:
        return f"Conclusion: no {artifact(name).name} result in {folder}"
    parts = [f"{k} {_fmt(v)}" + (f" vs the paper's {_fmt(pap[k])}" if _fmt(pap.get(k)) != "-" else "")
             for k, v in list((k, v) for k, v in ours.items() if k != "model")[:n]]
    where = f"{ours['model']} on " if "model" in ours else ""
    paper_where = f" ({pap['model']})" if "model" in pap else ""
    return f"Conclusion, {where}{source_line(meta)}: " + "; ".join(parts) + (paper_where if pap else "; no paper value")

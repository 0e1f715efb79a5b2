"""Interactive explorers of the rank / step-time / error trade-off (ipywidgets, JupyterLab).

Builders return (never display) an :class:`Explorer` over a precomputed explorer table
(:mod:`lrdnb.explore`): no timing inside a callback, so sliders respond at interactive speed.

* :func:`layer_explorer` - pick a layer, slide its rank: the layer's step-time curve with the
  rank marked (the paper's Fig. 2 for any layer), compression ratio, parameters, relative
  reconstruction error, predicted layer time and Algorithm 1's choice (Hajimolahoseini et al.
  2023).
* :func:`front_explorer` - slide along the measured speed / accuracy points of the trade-off notebook.
* :func:`model_explorer` - slide a whole-model time budget or the Lagrange multiplier of the
  joint rank selection: chosen ranks per layer, predicted time vs original, parameters, error.

Each explorer exposes ``controls`` (set ``.value`` to drive it), ``result`` (the numbers shown)
and ``last_error`` so tests drive it without a browser. ipywidgets and matplotlib (the
``notebooks`` extra) are imported only when an explorer is built.

Example:
    >>> from lrdnb.widgets import layer_explorer, prepare_explorer_data
    >>> lx = layer_explorer(prepare_explorer_data("resnet18", 32, timing="flops"))  # doctest: +SKIP
    >>> lx.controls["layer"].value = "layer4.0.conv2"                                # doctest: +SKIP
    >>> lx.controls["rank"].value = 256; lx.result["params"]                         # doctest: +SKIP
    851968
"""
from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .explore import (EXPLORE_COLUMNS, algorithm1_choice, explorer_data, joint_curves, layer_names,  # noqa: F401
                      layer_summary, layer_table, load_explorer_data, model_summary, prepare_explorer_data,
                      save_explorer_data, sweep_plan)

__all__ = ["Explorer", "layer_explorer", "model_explorer", "front_explorer", "explorer_data", "prepare_explorer_data",
           "load_explorer_data", "save_explorer_data", "layer_summary", "model_summary"]


@dataclass
class Explorer:
    """A built explorer: ``widget`` (the top-level VBox to display), ``controls`` (name ->
    widget; set ``.value`` to drive it), ``result`` (the numbers currently shown),
    ``last_error`` (the exception of the last failed update, or None). Displays itself in a
    notebook as its widget."""

    widget: Any
    controls: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)
    last_error: BaseException | None = None
    _compute: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)
    _render: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)
    _status: Any = field(default=None, repr=False)

    def update(self, *_: Any) -> None:
        """Recompute from the controls and redraw; an exception is stored and shown, not raised."""
        try:
            self.result = self._compute()
            self._render(self.result)
            self.last_error = None
            self._status.value = ""
        except Exception as e:  # a callback must not die silently in the browser
            self.last_error = e
            self._status.value = f"<b style='color:#b00'>error: {html.escape(type(e).__name__)}: {html.escape(str(e))}</b>"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def _fmt_s(t: float) -> str:
    return "n/a" if not np.isfinite(t) else (f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _kv_table(items: Sequence[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                    f"<td class='lrdnb-{html.escape(k.split()[0].lower())}'>{html.escape(v)}</td></tr>" for k, v in items)
    return f"<table class='lrdnb-summary'>{cells}</table>"


def _time_label(data: pd.DataFrame) -> str:
    src = data["time_source"].iloc[0]
    return f"{data['pass'].iloc[0]} time" if src == "sweep" else "FLOP proxy time (no sweep; 1 TFLOP/s)"


def layer_explorer(data: pd.DataFrame, layer: str | None = None) -> Explorer:
    """Pick a layer (Dropdown ``layer``), slide its rank (IntSlider ``rank``).

    Shows the step-time curve with the current rank, original time, ``R_min`` .. plan rank
    window and Algorithm 1's choice marked; the error curve; and a table of the numbers in
    :func:`layer_summary` plus ``alg1_rank`` / ``alg1_reason`` (also in ``.result``).

    Args:
        data: an :func:`explorer_data` table.
        layer: the layer shown first (default: the one with the largest original time).
    """
    import ipywidgets as W
    from matplotlib.figure import Figure

    names = layer_names(data)
    first = data.drop_duplicates("layer").set_index("layer")["time_original"].idxmax()
    layer = layer or first
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; valid: {names}")
    dd = W.Dropdown(options=[(f"{n}  ({layer_table(data, n)['method'].iloc[0]}, "
                              f"{layer_table(data, n)['weight_shape'].iloc[0]})", n) for n in names],
                    value=layer, description="layer", layout=W.Layout(width="480px"))
    slider = W.IntSlider(description="rank", min=1, max=2, value=1, continuous_update=True,
                         layout=W.Layout(width="480px"))
    summary, status = W.HTML(), W.HTML()
    image = W.Image(format="png", layout=W.Layout(width="720px"))
    fig = Figure(figsize=(9, 3.2))
    ax_t, ax_e = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.88, wspace=0.28)
    state: dict[str, Any] = {"busy": False, "alg1": {}}
    tlabel = _time_label(data)

    def draw_layer(name: str) -> None:
        t = layer_table(data, name)
        if name not in state["alg1"]:
            state["alg1"][name] = algorithm1_choice(data, name)
        a1 = state["alg1"][name][0]
        ax_t.clear(), ax_e.clear()
        m = t[np.isfinite(t["time_s"].to_numpy(dtype=float))]
        ax_t.plot(m["rank"], m["time_s"] * 1e3, ".-", ms=3, lw=1, label="decomposed")
        ax_t.axhline(t["time_original"].iloc[0] * 1e3, color="k", ls="--", lw=1, label="original")
        ax_t.axvspan(t["rank_min"].iloc[0], t["plan_rank"].iloc[0], color="0.9", label="[R_min, R]")
        if a1 is not None:
            ax_t.axvline(a1, color="tab:green", lw=1.5, label=f"Algorithm 1: {a1}")
        ax_t.set(xlabel="rank", ylabel="ms", title=f"{name}: {tlabel}")
        ax_e.plot(t["rank"], t["error"], lw=1)
        ax_e.set(xlabel="rank", ylabel="relative error", title="reconstruction error", ylim=(0, None))
        state["vt"] = ax_t.axvline(t["rank"].iloc[0], color="tab:red", lw=1.5, label="current rank")
        state["ve"] = ax_e.axvline(t["rank"].iloc[0], color="tab:red", lw=1.5)
        ax_t.legend(fontsize=7, loc="upper left")

    def compute() -> dict[str, Any]:
        res = layer_summary(data, dd.value, slider.value)
        res["alg1_rank"], res["alg1_reason"] = state["alg1"][dd.value]
        return res

    def render(res: dict[str, Any]) -> None:
        for line in (state["vt"], state["ve"]):
            line.set_xdata([res["rank"], res["rank"]])
        image.value = _png(fig)
        ranks = "x".join(map(str, res["ranks"]))
        how = ("FLOP proxy, not measured" if res["time_source"] == "flops" else
               "measured" if res["measured"] else "interpolated" if np.isfinite(res["time_s"]) else "rank not swept")
        summary.value = _kv_table([
            ("ranks", f"{ranks} ({res['method']})"), ("params", f"{res['params']:,} of {res['params_before']:,}"),
            ("compression", f"{res['compression']:.2f}x"), ("error", f"{res['error']:.4f} (relative, Frobenius)"),
            ("time", f"{_fmt_s(res['time_s'])} ({how}) vs original {_fmt_s(res['time_original'])}"),
            ("speed-up", f"{res['speedup']:.2f}x" if np.isfinite(res["speedup"]) else "n/a (rank not swept)"),
            ("Algorithm 1", f"{res['alg1_rank'] if res['alg1_rank'] is not None else 'keep original'}: {res['alg1_reason']}"),
        ])

    ex = Explorer(W.VBox([W.HTML("<b>Layer explorer</b>: pick a layer, slide its rank"), dd, slider,
                          summary, image, status]),
                  {"layer": dd, "rank": slider}, _compute=compute, _render=render, _status=status)

    def on_layer(_: Any = None) -> None:
        t = layer_table(data, dd.value)
        state["busy"] = True
        try:
            draw_layer(dd.value)
            slider.min, slider.max = 1, int(t["rank"].max())
            slider.value = int(t["plan_rank"].iloc[0])
        except Exception as e:
            ex.last_error = e
        finally:
            state["busy"] = False
        ex.update()

    dd.observe(on_layer, names="value")
    slider.observe(lambda _: None if state["busy"] else ex.update(), names="value")
    on_layer()
    return ex


def model_explorer(data: pd.DataFrame, budget: float = 0.8, lam: float | None = None) -> Explorer:
    """Slide the whole-model time budget (FloatSlider ``budget``, fraction of the original
    layers' total time) or the joint selection's Lagrange multiplier (FloatLogSlider ``lam``,
    used when ToggleButtons ``mode`` is ``"lambda"``).

    Shows the chosen ranks per layer (table), predicted total time vs original, parameters and
    total error, all from :func:`model_summary` (also in ``.result``; ``.result["choice"]`` is
    the per-layer DataFrame).
    """
    import ipywidgets as W
    from matplotlib.figure import Figure

    curves = joint_curves(data)
    per = curves.groupby("layer", sort=False)["time_s"]
    t_orig = float(curves.loc[curves["rank"] == 0, "time_s"].sum())
    floor = float(per.min().sum()) / t_orig
    # lambda trades seconds for squared error: centre the slider on (error range / time range)
    err2 = curves.assign(e2=curves["error"] ** 2).groupby("layer")["e2"].max().sum()
    lam_ref = math.log10(max(err2, 1e-12) / max(t_orig - floor * t_orig, 1e-12))
    mode = W.ToggleButtons(options=["budget", "lambda"], value="budget" if lam is None else "lambda",
                           description="select by")
    b = W.FloatSlider(description="time budget", min=round(math.floor(floor * 100) / 100, 2), max=1.0, step=0.01,
                      value=min(1.0, max(budget, floor)), readout_format=".0%", continuous_update=True,
                      layout=W.Layout(width="480px"), style={"description_width": "90px"})
    lam_s = W.FloatLogSlider(description="lambda", base=10, min=round(lam_ref - 3), max=round(lam_ref + 3), step=0.05,
                             value=lam or 10 ** round(lam_ref),
                             continuous_update=True, layout=W.Layout(width="480px"), style={"description_width": "90px"})
    totals, table, status = W.HTML(), W.HTML(), W.HTML()
    image = W.Image(format="png", layout=W.Layout(width="720px"))
    fig = Figure(figsize=(9, 2.8))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.36, top=0.9)
    names = layer_names(data)

    def compute() -> dict[str, Any]:
        if mode.value == "budget":
            return model_summary(data, budget=b.value, curves=curves)
        return model_summary(data, lam=lam_s.value, curves=curves)

    def render(res: dict[str, Any]) -> None:
        ch = res["choice"]
        x = np.arange(len(ch))
        ax.clear()
        ax.bar(x - 0.2, ch["time_original"] * 1e3, 0.4, label="original", color="0.6")
        ax.bar(x + 0.2, ch["time_s"] * 1e3, 0.4, label="chosen", color="tab:blue")
        ax.set_xticks(x, [n.replace("layer", "L") for n in names], rotation=60, fontsize=6, ha="right")
        ax.set(ylabel="ms", title=f"per-layer {_time_label(data)}: total {_fmt_s(res['time_s'])} "
                                  f"vs {_fmt_s(res['time_original'])}")
        ax.legend(fontsize=7)
        image.value = _png(fig)
        bud = f"{_fmt_s(res['budget_s'])} ({'met' if res['within_budget'] else 'NOT met'})" if res["budget_s"] else "-"
        totals.value = _kv_table([
            ("time", f"{_fmt_s(res['time_s'])} vs original {_fmt_s(res['time_original'])} "
                     f"({res['speedup']:.2f}x; {res['time_s'] / res['time_original']:.0%}; sum over the planned layers)"),
            ("budget", bud), ("params", f"{res['params']:,} of {res['params_before']:,} ({res['compression']:.2f}x)"),
            ("error", f"{res['error']:.3f} (sum of per-layer relative errors; "
                      f"sum of squares {res['objective']:.4f}, lambda {res['lam']:.3g})"),
            ("decomposed", f"{res['decomposed']} of {res['layers']} layers"),
        ])
        show = ch.assign(ranks=["keep" if not r else "x".join(map(str, r)) for r in ch["ranks"]],
                         time_ms=(ch["time_s"] * 1e3).round(3), original_ms=(ch["time_original"] * 1e3).round(3),
                         error=ch["error"].round(4))
        table.value = show[["layer", "method", "ranks", "time_ms", "original_ms", "params", "error"]].to_html(
            index=False, classes="lrdnb-choice", border=0)

    ex = Explorer(W.VBox([W.HTML("<b>Model explorer</b>: joint rank choice under a time budget"), mode, b, lam_s,
                          totals, image, W.Box([table], layout=W.Layout(max_height="300px", overflow="auto")), status]),
                  {"mode": mode, "budget": b, "lam": lam_s}, _compute=compute, _render=render, _status=status)
    for w in (mode, b, lam_s):
        w.observe(ex.update, names="value")
    ex.update()
    return ex


def front_explorer(table: pd.DataFrame, start: str | None = None) -> Explorer:
    """Slide along the measured speed / accuracy points of the trade-off notebook
    (:func:`lrdnb.experiments.tradeoff.tradeoff_table`; ``data/tradeoff_points_cpu.csv``).

    IntSlider ``point`` steps through the points ordered by training speed-up (ToggleButtons
    ``which``: ``"front"`` = the non-dominated ones only, ``"all"``); the plot marks the selected
    point on the accuracy-drop vs speed-up plane and the table shows its measured numbers (also
    in ``.result``). Everything shown was measured: nothing is predicted here.
    """
    import ipywidgets as W
    from matplotlib.figure import Figure

    t = table.sort_values("train_speedup").reset_index(drop=True)
    drop = t["drop_vs_original"].fillna(0.0)
    which = W.ToggleButtons(options=["front", "all"], value="front" if t["on_front"].sum() > 1 else "all",
                            description="points")
    n0 = int(t["on_front"].sum()) if which.value == "front" else len(t)
    slider = W.IntSlider(description="point", min=0, max=max(n0 - 1, 0), value=0, continuous_update=True,
                         layout=W.Layout(width="480px"))
    summary, status = W.HTML(), W.HTML()
    image = W.Image(format="png", layout=W.Layout(width="640px"))
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.15, top=0.9)
    ax.scatter(t["train_speedup"], drop, s=14, color="0.6", label="all points")
    f = t[t["on_front"]]
    ax.plot(f["train_speedup"], drop[f.index], "o-", ms=4, color="tab:blue", label="non-dominated front")
    mark, = ax.plot([], [], "o", ms=12, mfc="none", mec="tab:red", mew=2, label="selected")
    ax.invert_yaxis()
    ax.set(xlabel="training speed-up over the original (x)", ylabel="accuracy drop (points)")
    ax.legend(fontsize=7, loc="lower left")

    def rows() -> pd.DataFrame:
        return t[t["on_front"]] if which.value == "front" else t

    def compute() -> dict[str, Any]:
        r = rows().iloc[min(slider.value, len(rows()) - 1)]
        get = (lambda c: float(r[c]) if c in r and pd.notna(r[c]) else float("nan"))
        return {"point": r["point"], "rule": r["rule"], "params_ratio": get("params_ratio"),
                "train_speedup": get("train_speedup"), "infer_speedup": get("infer_speedup"),
                "train_speedup_compiled": get("train_speedup_compiled"), "acc_mean": get("acc_mean"),
                "acc_sd": get("acc_sd"), "drop": float(drop[r.name]), "on_front": bool(r["on_front"])}

    def render(res: dict[str, Any]) -> None:
        mark.set_data([res["train_speedup"]], [res["drop"]])
        ax.set_title(res["point"], fontsize=9)
        image.value = _png(fig)
        summary.value = _kv_table([
            ("point", f"{res['point']} ({res['rule']}){' - on the front' if res['on_front'] else ''}"),
            ("params", f"{res['params_ratio']:.2f}x fewer"),
            ("training", f"{res['train_speedup']:.2f}x eager; {res['train_speedup_compiled']:.2f}x compiled"
                         if np.isfinite(res["train_speedup_compiled"]) else f"{res['train_speedup']:.2f}x eager"),
            ("inference", f"{res['infer_speedup']:.2f}x"),
            ("accuracy", f"{res['acc_mean']:.2f}% +- {res['acc_sd']:.2f} (drop {res['drop']:.2f} points)"),
        ])

    ex = Explorer(W.VBox([W.HTML("<b>Front explorer</b>: slide along the measured speed / accuracy points"), which,
                          slider, summary, image, status]),
                  {"which": which, "point": slider}, _compute=compute, _render=render, _status=status)

    def on_which(_: Any = None) -> None:
        slider.max = max(len(rows()) - 1, 0)
        ex.update()

    which.observe(on_which, names="value")
    slider.observe(ex.update, names="value")
    if start is not None and start in set(rows()["point"]):
        slider.value = int(np.flatnonzero(rows()["point"].to_numpy() == start)[0])
    ex.update()
    return ex

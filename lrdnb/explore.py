"""Tables and numbers behind the rank explorers of :mod:`lrdnb.widgets` (no ipywidgets here).

An *explorer table* has one row per (layer, rank) of a plan's decomposed layers: parameters and
FLOPs (:func:`lrdnb.plan.cost`), relative reconstruction error (eq. 3 for SVD, HOSVD for
Tucker2; :func:`lrdnb.factors.svd_error_curve`, :func:`lrdnb.factors.tucker2_error_curve`)
and step time where a :func:`lrdnb.rankopt.sweep` measured it. Everything the explorers show is
computed from it by plain functions, fast enough for a slider callback:

* :func:`layer_summary` - one layer at one rank, plus Algorithm 1's choice
  (:func:`algorithm1_choice`, Hajimolahoseini et al. 2023, via :func:`lrdnb.rankopt.algorithm1`);
* :func:`model_summary` - every layer's rank chosen jointly under a time budget or a Lagrange
  multiplier (:func:`lrdnb.rankopt.joint_select`; the runtime lookup tables of Idelbayev &
  Carreira-Perpinan, "beyond FLOPs").

Tables are saved and loaded as ``data/NAME.csv`` + ``.json`` with :mod:`lrdnb.results`.

Example:
    >>> data = prepare_explorer_data("resnet18", 32, timing="flops", data_dir="/tmp")  # doctest: +SKIP
    >>> round(layer_summary(data, "layer4.0.conv2", 256)["compression"], 2)            # doctest: +SKIP
    2.77
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import ranks as R
from .spec import LayerSpec, Plan, cost
from .rankopt import Timing, algorithm1, joint_select, rank_range, sweep

TIMING_FIELDS = {f for f in Timing.__dataclass_fields__ if f != "pass_"}

__all__ = [
    "EXPLORE_COLUMNS", "explorer_data", "sweep_plan", "prepare_explorer_data", "save_explorer_data",
    "load_explorer_data", "layer_names", "layer_table", "algorithm1_choice", "layer_summary",
    "joint_curves", "model_summary",
]

#: Columns of an explorer table: one row per (layer, rank); layer-level values repeat per row.
EXPLORE_COLUMNS = (
    "layer", "method", "kind", "weight_shape", "rank", "r1", "r2", "params", "flops", "error",
    "time_s", "measured", "params_before", "flops_before", "time_original", "plan_rank",
    "rank_min", "alpha", "beta", "count", "time_source", "pass",
)
_FLOP_RATE = 1e12  # nominal FLOP/s of the FLOP proxy used when no sweep is given


def _full_rank(spec: LayerSpec) -> int:
    c, s = spec.in_channels, spec.out_channels
    kk = spec.kernel[0] * spec.kernel[1]
    return c if spec.method == "tucker2" else min(c * kk, s)


def _pair(spec: LayerSpec, r1: int, beta: float) -> list[int]:
    """Ranks of ``spec``'s method at slider rank ``r1`` (Tucker2: ``r2 = floor(beta r1)``, as
    :func:`lrdnb.rankopt.sweep` builds them)."""
    return R.tucker2_pair(r1, beta, spec.out_channels) if spec.method == "tucker2" else [int(r1)]


def _rank_min(spec: LayerSpec, alpha: float | None, beta: float) -> int:
    """``R_min`` of Algorithm 1 (eq. 6), exactly as :func:`lrdnb.rankopt.rank_range` (and so the
    default sweep) computes it: the rank at the layer's compression + 1."""
    return int(rank_range(spec, alpha=alpha, beta=beta)[-1])


def _sweep_rows(sweeps: pd.DataFrame | None, spec: LayerSpec, pass_: str, time_col: str) -> tuple[dict[int, float], float | None]:
    """``({rank: seconds}, original seconds)`` of one layer from a :func:`lrdnb.rankopt.sweep`
    frame (rows matched by ``signature`` (or ``layer``), ``pass`` and method; rank 0 = original)."""
    if sweeps is None or len(sweeps) == 0:
        return {}, None
    df = sweeps
    if "signature" in df.columns:
        df = df[df["signature"] == spec.signature]
    elif "layer" in df.columns:
        df = df[df["layer"] == spec.name]
    if "pass" in df.columns:
        df = df[df["pass"] == pass_]
    col = time_col if time_col in df.columns else "median_s"
    orig = df[df["method"] == "keep"][col]
    mine = df[df["method"] == spec.method]
    times = {int(r): float(t) for r, t in zip(mine["rank"], mine[col]) if int(r) > 0 and np.isfinite(t)}
    return times, (float(orig.median()) if len(orig) else None)


def _layer_rows(spec: LayerSpec, weight: torch.Tensor, sweeps: pd.DataFrame | None, pass_: str,
                time_col: str, alpha: float | None, beta: float | None, batch: int) -> pd.DataFrame:
    from .factors import svd_error_curve, tucker2_error_curve

    if spec.method == "tucker2":
        table = tucker2_error_curve(weight).numpy()
        err = lambda rk: float(table[rk[0], rk[1]])  # noqa: E731
    else:
        curve = svd_error_curve(weight).numpy()
        err = lambda rk: float(curve[rk[0]])  # noqa: E731
    if beta is None:  # as lrdnb.rankopt.sweep: the plan's own r2 / r1
        beta = R.beta_of(spec.ranks)
    times, t_orig = _sweep_rows(sweeps, spec, pass_, time_col)
    if sweeps is not None and (not times or t_orig is None):
        raise ValueError(f"the sweep has no {pass_!r} times for layer {spec.name!r} ({spec.signature}, {spec.method}); "
                         "was it measured for another model, input size, batch or pass? Sweep again.")
    plan_rank = int(spec.ranks[0])
    rows = []
    for r in range(1, _full_rank(spec) + 1):
        rk = _pair(spec, r, beta)
        params, flops = cost(spec, spec.method, rk)
        if params >= spec.params_before and r > plan_rank and r not in times:
            break  # beyond here the decomposition no longer saves parameters
        proxy = flops * batch / _FLOP_RATE
        rows.append({"rank": r, "r1": rk[0], "r2": rk[1] if len(rk) > 1 else 0, "params": params,
                     "flops": flops, "error": err(rk), "time_s": times.get(r, math.nan if times else proxy),
                     "measured": r in times})
    df = pd.DataFrame(rows)
    df.insert(0, "layer", spec.name)
    df.insert(1, "method", spec.method)
    df.insert(2, "kind", spec.kind)
    df.insert(3, "weight_shape", "x".join(map(str, spec.weight_shape)))
    df["params_before"] = spec.params_before
    df["flops_before"] = spec.flops_before
    df["time_original"] = t_orig if times else spec.flops_before * batch / _FLOP_RATE
    df["plan_rank"], df["rank_min"] = plan_rank, _rank_min(spec, alpha, beta)
    df["alpha"] = alpha or spec.params_before / max(spec.params_after, 1)  # the plan's achieved compression
    df["beta"], df["count"] = beta, 1
    df["time_source"] = "sweep" if times else "flops"
    df["pass"] = pass_
    return df


def explorer_data(
    model: nn.Module,
    example: torch.Tensor,
    plan: Plan,
    sweeps_df: pd.DataFrame | None = None,
    pass_: str = "forward",
    time_col: str = "norm_s",
    alpha: float | None = None,
    beta: float | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Precompute the per-layer tables both explorers read: one row per (layer, rank).

    For every decomposed layer of ``plan`` and every rank from 1 up to the last rank that still
    saves parameters: ``params``/``flops`` (:func:`lrdnb.plan.cost`), relative reconstruction
    error (SVD: eq. 3 via :func:`lrdnb.factors.svd_error_curve`; Tucker2: HOSVD via
    :func:`lrdnb.factors.tucker2_error_curve`, at ``r2 = floor(beta r1)``) and step time where
    ``sweeps_df`` measured it (``time_s``, NaN elsewhere; the explorers interpolate), plus the
    layer's original time (the sweep's rank-0 ``keep`` row), plan rank and Algorithm 1's
    ``R_min`` (eq. 6).

    Args:
        model: the (undecomposed) model ``plan`` was made for; its weights give the errors.
        example: the example batch (its batch size scales the FLOP proxy).
        plan: a :class:`~lrdnb.plan.Plan` of ``model``.
        sweeps_df: concatenated :func:`lrdnb.rankopt.sweep` frames of the plan's layers (matched
            by ``signature``); ``None``: no timings, ``time_s`` is a FLOP proxy
            (``flops * batch / 1e12``, ``time_source == "flops"``), labelled as such.
        pass_: which sweep pass to read (``forward``, ``train``, ``step``).
        time_col: ``"norm_s"`` (slow episodes divided out) or ``"median_s"`` (raw).
        alpha: compression ratio whose eq.-6 rank (``alpha + 1``) is ``R_min``; default: each
            layer's achieved compression (as :func:`lrdnb.rankopt.rank_range`).
        beta: ``r2 / r1`` of Tucker2 layers; default: each layer's planned ``r2 / r1`` (as
            :func:`lrdnb.rankopt.sweep`).

    Returns:
        DataFrame with :data:`EXPLORE_COLUMNS`.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be an lrdnb Plan, got {type(plan).__name__}")
    batch = int(example.shape[0]) if isinstance(example, torch.Tensor) else 1
    specs = plan.decomposed
    if not specs:
        raise ValueError("plan decomposes no layer: nothing to explore")
    modules = dict(model.named_modules())
    missing = [s.name for s in specs if s.name not in modules]
    if missing:
        raise ValueError(f"plan layers not in the model: {missing[:5]}; was the plan made for another model?")
    from tqdm.auto import tqdm

    frames = [_layer_rows(s, modules[s.name].weight.detach().cpu(), sweeps_df, pass_, time_col, alpha, beta, batch)
              for s in tqdm(specs, desc="explorer data", unit="layer", disable=not progress)]
    return pd.concat(frames, ignore_index=True)[list(EXPLORE_COLUMNS)]


def sweep_plan(
    plan: Plan,
    ranks: str = "range",
    step: int = 8,
    passes: Sequence[str] = ("forward",),
    progress: bool = True,
    **sweep_kwargs: Any,
) -> pd.DataFrame:
    """Time every distinct layer signature of ``plan`` once with :func:`lrdnb.rankopt.sweep`.

    Args:
        ranks: ``"range"``: Algorithm 1's ``[R_min, R]`` (:func:`lrdnb.rankopt.rank_range`);
            ``"wide"``: that range plus every ``step``-th rank from ``step`` up to the last rank
            that still saves parameters (a wider curve for the explorers, a wider budget range).
        **sweep_kwargs: passed on (device, repeats, min_run_time, cache, batch, ...).

    Returns:
        The concatenated sweep frames (one block per signature, matched back by ``signature``).
    """
    from tqdm.auto import tqdm

    timing = Timing.from_dict({k: sweep_kwargs.pop(k) for k in list(sweep_kwargs) if k in TIMING_FIELDS}
                              | {"cache": sweep_kwargs.pop("cache", None)})
    if ranks not in ("range", "wide"):
        raise ValueError(f"unknown ranks {ranks!r}; valid: 'range', 'wide'")
    todo = list({s.signature + s.method: s for s in plan.decomposed}.values())
    frames = []
    for spec in tqdm(todo, desc="sweep signatures", unit="sig", disable=not progress):
        rr = set(rank_range(spec))
        if ranks == "wide":
            beta = R.beta_of(spec.ranks)
            top = next(r for r in range(_full_rank(spec), 0, -1)
                       if cost(spec, spec.method, _pair(spec, r, beta))[0] < spec.params_before or r <= max(rr))
            rr |= set(range(step, top + 1, step))
        frames.append(sweep(spec, sorted(rr), passes=passes, timing=timing, progress=False, **sweep_kwargs))
    return pd.concat(frames, ignore_index=True)


def save_explorer_data(data: pd.DataFrame, name: str, meta: dict[str, Any], folder: str | Path = "data") -> Path:
    """Write ``folder/name.csv`` + ``.json`` with :func:`lrdnb.results.write_results`; returns the CSV."""
    from .results import write_results

    return write_results(data, name, meta, folder)[0]


def load_explorer_data(name: str, folder: str | Path = "data") -> pd.DataFrame:
    """Read what :func:`save_explorer_data` wrote; provenance in ``data.attrs["meta"]``."""
    from .results import read_results

    df, meta = read_results(name, folder)
    missing = set(EXPLORE_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{folder}/{name}.csv is not an explorer table: missing columns {sorted(missing)}")
    df.attrs["meta"] = meta
    return df


def prepare_explorer_data(
    model_name: str = "resnet18",
    image_size: int = 32,
    batch: int = 8,
    ratio: float = 2.0,
    timing: str = "auto",
    pass_: str = "forward",
    sweep_ranks: str = "wide",
    step: int = 16,
    repeats: int = 3,
    min_run_time: float = 0.01,
    device: str = "auto",
    threads: int | None = None,
    cache: Any = "default",
    data_name: str | None = None,
    data_dir: str | Path = "data",
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Build the explorer table of a model: model, plan at ``ratio``, sweep (measured now or
    loaded from ``data_dir/data_name``), :func:`explorer_data`.

    What is saved is the measurement (the sweep frame, with provenance); the table is derived
    from it and the model's weights in seconds.

    Args:
        model_name: a :data:`lrdnb.models.MODELS` name (random init, seeded: no downloads).
        timing: ``"auto"`` (load the saved sweep if present, else sweep and save it), ``"load"``
            (the saved sweep or an error), ``"sweep"`` (time now on ``device`` with
            :func:`sweep_plan` and save), ``"flops"`` (no timing: FLOP proxy, nothing saved).
        threads: intra-op threads while timing (``None``/0: torch's default). One thread is far
            less noisy on a shared, oversubscribed CPU.
        data_name: default ``sweep_<model>_<image_size>px_b<batch>_<pass_>``.
        Others: see :func:`sweep_plan` / :func:`lrdnb.rankopt.sweep`.

    Returns:
        The explorer table; ``attrs["meta"]`` holds the sweep's provenance.
    """
    from .models import get_model
    from .plan import plan as make_plan
    from .provenance import provenance
    from .results import read_results, write_results

    if timing not in ("auto", "load", "sweep", "flops"):
        raise ValueError(f"unknown timing {timing!r}; valid: 'auto', 'load', 'sweep', 'flops'")
    name = data_name or f"sweep_{model_name}_{image_size}px_b{batch}_{pass_}"
    saved = Path(data_dir) / f"{name}.csv"
    torch.manual_seed(seed)
    model = get_model(model_name, num_classes=10, image_size=image_size).eval()
    example = torch.zeros(batch, 3, image_size, image_size)
    p = make_plan(model, example, ratio=ratio)
    sw, meta = None, provenance("cpu", model=model_name, image_size=image_size, batch=batch, ratio=ratio,
                                timing="flops (no timing)", seed=seed)
    if timing == "load" or (timing == "auto" and saved.exists()):
        if not saved.exists():
            raise FileNotFoundError(f"no saved sweep {saved}; run with timing='sweep' (or 'flops') to build one")
        sw, meta = read_results(name, data_dir)
    elif timing in ("auto", "sweep"):
        sw = sweep_plan(p, ranks=sweep_ranks, step=step, passes=(pass_,), device=device, repeats=repeats,
                        min_run_time=min_run_time, threads=threads or None, cache=cache, progress=progress)
        meta = provenance(device, model=model_name, image_size=image_size, batch=batch, ratio=ratio, pass_=pass_,
                          sweep_ranks=sweep_ranks, step=step, repeats=repeats, min_run_time=min_run_time,
                          threads=int(sw["threads"].iloc[0]), seed=seed)
        meta["threads"] = int(sw["threads"].iloc[0])  # what the sweep ran with, not the session's default
        write_results(sw, name, meta, data_dir)
    data = explorer_data(model, example, p, sw, pass_=pass_, progress=progress)
    data.attrs["meta"] = meta
    return data


def layer_names(data: pd.DataFrame) -> list[str]:
    """Layers of an explorer table, in model order."""
    return list(dict.fromkeys(data["layer"]))


def layer_table(data: pd.DataFrame, layer: str) -> pd.DataFrame:
    """One layer's rows, sorted by rank."""
    t = data[data["layer"] == layer]
    if t.empty:
        raise ValueError(f"unknown layer {layer!r}; valid: {layer_names(data)}")
    return t.sort_values("rank").reset_index(drop=True)


def _predicted_time(t: pd.DataFrame, rank: int) -> float:
    """Measured time at ``rank``, else linear interpolation between measured ranks (NaN outside)."""
    m = t[np.isfinite(t["time_s"].to_numpy(dtype=float))]
    if m.empty or rank < m["rank"].min() or rank > m["rank"].max():
        return math.nan
    return float(np.interp(rank, m["rank"], m["time_s"]))


def algorithm1_choice(data: pd.DataFrame, layer: str) -> tuple[int | None, str]:
    """Algorithm 1 on one layer's measured ranks in ``[R_min, plan rank]`` (calls
    :func:`lrdnb.rankopt.algorithm1`); ``(None, why)`` where nothing was measured."""

    t = layer_table(data, layer)
    lo, hi = int(t["rank_min"].iloc[0]), int(t["plan_rank"].iloc[0])
    m = t[np.isfinite(t["time_s"].to_numpy(dtype=float)) & t["rank"].between(lo, hi)]
    if t["time_source"].iloc[0] != "sweep" or len(m) < 2:
        return None, f"no sweep times in [R_min={lo}, R={hi}]"
    return algorithm1([int(r) for r in m["rank"]], [float(x) for x in m["time_s"]], float(t["time_original"].iloc[0]))


def layer_summary(data: pd.DataFrame, layer: str, rank: int) -> dict[str, Any]:
    """The numbers the layer explorer shows for ``layer`` at ``rank``.

    Returns:
        ``layer, method, rank, ranks, params, params_before, compression`` (params before /
        after), ``error``, ``time_s`` (predicted: measured or interpolated; NaN outside the
        swept range), ``measured``, ``time_original``, ``speedup``, ``time_source``.
    """
    t = layer_table(data, layer)
    row = t[t["rank"] == int(rank)]
    if row.empty:
        raise ValueError(f"rank {rank} outside [{t['rank'].min()}, {t['rank'].max()}] for layer {layer!r}")
    r = row.iloc[0]
    ranks = [int(r["r1"]), int(r["r2"])] if r["method"] == "tucker2" else [int(r["r1"])]
    t_pred = _predicted_time(t, int(rank))
    t_orig = float(r["time_original"])
    return {
        "layer": layer, "method": str(r["method"]), "rank": int(rank), "ranks": ranks,
        "params": int(r["params"]), "params_before": int(r["params_before"]),
        "compression": float(r["params_before"]) / float(r["params"]), "error": float(r["error"]),
        "time_s": t_pred, "measured": bool(r["measured"]), "time_original": t_orig,
        "speedup": t_orig / t_pred if t_pred > 0 else math.nan, "time_source": str(r["time_source"]),
    }


def joint_curves(data: pd.DataFrame) -> pd.DataFrame:
    """The runtime lookup tables :func:`lrdnb.rankopt.joint_select` takes: one row per (layer,
    option): the original layer (``rank=0``, ``error=0``, ``time_s=T``) and every rank with a
    time (``layer, rank, time_s, error, count, params``)."""
    keep = data.drop_duplicates("layer")[["layer", "time_original", "params_before"]]
    orig = pd.DataFrame({"layer": keep["layer"], "rank": 0, "time_s": keep["time_original"].astype(float),
                         "error": 0.0, "count": 1, "params": keep["params_before"]})
    timed = data[np.isfinite(data["time_s"].to_numpy(dtype=float))][["layer", "rank", "time_s", "error", "count", "params"]]
    out = pd.concat([orig, timed], ignore_index=True)
    order = {n: i for i, n in enumerate(layer_names(data))}
    return out.sort_values(["layer", "rank"], key=lambda c: c.map(order) if c.name == "layer" else c,
                           kind="stable").reset_index(drop=True)


def model_summary(data: pd.DataFrame, budget: float | None = None, lam: float | None = None,
                  curves: pd.DataFrame | None = None) -> dict[str, Any]:
    """Joint rank choice over all layers (calls :func:`lrdnb.rankopt.joint_select`).

    Args:
        budget: total time as a fraction of the original layers' total time.
        lam: Lagrange multiplier of the joint selection (used when ``budget`` is None).
        curves: :func:`joint_curves` of ``data`` (pass it to skip rebuilding it).

    Returns:
        ``choice`` (DataFrame: layer, method, rank, ranks, time_s, time_original, params,
        params_before, error), totals ``time_s``, ``time_original``, ``speedup``, ``params``,
        ``params_before``, ``compression``, ``error`` (sum of per-layer relative errors),
        ``objective`` (the selection's sum of squared relative errors), ``lam``, ``budget_s``,
        ``within_budget``, ``decomposed``, ``layers``.
    """

    curves = joint_curves(data) if curves is None else curves
    orig = curves[curves["rank"] == 0].set_index("layer")
    t_orig = float(orig["time_s"].sum())
    budget_s = None if budget is None else float(budget) * t_orig
    sel = joint_select(curves, budget=budget_s, lam=None if budget is not None else lam)
    ch = sel["table"].copy()
    info = data.drop_duplicates("layer").set_index("layer")
    r2 = data.set_index(["layer", "rank"])["r2"]
    ch["method"] = [("keep" if r == 0 else info.at[n, "method"]) for n, r in zip(ch["layer"], ch["rank"])]
    ch["ranks"] = [[] if r == 0 else ([int(r), int(r2[(n, r)])] if m == "tucker2" else [int(r)])
                   for n, r, m in zip(ch["layer"], ch["rank"], ch["method"])]
    ch["time_original"] = [float(orig.at[n, "time_s"]) for n in ch["layer"]]
    ch["params_before"] = [int(orig.at[n, "params"]) for n in ch["layer"]]
    ch = ch[["layer", "method", "rank", "ranks", "time_s", "time_original", "params", "params_before", "error"]]
    total = float(ch["time_s"].sum())
    return {
        "choice": ch, "time_s": total, "time_original": t_orig, "speedup": t_orig / total,
        "params": int(ch["params"].sum()), "params_before": int(ch["params_before"].sum()),
        "compression": float(ch["params_before"].sum() / ch["params"].sum()),
        "error": float(ch["error"].sum()), "objective": float(sel["error"]), "lam": float(sel["lam"]),
        "budget_s": budget_s, "within_budget": bool(budget_s is None or total <= budget_s * (1 + 1e-9)),
        "decomposed": int((ch["rank"] > 0).sum()), "layers": len(ch),
    }

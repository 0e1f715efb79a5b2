"""Table 2 of Hajimolahoseini et al. 2023: seconds to decompose a model, plain and with rank optimization.

* :func:`decomposition_time_table` - plain LRD (HOSVD / HOOI), with rank optimization (cold and
  warm timing cache) and with freezing, per model;
* :func:`side_by_side_time` - ours next to the paper's (:mod:`lrdnb.paper`).
"""
from __future__ import annotations

import tempfile
import time
from typing import Any, Sequence

import pandas as pd
import torch

from .. import rankopt
from ..decompose import apply
from ..freezing import make_schedule
from ..models import get_model
from ..paper import table2 as paper_table2
from ..plan import plan as make_plan
from ..provenance import provenance, resolve_device, run_start, synchronize

__all__ = ["decomposition_time_table", "side_by_side_time"]


def _timed(fn, dev: torch.device) -> tuple[Any, float]:
    synchronize(dev)
    t0 = time.perf_counter()
    out = fn()
    synchronize(dev)
    return out, time.perf_counter() - t0


def decomposition_time_table(
    models: Sequence[str] = ("resnet50",),
    ratio: float = 2.0,
    image_size: int = 64,
    batch: int = 16,
    device: str = "auto",
    weights: Sequence[str] = ("hosvd", "hooi"),
    rank_opt: bool = True,
    optimize_kwargs: dict[str, Any] | None = None,
    freezing: str = "regular",
    num_classes: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Table 2: seconds to decompose each model, plain and with rank optimization or freezing.

    Per model (weights on ``device``, as the paper decomposed on its GPUs):

    * ``lrd_<w>_s``: plan (eq. 5 ranks) + :func:`lrdnb.decompose.apply` with Tucker2 weights
      ``w`` (``hosvd`` closed form, ``hooi`` iterative; SVD layers always by truncated SVD);
    * ``rank_opt_cold_s``: plan + :func:`lrdnb.rankopt.optimize_ranks` (Algorithm 1) with an empty
      timing cache (a fresh temporary folder) + apply with ``weights[0]``; ``rank_opt_warm_s``
      the same again with that cache now full (signatures already timed are read back);
      ``optimize_cold_s`` / ``optimize_warm_s`` the rank optimization alone;
    * ``freezing_s``: plain LRD (``weights[0]``) + applying the freezing schedule
      (``freeze_s``: the schedule alone - it only toggles ``requires_grad``).

    Args:
        image_size, batch: the example batch; rank optimization times every layer at its input
            shape for this batch (the plan's shapes).
        weights: Tucker2 weight methods to time, from ``"hosvd"``, ``"hooi"``.
        rank_opt: time rank optimization (the slow column; ``False`` skips it).
        optimize_kwargs: for ``optimize_ranks`` (``device`` defaults to ``device``; ``cache`` is
            always the temporary folder).

    Returns:
        ``(table, meta)``; one row per model with the columns above plus ``layers`` (decomposed
        layers), ``signatures`` (distinct layer signatures among them: what rank optimization
        times, once each), ``rank_opt_changed`` (layers whose rank Algorithm 1 changed) and
        ``rank_opt_kept`` (layers it left dense).
    """
    bad = [w for w in weights if w not in ("hosvd", "hooi")]
    if bad or not weights:
        raise ValueError(f"weights must be a non-empty list of 'hosvd'/'hooi', got {list(weights)}")
    dev = resolve_device(device)
    started = run_start()  # date, load and commit of the run's start (provenance)
    opt_kwargs = {"device": dev, "progress": progress, **(optimize_kwargs or {})}
    rows = []
    from tqdm.auto import tqdm

    for name in tqdm(list(models), desc="models", unit="model", disable=not progress):
        torch.manual_seed(seed)
        model = get_model(name, num_classes=num_classes, image_size=image_size).eval().to(dev)
        example = torch.randn(batch, 3, image_size, image_size, device=dev)
        row: dict[str, Any] = {"model": name}
        plan_ = None
        for w in weights:
            def plain(w=w):
                p = make_plan(model, example, ratio=ratio)
                return p, apply(model, p, weights=w)

            (plan_, decomposed), row[f"lrd_{w}_s"] = _timed(plain, dev)
        row["layers"] = len(plan_.decomposed)
        row["signatures"] = len({s.signature for s in plan_.decomposed})
        sched = make_schedule(freezing)
        _, row["freeze_s"] = _timed(lambda: sched.apply(decomposed, epoch=0), dev)
        row["freezing_s"] = row[f"lrd_{weights[0]}_s"] + row["freeze_s"]
        del decomposed
        if rank_opt:
            with tempfile.TemporaryDirectory(prefix="lrdnb-cache-") as cache:
                for temp in ("cold", "warm"):
                    p0, t_plan = _timed(lambda: make_plan(model, example, ratio=ratio), dev)
                    p1, t_opt = _timed(lambda: rankopt.optimize_ranks(
                        model, example, p0, method="algorithm1", **rankopt.split_settings({**opt_kwargs, "cache": cache})), dev)
                    _, t_apply = _timed(lambda: apply(model, p1, weights=weights[0]), dev)
                    row[f"optimize_{temp}_s"] = t_opt
                    row[f"rank_opt_{temp}_s"] = t_plan + t_opt + t_apply
            before = {s.name: s for s in p0.decomposed}
            row["rank_opt_changed"] = sum(1 for s in p1.decomposed if s.name in before and s.ranks != before[s.name].ranks)
            row["rank_opt_kept"] = sum(1 for n in before if p1[n].method == "keep")
        rows.append(row)
        del model
    meta = provenance(dev, started, models=list(models), ratio=ratio, image_size=image_size, batch=batch,
                      weights=list(weights), rank_opt=rank_opt, freezing=freezing, seed=seed,
                      optimize_kwargs={k: str(v) for k, v in opt_kwargs.items()})
    meta["units"] = {"_s": "seconds (wall clock, device synchronized)"}
    return pd.DataFrame(rows), meta


def side_by_side_time(ours: pd.DataFrame) -> pd.DataFrame:
    """Our Table 2 next to the paper's (:func:`lrdnb.paper.table2`): seconds per model."""
    paper = paper_table2().rename(columns={"lrd_s": "paper_lrd_s", "rank_opt_s": "paper_rank_opt_s",
                                           "freezing_s": "paper_freezing_s"}).drop(columns="device")
    return ours.merge(paper, on="model", how="left")

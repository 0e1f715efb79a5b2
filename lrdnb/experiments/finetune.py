"""Fine-tune several model variants over several seeds (in worker processes, resumable), and the
seed statistics that Tables 3-4, Fig. 3 and the trade-off front report.

The design is paired: every variant of a run is fine-tuned from the same reference and the same
decomposition with the same :class:`FineTune` recipe, and seed ``s`` fixes the data order and the
augmentation of every epoch (:func:`lrdnb.train.fit` reseeds from ``(seed, epoch)``), so seed ``s``
of one variant and seed ``s`` of another saw the same batches. Differences are therefore taken per
seed (:func:`paired`) before they are averaged.

``workers > 1`` runs the jobs in that many spawned processes with one intra-op thread each (on a
2-core CPU two single-threaded fine-tunings finish sooner than one after the other with two
threads each). Every job checkpoints after each epoch, so an interrupted run loses at most the
epoch in flight and a rerun resumes.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from ..freezing import make_schedule
from ..provenance import resolve_device
from ..train import evaluate, fit
from .references import Recipe

__all__ = ["FineTune", "Job", "job_checkpoint", "run_jobs", "finals", "spread", "paired", "method_stats"]


@dataclass(frozen=True)
class FineTune:
    """The fine-tuning recipe every variant gets (the paper: SGD, momentum 0.9, weight decay 1e-4;
    CIFAR-10 30 epochs at a fixed lr of 0.001, ImageNet 45 cosine epochs). ``train_subset`` images of
    the reference's training set (fixed by the reference's seed) make one epoch."""

    epochs: int = 2
    lr: float = 0.01
    lr_schedule: str = "fixed"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    train_subset: int | None = 20000
    augment: bool = True
    max_steps_per_epoch: int | None = None


@dataclass
class Job:
    """One fine-tuning run: ``name`` (method or schedule) at ``seed``."""

    name: str
    seed: int
    model: nn.Module
    schedule: dict[str, Any]
    checkpoint: str | None = None
    eval_start: bool = False


def job_checkpoint(folder: str | Path | None, prefix: str, name: str, seed: int, **key: Any) -> str | None:
    """A resumable checkpoint path whose name hashes ``key`` (everything the run depends on)."""
    if folder is None:
        return None
    h = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return str(Path(folder) / f"{prefix}_{name}_s{seed}_{h}.pt")


def _run(job: Job, recipe: Recipe, ft: FineTune, device: str, threads: int | None,
         report: Callable[[tuple], None] | Any = None) -> pd.DataFrame:
    """Fine-tune one job; its history rows (plus an ``epochs_done`` 0 row when ``eval_start``).
    ``report`` (a callable, or a queue's ``put``) gets ``(name, seed, epochs)`` after every epoch
    and, at the end, ``(name, seed, epochs not reported)`` for epochs resumed from a checkpoint."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    train, test = recipe.data("train", augment=ft.augment, subset=ft.train_subset), recipe.data("test")
    rows = []
    if job.eval_start:
        rows.append(pd.DataFrame([{"epochs_done": 0, "test_acc": evaluate(job.model, test, dev)}]))
    before = [p.detach().clone() for p in job.model.parameters()]
    done = [0]

    def tick(_row: dict) -> None:
        done[0] += 1
        if report is not None:
            report((job.name, job.seed, 1))

    t0 = time.perf_counter()
    h = fit(job.model, train, test, ft.epochs, lr=ft.lr, lr_schedule=ft.lr_schedule, momentum=ft.momentum,
            weight_decay=ft.weight_decay, schedule=make_schedule(**job.schedule) if job.schedule else "none",
            batch_size=ft.batch_size, device=dev, checkpoint=job.checkpoint,
            max_steps_per_epoch=ft.max_steps_per_epoch, progress=False, seed=job.seed, on_epoch_end=tick)
    if report is not None and ft.epochs > done[0]:
        report((job.name, job.seed, ft.epochs - done[0]))
    moved = [not torch.equal(b, p.detach().cpu()) for b, p in zip(before, job.model.parameters())]
    rows.append(h.assign(epochs_done=h["epoch"] + 1, finetune_s=time.perf_counter() - t0,
                         changed_frac=sum(moved) / max(len(moved), 1)))
    out = pd.concat(rows, ignore_index=True)
    out.insert(0, "seed", job.seed)
    out.insert(0, "name", job.name)
    return out


def run_jobs(jobs: Sequence[Job], recipe: Recipe, ft: FineTune, workers: int = 1, device: str = "auto",
             progress: bool = True) -> pd.DataFrame:
    """Run every job (``workers`` spawned processes at one thread each, or in this process when 1),
    with one progress bar over all their epochs.

    Returns:
        Every job's rows, in job order: ``name, seed, epochs_done, test_acc`` and the rest of
        :func:`lrdnb.train.fit`'s columns.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs) * ft.epochs, desc=f"fine-tuning {len(jobs)} runs ({workers} worker(s))", unit="epoch",
               disable=not progress)

    def tick(msg: tuple) -> None:
        bar.update(msg[2])
        bar.set_postfix_str(f"{msg[0]} seed {msg[1]}")

    results: dict[int, pd.DataFrame] = {}
    if workers <= 1:
        for i, j in enumerate(jobs):
            results[i] = _run(j, recipe, ft, device, None, tick)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as mgr, ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            q = mgr.Queue()
            futs = {pool.submit(_run, j, recipe, ft, device, 1, q.put): i for i, j in enumerate(jobs)}
            pending = set(futs)
            try:
                while pending:
                    done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                    while not q.empty():
                        tick(q.get_nowait())
                    for f in done:
                        results[futs[f]] = f.result()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    bar.close()
    return pd.concat([results[i] for i in range(len(jobs))], ignore_index=True)


def finals(history: pd.DataFrame, by: str = "name") -> pd.DataFrame:
    """The last epoch's row of every (``by``, seed) run."""
    last = history[history["epochs_done"] == history.groupby([by, "seed"])["epochs_done"].transform("max")]
    return last.reset_index(drop=True)


def spread(values: Sequence[float]) -> dict[str, float]:
    """``n, mean, sd`` (sample, ddof 1), ``min, max`` of ``values`` (NaNs dropped)."""
    s = pd.Series(values, dtype=float).dropna()
    return {"n": int(len(s)), "mean": float(s.mean()) if len(s) else math.nan,
            "sd": float(s.std(ddof=1)) if len(s) > 1 else math.nan,
            "min": float(s.min()) if len(s) else math.nan, "max": float(s.max()) if len(s) else math.nan}


def paired(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Per-seed differences ``a - b`` (both indexed by seed): mean, sd, the 95% t interval's
    half-width and ``beyond`` = the interval excludes 0 (the difference exceeds the seed spread)."""
    from scipy import stats

    d = (a - b).dropna()
    s = spread(d.tolist())
    half = float(stats.t.ppf(0.975, s["n"] - 1) * s["sd"] / math.sqrt(s["n"])) if s["n"] > 1 else math.nan
    beyond = bool(half == half and abs(s["mean"]) > half)
    return {"mean": s["mean"], "sd": s["sd"], "n": s["n"], "ci95": half, "beyond": beyond}


def method_stats(final: pd.DataFrame, col: str = "test_acc", by: str = "name",
                 against: Sequence[str] = ("original", "lrd")) -> pd.DataFrame:
    """One row per ``by`` value: ``col`` over seeds (in %: mean, sd, min, max, n) and, for each
    name in ``against`` present, the paired drop in points (``drop_vs_<x>`` = x minus this row,
    mean, ``_sd``, ``_ci95``, ``_beyond``)."""
    wide = final.pivot_table(index="seed", columns=by, values=col, aggfunc="first") * 100
    rows = []
    for name in final[by].drop_duplicates():
        s = spread(wide[name].tolist())
        row = {by: name, "seeds": s["n"], "acc_mean": s["mean"], "acc_sd": s["sd"], "acc_min": s["min"],
               "acc_max": s["max"]}
        for base in against:
            if base in wide and base != name:
                p = paired(wide[base], wide[name])
                row.update({f"drop_vs_{base}": p["mean"], f"drop_vs_{base}_sd": p["sd"],
                            f"drop_vs_{base}_ci95": p["ci95"], f"drop_vs_{base}_beyond": p["beyond"]})
        rows.append(row)
    return pd.DataFrame(rows)

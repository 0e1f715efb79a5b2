"""Tables 3 and 4: accuracy after decomposition and fine-tuning, per acceleration method, over seeds.

Hajimolahoseini et al. 2023, Section 3: ImageNet-pretrained ResNet-50/101/152 (Table 3) and ViT
(Table 4, SVD of the MLP and patch-embedding linears) are decomposed at 2x with each method
(:mod:`lrdnb.experiments.variants`: LRD, Rank Opt. = Algorithm 1, Freezing, Combined = Rank Opt.
+ sequential freezing, Algorithm 2) and fine-tuned with SGD (momentum 0.9, weight decay 1e-4):
45 epochs with a cosine learning rate on ImageNet, 30 epochs at a fixed lr of 0.001 on CIFAR-10.

:func:`accuracy_table` runs that protocol at any scale:

1. the reference (:mod:`~lrdnb.experiments.references`): trained once per recipe until it
   plateaus, cached and shared with Fig. 3 and the trade-off notebook;
2. :func:`~lrdnb.experiments.variants.build_variants` decomposes it once per method;
3. every variant, the original included, is fine-tuned with the same :class:`FineTune` recipe
   once per seed (:mod:`~lrdnb.experiments.finetune`: same seed = same data order and
   augmentation for every method), and evaluated on the whole test set.

The table reports each method's accuracy as mean, sd, min and max over seeds and its drop vs the
original and vs LRD as the mean of per-seed (paired) differences with a 95% t interval.
Training speed-ups to trust come from ``speed_rounds`` round-robin rounds
(:func:`interleaved_train_speed`); the fine-tuning runs' own step times are indicative only (the
runs share the machine with each other).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from ..provenance import provenance, resolve_device, run_start
from ..rankopt.measure import interleaved_schedules, paired_ratios
from .finetune import FineTune, Job, finals, job_checkpoint, method_stats, run_jobs
from .references import Recipe, reference_recipe, train_reference
from .variants import METHODS, Variant, build_variants

__all__ = [
    "METHODS",
    "LABELS",
    "VIT_INCLUDE",
    "reference_recipe",
    "interleaved_train_speed",
    "accuracy_table",
    "accuracy_tables",
    "side_by_side",
    "check_targets",
]

#: our method keys -> the paper's row labels.
LABELS = {"original": "Original", "lrd": "LRD", "rank_opt": "Rank Opt.", "freezing": "Freezing",
          "combined": "Combined"}
#: Table 4's layer selection for torchvision ViTs: the two MLP linears of every encoder block and
#: the patch embedding (a conv with kernel = stride = patch, i.e. a linear on patches).
VIT_INCLUDE = ("encoder.layers.*.mlp.*", "conv_proj")
NOTE_SPEED = ("train_speedup_rr: one training step of every method timed round-robin before fine-tuning (median of "
              "paired ratios over rounds): the speed-up to trust. train_img_s comes from the fine-tuning runs "
              "themselves, which ran in parallel worker processes on a shared machine: indicative only.")


def interleaved_train_speed(
    variants: dict[str, Variant],
    input_shape: Sequence[int],
    device: str | torch.device = "auto",
    rounds: int = 5,
    min_run_time: float = 0.5,
    reference: str = "original",
    progress: bool = True,
) -> pd.DataFrame:
    """Training-step speed of each variant under its freezing schedule, timed round-robin
    (:func:`lrdnb.rankopt.measure.interleaved_schedules`: forward + backward + SGD momentum on a
    random batch of ``input_shape``; copies are timed, so the weights are left untouched).

    Returns:
        One row per method: ``method, train_img_s_rr, train_speedup_rr`` (median over rounds of the
        paired ratio ``t_reference / t``), ``train_speedup_rr_min / _max, rounds``.
    """
    per_round = interleaved_schedules({m: (v.model, v.schedule) for m, v in variants.items()}, input_shape,
                                      device=device, rounds=rounds, min_run_time=min_run_time, progress=progress)
    q = paired_ratios(per_round, reference if reference in variants else next(iter(variants)))
    return pd.DataFrame({
        "method": q["variant"], "train_img_s_rr": input_shape[0] / q["median_s"], "train_speedup_rr": q["speedup"],
        "train_speedup_rr_min": q["speedup_min"], "train_speedup_rr_max": q["speedup_max"], "rounds": q["rounds"],
    })


def _jobs(variants: dict[str, Variant], seeds: Sequence[int], key: dict[str, Any], folder: str | Path | None,
          prefix: str) -> list[Job]:
    jobs = []
    for s in seeds:  # seed-major: a partial run holds every method at the first seeds
        for m, v in variants.items():
            sched = v.schedule.to_dict()
            ranks = None if v.plan is None else {x.name: x.ranks for x in v.plan.layers}
            ck = job_checkpoint(folder, prefix, m, s, **key, schedule=sched, ranks=ranks)
            jobs.append(Job(m, s, copy.deepcopy(v.model), sched, ck, eval_start=s == seeds[0]))
    return jobs


def accuracy_table(
    model_name: str = "resnet10_cpu",
    reference: Recipe | None = None,
    finetune: FineTune = FineTune(),
    seeds: Sequence[int] = (0, 1, 2),
    workers: int = 1,
    methods: Sequence[str] = METHODS,
    ratio: float = 2.0,
    weights: str = "hosvd",
    freezing: str = "regular",
    combined_freezing: str = "sequential",
    optimize_kwargs: dict[str, Any] | None = None,
    example_batch: int = 32,
    device: str = "auto",
    checkpoint_dir: str | Path | None = None,
    reference_dir: str | Path | None = None,
    speed_rounds: int = 0,
    speed_min_run_time: float = 0.5,
    progress: bool = True,
    **plan_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Accuracy over seeds and training speed of each method after fine-tuning (Tables 3 and 4).

    Args:
        model_name: :data:`lrdnb.models.MODELS` name (paper: ``resnet50/101/152``, ``vit_b_16``).
        reference: how the reference is trained (default :func:`reference_recipe`); its test split
            (the whole test set unless ``test_subset``) scores every run.
        finetune: the recipe every method gets, the original included.
        seeds: fine-tuning seeds (data order, augmentation); the reference and the decomposition
            are the same for all.
        workers: fine-tuning processes (one thread each) when > 1.
        methods: any of :data:`METHODS`; ``original`` is needed for drops and speed-ups.
        ratio, weights, freezing, combined_freezing, optimize_kwargs, **plan_kwargs: see
            :func:`~lrdnb.experiments.variants.build_variants` (Table 4: ``include=VIT_INCLUDE``).
        example_batch: batch of the example the plan records shapes with (the rank search times
            layers at this batch).
        checkpoint_dir: resumable fine-tuning checkpoints (``None`` = none); ``reference_dir``:
            reference checkpoints (``None`` = the per-user cache).
        speed_rounds: if > 0, time a training step of every variant round-robin
            (:func:`interleaved_train_speed`) before fine-tuning: ``train_speedup_rr`` columns.

    Returns:
        ``(table, per_seed, history, meta)``. ``table``: one row per method - ``model, dataset,
        method, label, params, params_ratio, decomposed_layers, acc_before`` (right after
        decomposition, in %), ``seeds, acc_mean, acc_sd, acc_min, acc_max`` (%), ``drop_vs_original``
        and ``drop_vs_lrd`` (points, mean of per-seed differences; ``_sd``, ``_ci95``, ``_beyond``),
        ``train_img_s, train_speedup, infer_img_s, schedule`` and the ``train_speedup_rr``
        columns. ``per_seed``: one row per (method, seed) with ``acc`` (fraction), ``best_acc``,
        ``train_img_s``, ``finetune_s``, ``changed_frac`` (fraction of parameter tensors that moved).
        ``history``: every epoch of every run (``epochs_done`` 0 = right after decomposition).
        ``meta``: provenance, the reference (accuracy, plateau, training time), plans, notes.

    Raises:
        ValueError: unknown method, or no seeds.
    """
    dev = resolve_device(device)
    started = run_start()  # date, load and commit of the run's start (provenance)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {list(METHODS)}")
    if not seeds:
        raise ValueError("seeds is empty; give at least one fine-tuning seed")
    recipe = reference or reference_recipe(model_name)
    ref = train_reference(recipe, dev, reference_dir, progress)
    train = recipe.data("train", augment=False, subset=finetune.train_subset)
    example = torch.stack([train[i][0] for i in range(min(example_batch, len(train)))]).to(dev)
    opt_kw = {"device": dev, "pass_": "train", "progress": progress, **(optimize_kwargs or {})}
    t0 = time.perf_counter()
    variants = build_variants(ref.model, example, methods, ratio=ratio, weights=weights, freezing=freezing,
                              combined_freezing=combined_freezing, optimize_kwargs=opt_kw, **plan_kwargs)
    decompose_s = time.perf_counter() - t0
    ref.model.to("cpu")
    speed = None
    if speed_rounds > 0:
        speed = interleaved_train_speed(variants, (finetune.batch_size, *example.shape[1:]), dev, speed_rounds,
                                        speed_min_run_time, progress=progress)
    key = dict(ref=recipe.key(), ft=asdict(finetune), ratio=ratio, weights=weights)
    jobs = _jobs(variants, list(seeds), key, checkpoint_dir, f"finetune_{model_name}")
    hist = run_jobs(jobs, recipe, finetune, workers, str(dev), progress).rename(columns={"name": "method"})
    table, per_seed = _summarize(hist, variants, model_name, recipe.dataset)
    if speed is not None:
        table = table.merge(speed.drop(columns="rounds"), on="method", how="left")
    hist.insert(0, "model", model_name)
    hist.insert(2, "label", hist["method"].map(LABELS))
    meta = provenance(
        dev, started, experiment="accuracy_table", model=model_name, methods=list(methods), seeds=list(seeds),
        workers=workers, reference=asdict(recipe), finetune=asdict(finetune), ratio=ratio, weights=weights,
        freezing=freezing, combined_freezing=combined_freezing, example_batch=example_batch,
        speed_rounds=speed_rounds, speed_min_run_time=speed_min_run_time,
        optimize_kwargs={k: str(x) for k, x in opt_kw.items()},
        plan_kwargs={k: (list(x) if isinstance(x, tuple) else x) for k, x in plan_kwargs.items()},
    )
    plans = {m: v.plan for m, v in variants.items() if v.plan is not None}
    meta["results"] = {
        "reference": {k: v for k, v in ref.info.items()},
        "decompose_s": decompose_s,
        "plans": {m: {"summary": p.summary(), "ranks": {s.name: [s.method, s.ranks] for s in p.layers}}
                  for m, p in plans.items()},
        "rank_optimization": next((p.meta.get("rank_optimization") for p in plans.values()
                                   if p.meta.get("rank_optimization")), None),
    }
    meta["note"] = NOTE_SPEED
    return table, per_seed, hist, meta


def _summarize(hist: pd.DataFrame, variants: dict[str, Variant], model_name: str,
               dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-method table (seed statistics, paired drops) and the per-seed rows."""
    last = finals(hist, by="method")
    per_seed = pd.DataFrame({
        "model": model_name, "method": last["method"], "label": last["method"].map(LABELS), "seed": last["seed"],
        "acc": last["test_acc"], "best_acc": hist.groupby(["method", "seed"])["test_acc"].max().loc[
            list(zip(last["method"], last["seed"]))].to_numpy(),
        "epochs": last["epochs_done"], "train_img_s": last["train_img_s"], "infer_img_s": last["infer_img_s"],
        "finetune_s": last["finetune_s"], "changed_frac": last["changed_frac"],
    })
    stats = method_stats(last, by="method")
    start = hist[hist["epochs_done"] == 0].set_index("method")["test_acc"]
    rows = []
    for m, v in variants.items():
        summ = v.plan.summary() if v.plan is not None else {}
        ps = per_seed[per_seed["method"] == m]
        rows.append({"model": model_name, "dataset": dataset, "method": m, "label": LABELS[m], "params": v.params(),
                     "params_ratio": summ.get("params_ratio", 1.0), "decomposed_layers": summ.get("decomposed", 0),
                     "acc_before": 100 * float(start.get(m, float("nan"))), "schedule": v.schedule.to_dict()["name"],
                     "train_img_s": float(ps["train_img_s"].mean()), "infer_img_s": float(ps["infer_img_s"].mean()),
                     "changed_frac": float(ps["changed_frac"].mean())})
    table = pd.DataFrame(rows).merge(stats, on="method", how="left")
    if "original" in variants:
        o = table.set_index("method").loc["original"]
        table["train_speedup"] = table["train_img_s"] / o["train_img_s"]
        table["infer_speedup"] = table["infer_img_s"] / o["infer_img_s"]
    return table, per_seed


def side_by_side(
    ours: pd.DataFrame,
    paper: pd.DataFrame,
    paper_model: str | None = None,
    paper_acc: str = "cifar10_acc",
) -> pd.DataFrame:
    """Our table next to the paper's, one row per (model, method), accuracies in %.

    Args:
        ours: :func:`accuracy_table`'s table (one or several models).
        paper: :func:`lrdnb.paper.table3` or :func:`lrdnb.paper.table4`.
        paper_model: the paper's model to compare with (e.g. ``"resnet50"`` for a CPU-sized
            ResNet); ``None`` = the same model name, else the paper's first model.
        paper_acc: the paper's accuracy column (``cifar10_acc`` or ``imagenet_acc``).

    Returns:
        ``model, method, label, seeds, acc_pct, acc_sd, drop_pts, drop_sd, drop_ci95`` (ours, drop
        vs the original, paired over seeds), ``train_speedup_pct`` (round-robin where measured)
        and ``paper_model, paper_acc_pct, paper_drop_pts, paper_train_speedup_pct`` (one run each).
    """
    if paper_acc not in paper:
        raise ValueError(f"paper table has no column {paper_acc!r}; valid: {[c for c in paper if c.endswith('_acc')]}")
    out = []
    for model, d in ours.groupby("model", sort=False):
        pm = paper_model or (model if model in set(paper["model"]) else paper["model"].iloc[0])
        p = paper[paper["model"] == pm].set_index("method")
        p_orig = p[paper_acc].get("original", float("nan"))
        for _, r in d.iterrows():
            m = r["method"]
            pa = p[paper_acc].get(m, float("nan"))
            sp = r.get("train_speedup_rr", float("nan"))
            sp = r.get("train_speedup", float("nan")) if pd.isna(sp) else sp
            out.append({
                "model": model, "method": m, "label": r["label"], "seeds": r["seeds"], "acc_pct": r["acc_mean"],
                "acc_sd": r["acc_sd"], "drop_pts": 0.0 if m == "original" else r.get("drop_vs_original", float("nan")),
                "drop_sd": r.get("drop_vs_original_sd", float("nan")),
                "drop_ci95": r.get("drop_vs_original_ci95", float("nan")), "train_speedup_pct": 100 * (sp - 1),
                "paper_model": pm, "paper_acc_pct": pa, "paper_drop_pts": p_orig - pa,
                "paper_train_speedup_pct": p["train_speedup_pct"].get(m, float("nan")),
            })
    return pd.DataFrame(out)


def check_targets(table: pd.DataFrame, max_drop: float = 1.5, max_drop_combined: float = 2.5) -> pd.DataFrame:
    """The paper's claims, checked on one model's :func:`accuracy_table` table.

    * every method's mean drop vs the original within ``max_drop`` points, Combined within
      ``max_drop_combined`` (the paper's worst CIFAR-10 drop is 2.12, ResNet-50 Combined);
    * no method's drop vs LRD beyond the seed spread (its 95% interval holds 0, or it gains);
    * training speed-ups ordered as the paper's: LRD below Rank Opt. and Freezing, both below
      Combined: the round-robin ``train_speedup_rr`` where measured, else the fine-tuning runs'.

    Returns:
        ``target, value, ok`` per check (methods not in the table are skipped).
    """
    t = table.set_index("method")
    rows = []
    for m in t.index:
        if m == "original" or "drop_vs_original" not in t:
            continue
        limit = max_drop_combined if m == "combined" else max_drop
        d, sd = float(t.loc[m, "drop_vs_original"]), float(t.loc[m, "drop_vs_original_sd"])
        rows.append({"target": f"{LABELS[m]} drop <= {limit} pts", "value": f"{d:.2f} +- {sd:.2f}", "ok": d <= limit})
    for m in t.index:
        if m in ("original", "lrd") or "drop_vs_lrd" not in t or pd.isna(t.loc[m, "drop_vs_lrd"]):
            continue
        d, half = float(t.loc[m, "drop_vs_lrd"]), float(t.loc[m, "drop_vs_lrd_ci95"])
        rows.append({"target": f"{LABELS[m]} no worse than LRD beyond the seed spread",
                     "value": f"{d:.2f} (95% CI +- {half:.2f})", "ok": not (d > 0 and bool(t.loc[m, "drop_vs_lrd_beyond"]))})
    col = "train_speedup_rr" if "train_speedup_rr" in t else "train_speedup"
    sp = t[col] if col in t else pd.Series(dtype=float)
    src = " (interleaved)" if col == "train_speedup_rr" else " (fine-tuning runs)"
    for lo, hi in (("lrd", "rank_opt"), ("lrd", "freezing"), ("rank_opt", "combined"), ("freezing", "combined")):
        if lo in sp and hi in sp:
            rows.append({"target": f"speed-up {LABELS[lo]} < {LABELS[hi]}{src}",
                         "value": f"{sp[lo]:.2f}x < {sp[hi]:.2f}x", "ok": bool(sp[lo] < sp[hi])})
    return pd.DataFrame(rows, columns=["target", "value", "ok"])


def accuracy_tables(model_names: Sequence[str], **kwargs: Any
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """:func:`accuracy_table` for several models (Table 3: ResNet-50, -101, -152), concatenated;
    ``reference`` may be a ``{model: Recipe}`` mapping.

    Returns:
        ``(table, per_seed, history, meta)``; ``meta`` is the first model's provenance with every
        model's ``params`` and ``results`` under ``runs`` (keyed by model name).
    """
    if not model_names:
        raise ValueError("model_names is empty; give at least one name from lrdnb.models.MODELS")
    refs = kwargs.pop("reference", None)
    out: list[list[pd.DataFrame]] = [[], [], []]
    metas = {}
    for name in model_names:
        ref = refs.get(name) if isinstance(refs, dict) else refs
        *frames, metas[name] = accuracy_table(name, reference=ref, **kwargs)
        for acc, f in zip(out, frames):
            acc.append(f)
    meta = dict(metas[model_names[0]])
    meta["runs"] = {n: {"params": m["params"], "results": m["results"], "date": m["date"]} for n, m in metas.items()}
    table, per_seed, hist = (pd.concat(x, ignore_index=True) for x in out)
    return table, per_seed, hist, meta

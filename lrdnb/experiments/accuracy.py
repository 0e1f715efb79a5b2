"""Tables 3 and 4: accuracy after decomposition and fine-tuning, per acceleration method.

Hajimolahoseini et al. 2023, Section 3: ImageNet-pretrained ResNet-50/101/152 (Table 3) and ViT
(Table 4, SVD of the MLP and patch-embedding linears) are decomposed at 2x with each method
(:mod:`lrdnb.experiments.variants`: LRD, Rank Opt. = Algorithm 1, Freezing, Combined = Rank Opt.
+ sequential freezing, Algorithm 2) and fine-tuned with SGD (momentum 0.9, weight decay 1e-4):
45 epochs with a cosine learning rate on ImageNet, 30 epochs at a fixed lr of 0.001 on CIFAR-10.

:func:`accuracy_table` runs that protocol at any scale:

1. the reference: :func:`train_reference` builds the model (optionally with pretrained weights)
   and trains it on the dataset for ``ref_epochs`` (cached, resumable checkpoint under
   ``checkpoint_dir``; ``ref_epochs=0`` with pretrained weights is the paper's protocol);
2. :func:`~lrdnb.experiments.variants.build_variants` decomposes it once per method;
3. every variant, the original included, is fine-tuned with the same recipe, seed, data order
   and augmentation; accuracy is measured right after decomposition and after every epoch.

Training speed-ups come from :func:`lrdnb.train.fit`'s rows (mean step time over the epochs).
They are indicative only: the variants train one after another, not interleaved, so a slow
episode of a shared machine lands on whichever variant runs then (see MEASURING.md; Table 1's
:mod:`~lrdnb.experiments.throughput` measures speed properly, round-robin).
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import make_loaders
from ..models import get_model
from ..provenance import provenance, resolve_device
from ..rankopt.measure import interleaved, make_runner, paired_ratios
from ..train import evaluate, fit
from .variants import METHODS, Variant, build_variants

__all__ = [
    "METHODS",
    "LABELS",
    "VIT_INCLUDE",
    "Reference",
    "train_reference",
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
NOTE_SPEED = ("training images/s and speed-ups come from the fine-tuning runs themselves (mean step time "
              "over all epochs, data loading excluded); the variants train one after another, not "
              "interleaved, so they are indicative only - on a shared or noisy machine a slow episode lands on "
              "whichever variant runs then. Table 1 (experiments.throughput) measures speed round-robin.")


def _key(**params: Any) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Reference:
    """A trained (or loaded) reference model and where it came from."""

    model: nn.Module
    history: pd.DataFrame
    checkpoint: str | None
    reused: bool
    acc: float
    key: dict[str, Any] = field(default_factory=dict)


def train_reference(
    model_name: str,
    train_data: Dataset | DataLoader,
    test_data: Dataset | DataLoader,
    epochs: int,
    data_key: dict[str, Any],
    num_classes: int,
    image_size: int = 32,
    pretrained: bool = False,
    weights_path: str | None = None,
    lr: float = 0.05,
    lr_schedule: str = "cosine",
    batch_size: int = 64,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint_dir: str | Path | None = "data/checkpoints",
    amp: bool = False,
    max_steps_per_epoch: int | None = None,
    progress: bool = True,
) -> Reference:
    """Build ``model_name`` and train it for ``epochs`` (cached): the undecomposed reference.

    The checkpoint file name hashes every setting (``data_key`` describes the data, e.g. dataset
    name, subset sizes, image size, seed), so any other setting trains a new reference and the same
    settings reuse the file; an interrupted run resumes (:func:`lrdnb.train.fit`'s checkpoints).

    Args:
        model_name, num_classes, image_size, pretrained, weights_path: see :func:`lrdnb.models.get_model`.
        train_data, test_data: what to train and test on.
        epochs: training epochs; 0 = the model as built (e.g. pretrained weights, the paper's case).
        data_key: plain-data description of ``train_data`` / ``test_data`` for the cache key.
        lr, lr_schedule, batch_size, seed, amp, max_steps_per_epoch: see :func:`lrdnb.train.fit`.
        checkpoint_dir: where checkpoints live (``None`` = keep nothing).

    Returns:
        :class:`Reference` (model in eval mode on ``device``; ``reused`` says whether a finished
        checkpoint was loaded instead of training).
    """
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = get_model(model_name, num_classes=num_classes, pretrained=pretrained, weights_path=weights_path,
                      image_size=image_size)
    key = dict(model=model_name, num_classes=num_classes, image_size=image_size, pretrained=pretrained,
               weights_path=weights_path, epochs=epochs, lr=lr, lr_schedule=lr_schedule, batch_size=batch_size,
               seed=seed, amp=amp, max_steps_per_epoch=max_steps_per_epoch, data=data_key)
    ckpt, reused, history = None, False, pd.DataFrame()
    if epochs > 0:
        if checkpoint_dir is not None:
            ckpt = Path(checkpoint_dir) / f"reference_{model_name}_{data_key.get('dataset', 'data')}_{_key(**key)}.pt"
            if ckpt.exists():
                from ..train import load_checkpoint

                reused = len(load_checkpoint(ckpt)["history"]) >= epochs
        history = fit(model, train_data, test_data, epochs, lr=lr, lr_schedule=lr_schedule, schedule="none",
                      batch_size=batch_size, device=dev, amp=amp, checkpoint=ckpt,
                      max_steps_per_epoch=max_steps_per_epoch, progress=progress, seed=seed)
    model.to(dev).eval()
    acc = float(history["test_acc"].iloc[-1]) if len(history) else evaluate(model, test_data, dev, amp=amp)
    return Reference(model, history, None if ckpt is None else str(ckpt), reused, acc, key)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> tuple[bool, float]:
    """Whether any parameter moved, and the fraction of parameter tensors that did."""
    moved = [not torch.equal(before[n], p.detach().cpu()) for n, p in model.named_parameters()]
    return any(moved), sum(moved) / max(len(moved), 1)


def interleaved_train_speed(
    variants: dict[str, Variant],
    input_shape: Sequence[int],
    device: str | torch.device = "auto",
    rounds: int = 5,
    min_run_time: float = 0.5,
    reference: str = "original",
    progress: bool = True,
) -> pd.DataFrame:
    """Training-step speed of each variant, timed round-robin (:func:`lrdnb.rankopt.measure.interleaved`).

    A step is forward + backward + SGD momentum on a random batch of ``input_shape``, with the
    variant's frozen set (the schedule at epoch 0; a schedule whose frozen set alternates, e.g.
    sequential freezing, is timed at epochs 0 and 1 and the two times averaged per round, as
    its epochs alternate). Copies of the models are timed, so their weights are left untouched.

    Returns:
        One row per method: ``method, train_img_s_rr, train_speedup_rr`` (median over rounds of the
        paired ratio ``t_reference / t``), ``train_speedup_rr_min / _max, rounds``.
    """
    dev = resolve_device(device)
    runners = {}
    for m, v in variants.items():
        phases = (0, 1) if v.schedule.roles_at(0) != v.schedule.roles_at(1) else (0,)
        for e in phases:
            model = copy.deepcopy(v.model).to(dev)
            v.schedule.apply(model, e)
            runners[f"{m}@{e}"] = make_runner(model, input_shape, "step", dev, input_requires_grad=False)
    raw = interleaved(runners, rounds=rounds, device=dev, min_run_time=min_run_time, progress=progress)
    raw["variant"] = raw["variant"].str.rsplit("@", n=1).str[0]
    per_round = raw.groupby(["round", "variant"], as_index=False)["median_s"].mean()
    q = paired_ratios(per_round, reference if reference in variants else next(iter(variants)))
    return pd.DataFrame({
        "method": q["variant"], "train_img_s_rr": input_shape[0] / q["median_s"], "train_speedup_rr": q["speedup"],
        "train_speedup_rr_min": q["speedup_min"], "train_speedup_rr_max": q["speedup_max"], "rounds": q["rounds"],
    })


def accuracy_table(
    model_name: str = "resnet10_cpu",
    dataset: str = "fashion-mnist",
    methods: Sequence[str] = METHODS,
    epochs: int = 2,
    lr: float = 0.001,
    lr_schedule: str = "fixed",
    batch_size: int = 64,
    image_size: int = 32,
    train_subset: int | None = 10000,
    test_subset: int | None = 2000,
    ref_epochs: int = 3,
    ref_lr: float = 0.05,
    ref_lr_schedule: str = "cosine",
    pretrained: bool = False,
    weights_path: str | None = None,
    ratio: float = 2.0,
    weights: str = "hosvd",
    freezing: str = "regular",
    combined_freezing: str = "sequential",
    optimize_kwargs: dict[str, Any] | None = None,
    example_batch: int | None = None,
    augment: bool = False,
    data_root: str | None = None,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    device: str = "auto",
    amp: bool = False,
    seed: int = 0,
    max_steps_per_epoch: int | None = None,
    checkpoint_dir: str | Path | None = "data/checkpoints",
    resume: bool = False,
    speed_rounds: int = 0,
    speed_min_run_time: float = 0.5,
    progress: bool = True,
    **plan_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Accuracy and training speed of each method after fine-tuning (Tables 3 and 4).

    Args:
        model_name: :data:`lrdnb.models.MODELS` name (paper: ``resnet50/101/152``, ``vit_b_16``).
        dataset, data_root, image_size, train_subset, test_subset, augment: see
            :func:`lrdnb.data.make_loaders` (subsets fixed by ``seed``; ImageNet normalisation
            with pretrained weights, the dataset's own otherwise).
        methods: any of :data:`METHODS`; ``original`` is needed for drops and speed-ups.
        epochs, lr, lr_schedule, momentum, weight_decay, batch_size, amp, max_steps_per_epoch:
            the fine-tuning recipe (paper: CIFAR-10 30 epochs, lr 0.001 fixed; ImageNet 45
            epochs, cosine; SGD 0.9, 1e-4), identical for every method, the original included.
        ref_epochs, ref_lr, ref_lr_schedule, pretrained, weights_path: the reference
            (:func:`train_reference`; ``ref_epochs=0`` + ``pretrained`` = the paper's protocol).
        ratio, weights, freezing, combined_freezing, optimize_kwargs, **plan_kwargs: see
            :func:`~lrdnb.experiments.variants.build_variants` (Table 4: ``include=VIT_INCLUDE``).
            ``optimize_kwargs`` default to ``device``, ``pass_="train"``.
        example_batch: batch of the example the plan records shapes with, hence the batch the
            rank optimization times layers at; default ``batch_size``.
        checkpoint_dir: reference checkpoints (and fine-tuning ones with ``resume``).
        resume: checkpoint every fine-tuning run too, so a long run can be interrupted and rerun.
        speed_rounds: if > 0, also time a training step of every variant round-robin
            (:func:`interleaved_train_speed`, ``speed_min_run_time`` seconds per measurement) before
            fine-tuning: columns ``train_speedup_rr`` (+ ``_min`` / ``_max``), the speed-ups to
            trust on a noisy machine.

    Returns:
        ``(table, history, meta)``. ``table``: one row per method - ``model, dataset, method,
        label, params, params_ratio, decomposed_layers, acc_before`` (right after
        decomposition), ``acc`` (after fine-tuning), ``best_acc, drop_pts`` (original minus
        method, in points), ``train_img_s, train_speedup, train_speedup_pct, infer_img_s,
        infer_speedup, epochs, weights_changed, changed_frac`` (fraction of parameter tensors that
        moved; < 1 under freezing), ``finetune_s``. ``history``: :func:`lrdnb.train.fit`'s rows per
        method plus a start row (``epochs_done`` 0 = right after decomposition). ``meta``:
        provenance with every setting, the reference (checkpoint, reused, accuracy, rows), plan
        summaries, decomposition seconds and the note that speeds are indicative.

    Raises:
        ValueError: unknown method (from ``build_variants``) or lr schedule.
    """
    dev = resolve_device(device)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {list(METHODS)}")
    norm = "imagenet" if (pretrained or weights_path) else "dataset"
    data_key = dict(dataset=dataset, root=data_root, image_size=image_size, train_subset=train_subset,
                    test_subset=test_subset, augment=augment, normalize=norm, seed=seed)
    train_loader, test_loader = make_loaders(dataset, root=data_root, image_size=image_size, batch_size=batch_size,
                                             train_subset=train_subset, test_subset=test_subset, seed=seed,
                                             normalize=norm, augment=augment)
    n_classes = len(train_loader.dataset.classes) or 10
    ref = train_reference(model_name, train_loader, test_loader, ref_epochs, data_key, n_classes, image_size,
                          pretrained, weights_path, ref_lr, ref_lr_schedule, batch_size, dev, seed, checkpoint_dir,
                          amp, max_steps_per_epoch, progress)

    n_ex = example_batch or batch_size
    example = torch.stack([train_loader.dataset[i][0] for i in range(min(n_ex, len(train_loader.dataset)))]).to(dev)
    opt_kw = {"device": dev, "pass_": "train", "progress": progress, **(optimize_kwargs or {})}
    t0 = time.perf_counter()
    variants = build_variants(ref.model, example, methods, ratio=ratio, weights=weights, freezing=freezing,
                              combined_freezing=combined_freezing, optimize_kwargs=opt_kw, **plan_kwargs)
    decompose_s = time.perf_counter() - t0
    ref.model.to("cpu")
    speed = None
    if speed_rounds > 0:
        speed = interleaved_train_speed(variants, (batch_size, *example.shape[1:]), dev, speed_rounds,
                                        speed_min_run_time, progress=progress)

    run_key = dict(ref=ref.key, ratio=ratio, weights=weights, epochs=epochs, lr=lr, lr_schedule=lr_schedule,
                   momentum=momentum, weight_decay=weight_decay, plan=plan_kwargs)
    rows, hist = [], []
    for method, v in variants.items():
        model = v.model.to(dev)
        acc_before = evaluate(model, test_loader, dev, amp=amp)
        before = _snapshot(model)
        ck = None
        if resume and checkpoint_dir is not None:
            sched = v.schedule.to_dict()
            ck = Path(checkpoint_dir) / f"finetune_{model_name}_{dataset}_{method}_{_key(**run_key, s=sched)}.pt"
        t1 = time.perf_counter()
        h = fit(model, train_loader, test_loader, epochs, lr=lr, lr_schedule=lr_schedule, momentum=momentum,
                weight_decay=weight_decay, schedule=v.schedule, batch_size=batch_size, device=dev, amp=amp,
                checkpoint=ck, max_steps_per_epoch=max_steps_per_epoch, progress=progress, seed=seed)
        finetune_s = time.perf_counter() - t1
        changed, frac = _changed(before, model)
        summ = v.plan.summary() if v.plan is not None else {}
        step_s = float((h["train_step_s"] * h["steps"]).sum())
        rows.append({
            "model": model_name, "dataset": dataset, "method": method, "label": LABELS[method],
            "params": v.params(), "params_ratio": summ.get("params_ratio", 1.0),
            "decomposed_layers": summ.get("decomposed", 0),
            "acc_before": acc_before, "acc": float(h["test_acc"].iloc[-1]), "best_acc": float(h["test_acc"].max()),
            "train_img_s": float(h["images"].sum()) / step_s if step_s else float("nan"),
            "infer_img_s": float(h["infer_img_s"].median()),
            "epochs": int(len(h)), "weights_changed": changed, "changed_frac": frac,
            "schedule": v.schedule.to_dict().get("name", type(v.schedule).__name__), "finetune_s": finetune_s,
        })
        start = {"method": method, "label": LABELS[method], "epochs_done": 0, "test_acc": acc_before}
        h = h.assign(method=method, label=LABELS[method], epochs_done=h["epoch"] + 1)
        hist.append(pd.concat([pd.DataFrame([start]), h], ignore_index=True))
        model.to("cpu")
    table = pd.DataFrame(rows)
    if "original" in variants:
        orig = table.set_index("method").loc["original"]
        table["drop_pts"] = 100 * (orig["acc"] - table["acc"])
        table["train_speedup"] = table["train_img_s"] / orig["train_img_s"]
        table["train_speedup_pct"] = 100 * (table["train_speedup"] - 1)
        table["infer_speedup"] = table["infer_img_s"] / orig["infer_img_s"]
    if speed is not None:
        table = table.merge(speed.drop(columns="rounds"), on="method", how="left")
    history = pd.concat(hist, ignore_index=True)
    history.insert(0, "model", model_name)

    meta = provenance(
        dev, experiment="accuracy_table", model=model_name, dataset=dataset, methods=list(methods), epochs=epochs,
        lr=lr, lr_schedule=lr_schedule, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
        image_size=image_size, train_subset=train_subset, test_subset=test_subset, augment=augment,
        normalize=norm, ref_epochs=ref_epochs, ref_lr=ref_lr, ref_lr_schedule=ref_lr_schedule,
        pretrained=pretrained, weights_path=weights_path, ratio=ratio, weights=weights, freezing=freezing,
        combined_freezing=combined_freezing, example_batch=n_ex, amp=amp, seed=seed,
        max_steps_per_epoch=max_steps_per_epoch, speed_rounds=speed_rounds, speed_min_run_time=speed_min_run_time,
        optimize_kwargs={k: str(x) for k, x in opt_kw.items()},
        plan_kwargs={k: (list(x) if isinstance(x, tuple) else x) for k, x in plan_kwargs.items()},
        n_train=len(train_loader.dataset), n_test=len(test_loader.dataset),
    )
    plans = {m: v.plan for m, v in variants.items() if v.plan is not None}
    meta["results"] = {
        "reference": {"checkpoint": ref.checkpoint, "reused": ref.reused, "acc": ref.acc,
                      "rows": ref.history.to_dict("records")},
        "decompose_s": decompose_s,
        "plans": {m: {"summary": p.summary(), "ranks": {s.name: [s.method, s.ranks] for s in p.layers}}
                  for m, p in plans.items()},
        "rank_optimization": next((p.meta.get("rank_optimization") for p in plans.values()
                                   if p.meta.get("rank_optimization")), None),
    }
    meta["note"] = NOTE_SPEED + (" Columns *_rr: training steps timed round-robin (interleaved), "
                                 f"median of {speed_rounds} rounds of paired ratios - these are the ones to "
                                 "trust." if speed is not None else "")
    return table, history, meta


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
        ``model, label, acc_before_pct, acc_pct, drop_pts, train_speedup_pct`` (ours) and
        ``paper_model, paper_acc_pct, paper_drop_pts, paper_train_speedup_pct``.
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
            out.append({
                "model": model, "method": m, "label": r["label"], "acc_before_pct": 100 * r["acc_before"],
                "acc_pct": 100 * r["acc"], "drop_pts": r.get("drop_pts", float("nan")),
                "train_speedup_pct": r.get("train_speedup_pct", float("nan")),
                "paper_model": pm, "paper_acc_pct": pa, "paper_drop_pts": p_orig - pa,
                "paper_train_speedup_pct": p["train_speedup_pct"].get(m, float("nan")),
            })
    return pd.DataFrame(out)


def check_targets(table: pd.DataFrame, max_drop: float = 1.5, max_drop_combined: float = 2.5) -> pd.DataFrame:
    """The issue's acceptance targets, checked on one model's :func:`accuracy_table` table.

    * every method within ``max_drop`` points of the original, Combined within ``max_drop_combined``
      (the paper's worst CIFAR-10 drop is 2.12, ResNet-50 Combined);
    * training speed-ups ordered as the paper's: LRD below Rank Opt. and Freezing, both below
      Combined: the interleaved ``train_speedup_rr`` where measured, else the fine-tuning runs'
      ``train_speedup`` (indicative: see :data:`NOTE_SPEED`).

    Returns:
        ``target, value, ok`` per check (methods not in the table are skipped).
    """
    t = table.set_index("method")
    rows = []
    for m in t.index:
        if m == "original":
            continue
        limit = max_drop_combined if m == "combined" else max_drop
        d = float(t.loc[m, "drop_pts"])
        rows.append({"target": f"{LABELS[m]} drop <= {limit} pts", "value": round(d, 2), "ok": d <= limit})
    col = "train_speedup_rr" if "train_speedup_rr" in t else "train_speedup"
    sp = t[col] if col in t else pd.Series(dtype=float)
    src = " (interleaved)" if col == "train_speedup_rr" else " (fine-tuning runs)"
    for lo, hi in (("lrd", "rank_opt"), ("lrd", "freezing"), ("rank_opt", "combined"), ("freezing", "combined")):
        if lo in sp and hi in sp:
            rows.append({"target": f"speed-up {LABELS[lo]} < {LABELS[hi]}{src}",
                         "value": f"{sp[lo]:.2f}x < {sp[hi]:.2f}x", "ok": bool(sp[lo] < sp[hi])})
    return pd.DataFrame(rows, columns=["target", "value", "ok"])


def accuracy_tables(model_names: Sequence[str], **kwargs: Any) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """:func:`accuracy_table` for several models (Table 3: ResNet-50, -101, -152), concatenated.

    Returns:
        ``(table, history, meta)``; ``meta`` is the first model's provenance with every model's
        ``params`` and ``results`` under ``runs`` (keyed by model name).
    """
    if not model_names:
        raise ValueError("model_names is empty; give at least one name from lrdnb.models.MODELS")
    tables, hists, metas = [], [], {}
    for name in model_names:
        t, h, m = accuracy_table(name, **kwargs)
        tables.append(t)
        hists.append(h)
        metas[name] = m
    meta = dict(metas[model_names[0]])
    meta["runs"] = {n: {"params": m["params"], "results": m["results"], "date": m["date"]} for n, m in metas.items()}
    return pd.concat(tables, ignore_index=True), pd.concat(hists, ignore_index=True), meta

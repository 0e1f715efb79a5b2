"""Fine-tuning loop that measures what freezing buys, one row per epoch, resumable.

The paper's recipes (Hajimolahoseini et al. 2023, Section 3): SGD with momentum 0.9 and weight
decay 1e-4; a cosine learning rate (ImageNet, 45 epochs) or a fixed one (CIFAR-10, 30 epochs,
lr 0.001); throughput is "the average time per step over an epoch". A freezing schedule
(:mod:`lrdnb.freezing`, Algorithm 2) is applied at the start of every epoch (every step for
step-period schedules).

What a row holds (all times in seconds):

* ``train_step_s``: mean time of forward + backward + optimizer step, data loading excluded
  (CUDA is synchronised before the clock is read); ``train_step_s_median`` beside it.
* ``data_s``: mean time per step spent waiting for the batch and moving it to the device.
* ``train_img_s`` = images / summed step time; ``infer_img_s`` the same for the forward passes
  of the test-set evaluation (``torch.inference_mode``, eval mode, loading excluded).
* ``frozen`` (e.g. ``"svd:first tucker2:first+last"``), ``frozen_params``, ``trainable_params``, ``lr``.

Resuming: with ``checkpoint=path`` the model, optimizer, lr scheduler, AMP scaler, global step
and finished rows are saved after every epoch (atomically: a temp file, then ``os.replace``),
loadable with ``torch.load(weights_only=True)``. Rerunning the same call resumes after the last
finished epoch; an interrupted epoch is redone from its start. No RNG state needs saving:
torch's, numpy's and python's RNGs are reseeded from ``(seed, epoch)`` at the start of every
epoch, so shuffling and augmentation of epoch ``e`` are the same in a resumed run.

Multi-GPU: launched under ``torchrun`` (``torch.distributed`` initialised) the model is wrapped in
``DistributedDataParallel`` after every factor is unfrozen (parameters frozen at wrap time
would never be synchronised), with ``find_unused_parameters=True`` when the schedule freezes.
A ``Dataset`` gets a ``DistributedSampler``; a ``DataLoader`` you pass must shard itself.
Every rank evaluates the whole test set; rank 0 writes the checkpoint and shows progress; rows
hold rank 0's timings. For example, ``torchrun --nproc_per_node=4 finetune.py`` with::

    torch.distributed.init_process_group("nccl")
    df = fit(model, train_dataset, test_dataset, epochs=30, lr=1e-3, schedule="sequential",
             checkpoint="run.pt")  # every rank passes the same path (shared file system)
    torch.distributed.destroy_process_group()
"""
from __future__ import annotations

import os
import random
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .freezing import FreezingSchedule, frozen_summary, make_schedule, unfreeze_all
from .provenance import resolve_device, synchronize

__all__ = ["LR_SCHEDULES", "fit", "evaluate", "load_checkpoint"]

LR_SCHEDULES = ("fixed", "cosine")
CHECKPOINT_FORMAT = "lrdnb-fit-1"


def _autocast(dev: torch.device, amp: bool):
    dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    return torch.autocast(dev.type, dtype=dtype, enabled=amp)


def _seed_epoch(seed: int, epoch: int) -> None:
    s = (seed * 1_000_003 + epoch) % (2**31)
    torch.manual_seed(s)
    random.seed(s)
    try:
        import numpy as np

        np.random.seed(s)
    except ImportError:  # pragma: no cover
        pass


def _as_loader(data: Dataset | DataLoader, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    sampler = None
    if shuffle and dist.is_available() and dist.is_initialized():
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(data, shuffle=True, seed=seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler, num_workers=num_workers)


def _test_pass(model: nn.Module, loader: DataLoader, dev: torch.device, amp: bool) -> dict[str, float]:
    was_training = model.training
    model.eval()
    correct = n = 0
    loss_sum = fwd_s = 0.0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            synchronize(dev)
            t0 = time.perf_counter()
            with _autocast(dev, amp):
                out = model(x)
            synchronize(dev)
            fwd_s += time.perf_counter() - t0
            loss_sum += float(nn.functional.cross_entropy(out.float(), y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    model.train(was_training)
    return {"acc": correct / max(n, 1), "loss": loss_sum / max(n, 1), "images": n, "infer_img_s": n / fwd_s if fwd_s else float("nan")}


def evaluate(model: nn.Module, data: Dataset | DataLoader, device: str | torch.device = "auto", amp: bool = False, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (a Dataset or DataLoader of ``(x, label)``)."""
    dev = resolve_device(device)
    model.to(dev)
    return _test_pass(model, _as_loader(data, batch_size, False, 0, 0), dev, amp)["acc"]


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read what :func:`fit` wrote (``weights_only=True``): config, history rows, states."""
    obj = torch.load(str(path), map_location=map_location, weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by lrdnb.train.fit")
    return obj


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, str(tmp))
    os.replace(tmp, path)


def _config_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def _forget_state(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    for p in params:
        optimizer.state.pop(p, None)


def fit(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    test_data: Dataset | DataLoader,
    epochs: int,
    lr: float = 0.01,
    lr_schedule: str = "fixed",
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    schedule: str | FreezingSchedule | None = "none",
    batch_size: int = 64,
    device: str | torch.device = "auto",
    amp: bool = False,
    checkpoint: str | Path | None = None,
    max_steps_per_epoch: int | None = None,
    progress: bool = True,
    seed: int = 0,
    compile: bool | str = False,
    num_workers: int = 0,
    reset_momentum_on_unfreeze: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Fine-tune ``model`` with SGD under a freezing schedule; one row of metrics per epoch.

    Args:
        model: trained in place (moved to ``device``).
        train_data, test_data: Datasets (batched here) or DataLoaders of ``(x, label)``.
        epochs: total epochs; a resumed run trains only those not in the checkpoint.
        lr: learning rate (the paper: 0.001 fixed on CIFAR-10).
        lr_schedule: ``"fixed"`` or ``"cosine"`` (``CosineAnnealingLR`` over ``epochs``, per epoch).
        momentum, weight_decay: SGD settings (paper: 0.9, 1e-4). Frozen parameters get neither:
            grads are set to ``None`` and ``torch.optim.SGD`` skips such parameters.
        schedule: a :class:`~lrdnb.freezing.FreezingSchedule` or its name.
        batch_size: for Datasets.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        amp: autocast (float16 + GradScaler on CUDA, bfloat16 on CPU).
        checkpoint: file to save after every epoch and resume from.
        max_steps_per_epoch: cap on training steps per epoch (smoke runs, timing).
        progress: tqdm bars (rank 0 only).
        seed: reseeds torch / numpy / random from ``(seed, epoch)`` at every epoch start.
        compile: ``torch.compile`` the training forward (``True`` = inductor, or a backend name).
            Changing the frozen set recompiles (Dynamo guards on ``requires_grad``), see
            :mod:`lrdnb.freezing`.
        num_workers: DataLoader workers for Datasets.
        reset_momentum_on_unfreeze: drop the momentum buffer of a factor when it is unfrozen, so
            it restarts as a fresh parameter instead of replaying its last buffer (our choice;
            the paper does not say). With step periods of a few steps this all but switches
            momentum off for the factors; pass ``False`` there.
        on_epoch_end: called with each finished row, after the checkpoint is written (raising
            here interrupts the run cleanly).

    Returns:
        DataFrame, one row per epoch (finished rows from a checkpoint included); see the module doc.

    Example:
        >>> df = fit(model, train, test, epochs=30, lr=1e-3, schedule="sequential")  # doctest: +SKIP
        >>> df[["epoch", "test_acc", "train_img_s", "frozen"]]  # doctest: +SKIP
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: {list(LR_SCHEDULES)}")
    schedule = make_schedule(schedule)
    dev, distributed, rank = _placement(device)
    model.to(dev)
    train_loader = _as_loader(train_data, batch_size, True, num_workers, seed)
    test_loader = _as_loader(test_data, batch_size, False, num_workers, seed)
    opt = _Optim(model, lr, momentum, weight_decay, epochs if lr_schedule == "cosine" else None,
                 amp and dev.type == "cuda")
    config = {
        "lr": lr, "lr_schedule": lr_schedule, "momentum": momentum, "weight_decay": weight_decay,
        "schedule": schedule.to_dict(), "seed": seed, "amp": amp, "batch_size": train_loader.batch_size,
        "epochs": epochs if lr_schedule == "cosine" else None,
    }
    ckpt = Path(checkpoint) if checkpoint is not None else None
    history, global_step = _resume(ckpt, config, model, opt, dev)
    unfreeze_all(model)  # before DDP: parameters frozen at wrap time are never synchronised
    run_model = _wrap(model, dev, distributed, schedule.freezes, compile)
    if history:  # frozen set as the last finished epoch ended, so the next apply reports true changes
        schedule.apply(model, len(history) - 1, step=max(global_step - 1, 0))
    from tqdm.auto import tqdm

    show = progress and rank == 0
    bar = tqdm(range(len(history), epochs), desc="fit", unit="epoch", disable=not show, initial=len(history), total=epochs)
    for epoch in bar:
        _seed_epoch(seed, epoch)
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        info = schedule.apply(model, epoch, step=global_step)
        if reset_momentum_on_unfreeze:
            opt.forget(model, info["unfrozen"])
        epoch_lr = opt.optimizer.param_groups[0]["lr"]
        t_epoch = time.perf_counter()
        stats, global_step = _train_epoch(run_model, model, train_loader, opt, schedule, epoch, global_step, dev, amp,
                                          max_steps_per_epoch, reset_momentum_on_unfreeze, show)
        test = _test_pass(model, test_loader, dev, amp)
        if opt.scheduler is not None:
            opt.scheduler.step()
        row = _epoch_row(epoch, stats, test, info, epoch_lr, t_epoch)
        history.append(row)
        if ckpt is not None:
            if rank == 0:
                _save_checkpoint(ckpt, {"format": CHECKPOINT_FORMAT, "config": config, "history": history,
                                        "global_step": global_step, "model": model.state_dict(), **opt.state()})
            if distributed:
                dist.barrier()
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['test_acc']:.4f}", img_s=f"{row['train_img_s']:.0f}")
        if on_epoch_end is not None:
            on_epoch_end(row)
    return pd.DataFrame(history)


def _placement(device: str | torch.device) -> tuple[torch.device, bool, int]:
    """(device, distributed?, rank): under torchrun each process takes its LOCAL_RANK's GPU."""
    dev = resolve_device(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    if distributed and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    return dev, distributed, rank


class _Optim:
    """SGD with momentum and weight decay, an optional cosine schedule over ``cosine_epochs``,
    an optional CUDA GradScaler: what a checkpoint saves besides the model."""

    def __init__(self, model: nn.Module, lr: float, momentum: float, weight_decay: float,
                 cosine_epochs: int | None, scale: bool) -> None:
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cosine_epochs)
                          if cosine_epochs else None)
        self.scaler = torch.amp.GradScaler("cuda") if scale else None

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def forget(self, model: nn.Module, names: Sequence[str]) -> None:
        """Drop the momentum buffers of the parameters ``names`` (just unfrozen)."""
        params = dict(model.named_parameters())
        _forget_state(self.optimizer, [params[n] for n in names])

    def step(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def _resume(ckpt: Path | None, config: dict[str, Any], model: nn.Module, opt: _Optim,
            dev: torch.device) -> tuple[list[dict[str, Any]], int]:
    """(finished epochs' rows, global step) from ``ckpt`` when it exists (its settings must be
    ``config``); model and optimizer state restored."""
    if ckpt is None or not ckpt.exists():
        return [], 0
    state = load_checkpoint(ckpt, map_location=dev)
    diff = _config_diff(state["config"], config)
    if diff:
        raise ValueError(f"checkpoint {ckpt} was written with other settings ({'; '.join(diff)}); "
                         "pass the same settings to resume, or delete the file to start over")
    model.load_state_dict(state["model"])
    opt.load(state)
    return list(state["history"]), int(state["global_step"])


def _wrap(model: nn.Module, dev: torch.device, distributed: bool, freezes: bool, compile: bool | str) -> nn.Module:
    """The module the training steps call: DDP under torchrun (unused parameters allowed when
    factors freeze), compiled when asked."""
    run_model: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=freezes)
    if compile:
        run_model = torch.compile(run_model, backend="inductor" if compile is True else compile)
    return run_model


def _train_epoch(run_model: nn.Module, model: nn.Module, loader: DataLoader, opt: _Optim,
                 schedule: FreezingSchedule, epoch: int, global_step: int, dev: torch.device, amp: bool,
                 max_steps: int | None, reset_momentum: bool, show: bool) -> tuple[dict[str, Any], int]:
    """One epoch of SGD steps; per-step schedules (sequential freezing's phases) are applied
    before each step. Returns the epoch's step times, data time, loss sum and images."""
    from tqdm.auto import tqdm

    model.train()
    loss_fn = nn.CrossEntropyLoss()
    st: dict[str, Any] = {"step_times": [], "data_s": 0.0, "loss_sum": 0.0, "images": 0}
    n_steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    it = iter(loader)
    for _ in tqdm(range(n_steps), desc=f"epoch {epoch}", unit="step", leave=False, disable=not show):
        t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if schedule.per_step:
            changed = schedule.apply(model, epoch, step=global_step)
            if reset_momentum:
                opt.forget(model, changed["unfrozen"])
        synchronize(dev)
        t1 = time.perf_counter()
        opt.optimizer.zero_grad(set_to_none=True)  # None, not zero: SGD then skips frozen params
        with _autocast(dev, amp):
            loss = loss_fn(run_model(x), y)
        opt.step(loss)
        synchronize(dev)
        st["step_times"].append(time.perf_counter() - t1)
        st["data_s"] += t1 - t0
        st["loss_sum"] += float(loss.detach()) * len(y)
        st["images"] += len(y)
        global_step += 1
    return st, global_step


def _epoch_row(epoch: int, st: dict[str, Any], test: dict[str, float], info: dict[str, Any], lr: float,
               t_epoch: float) -> dict[str, Any]:
    """The history row of one finished epoch (see the module doc)."""
    steps, images = st["step_times"], st["images"]
    total = sum(steps)
    return {
        "epoch": epoch, "train_loss": st["loss_sum"] / max(images, 1), "test_acc": test["acc"],
        "test_loss": test["loss"], "train_step_s": total / max(len(steps), 1),
        "train_step_s_median": statistics.median(steps) if steps else float("nan"),
        "data_s": st["data_s"] / max(len(steps), 1), "train_img_s": images / total if total else float("nan"),
        "infer_img_s": test["infer_img_s"], "frozen": frozen_summary(info["frozen_roles"]),
        "frozen_params": info["frozen_params"], "trainable_params": info["trainable_params"], "lr": lr,
        "steps": len(steps), "images": images, "epoch_s": time.perf_counter() - t_epoch,
    }

"""Converged reference models, trained once per (model, recipe) and shared by every accuracy notebook.

The paper decomposes ImageNet-pretrained models and fine-tunes them: what its accuracy tables and
Fig. 3 measure is recovering a *good* model after decomposition. No pretrained weights can be
fetched on an offline CPU, so :func:`train_reference` trains the undecomposed model from scratch
on the whole training set until the test accuracy plateaus (a cosine schedule, then warm restarts
whose last epochs must no longer gain; the recipe is the cache key), then every notebook that
names the same recipe loads the same checkpoint. The checkpoints live in the per-user cache
(``$LRDNB_CACHE/references``) unless a folder is given, so the ``cpu`` and ``cpu-full`` profiles
and the trade-off notebook share one reference.

:data:`RECIPES` are the CPU references the notebooks use; :func:`plateau` states whether the last
epochs still gained accuracy.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..data import load_dataset
from ..models import get_model
from ..provenance import resolve_device
from ..rankopt.cache import default_folder
from ..train import evaluate, fit, load_checkpoint

__all__ = ["Recipe", "RECIPES", "Reference", "train_reference", "plateau", "reference_folder", "describe",
           "reference_recipe", "PLATEAU_PTS"]


@dataclass(frozen=True)
class Recipe:
    """How a reference is trained: from scratch (or from ``pretrained`` weights) with SGD momentum
    0.9 and a cosine lr over ``epochs`` (``epochs=0``: the weights as loaded, the paper's case),
    then, if ``restart_epochs``, ``restarts`` warm restarts (SGDR, Loshchilov & Hutter 2017): each
    that many more cosine epochs from ``restart_lr``. The last restart is what shows the plateau:
    if the model had not converged, another annealing cycle would still raise its accuracy."""

    model: str
    dataset: str = "fashion-mnist"
    image_size: int = 28
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool = True
    epochs: int = 8
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 5e-4
    seed: int = 0
    pretrained: bool = False
    weights_path: str | None = None
    data_root: str | None = None
    max_steps_per_epoch: int | None = None
    restart_epochs: int = 0
    restart_lr: float = 0.01
    restarts: int = 1

    def key(self) -> str:
        d = asdict(self)  # fields at their defaults leave the keys of recipes made before them unchanged
        if d["restarts"] == 1 or not self.restart_epochs:
            del d["restarts"]
        if not self.restart_epochs:
            del d["restart_epochs"], d["restart_lr"]
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def normalize(self) -> str:
        return "imagenet" if (self.pretrained or self.weights_path) else "dataset"

    def data(self, split: str, augment: bool | None = None, subset: int | None | str = "recipe"):
        """The recipe's dataset split (``augment`` / ``subset`` overridable for fine-tuning); read
        once per process and setting (the reference, the example batch, the test scores and the
        fine-tuning runs all ask for the same splits)."""
        sub = (self.train_subset if split == "train" else self.test_subset) if subset == "recipe" else subset
        aug = (self.augment and split == "train") if augment is None else augment
        return _split(self, split, aug, sub)


@lru_cache(maxsize=8)
def _split(recipe: Recipe, split: str, augment: bool, subset: int | None):
    return load_dataset(recipe.dataset, root=recipe.data_root, split=split, image_size=recipe.image_size,
                        subset=subset, seed=recipe.seed, normalize=recipe.normalize, augment=augment)


#: The CPU references: the whole Fashion-MNIST training set, flip + padded-crop augmentation, a
#: cosine lr, then warm restarts at a fifth of the first peak lr, the last of which shows whether
#: accuracy still rises (:func:`plateau`, printed in the notebooks' outputs).
RECIPES = {
    "resnet10_cpu": Recipe("resnet10_cpu", image_size=28, epochs=8, lr=0.1, restart_epochs=4, restart_lr=0.02, restarts=2),
    "vit_tiny_cpu": Recipe("vit_tiny_cpu", image_size=16, epochs=10, lr=0.05, restart_epochs=6, restart_lr=0.01, restarts=3),
}


@dataclass
class Reference:
    """A trained (or loaded) reference and where it came from."""

    model: nn.Module
    recipe: Recipe
    history: pd.DataFrame
    checkpoint: str | None
    reused: bool
    acc: float
    train_s: float
    info: dict[str, Any] = field(default_factory=dict)


def reference_folder(folder: str | Path | None = None) -> Path:
    """``folder``, else ``$LRDNB_CACHE/references`` (the per-user cache)."""
    return Path(folder) if folder is not None else default_folder() / "references"


#: A reference has plateaued when its last 2 epochs gained less than this many points (:func:`plateau`).
PLATEAU_PTS = 0.3


def plateau(history: pd.DataFrame, last: int = 2) -> float:
    """Test-accuracy gain, in points, of the last ``last`` epochs (the best of them over the best
    before them): the plateau criterion reported with every reference (< :data:`PLATEAU_PTS` = converged)."""
    acc = history["test_acc"].tolist() if len(history) else []
    if len(acc) <= last:
        return float("nan")
    return 100 * (max(acc[-last:]) - max(acc[:-last]))


def train_reference(recipe: Recipe, device: str | torch.device = "auto", folder: str | Path | None = None,
                    progress: bool = True) -> Reference:
    """Build ``recipe.model`` and train it per ``recipe``, or load the finished checkpoint.

    The checkpoint name hashes the whole recipe, so another recipe trains a new reference and an
    interrupted one resumes after its last finished epoch (:func:`lrdnb.train.fit`). A recipe with
    a warm restart first trains (or loads) the same recipe without it, then continues from there
    into its own checkpoint.

    Returns:
        :class:`Reference` (model in eval mode on ``device``; ``history`` has every epoch of both
        stages, ``train_s`` is their summed training time, ``reused`` whether nothing had to be trained).
    """
    dev = resolve_device(device)
    train, test = recipe.data("train"), recipe.data("test")
    if recipe.restart_epochs and recipe.restarts > 0:
        before = replace(recipe, restarts=recipe.restarts - 1) if recipe.restarts > 1 else replace(recipe, restart_epochs=0)
        base = train_reference(before, dev, folder, progress)
        model, epochs, lr, seed = base.model, recipe.restart_epochs, recipe.restart_lr, recipe.seed + recipe.restarts
    else:
        base = None
        torch.manual_seed(recipe.seed)
        model = get_model(recipe.model, num_classes=len(train.classes) or 10, pretrained=recipe.pretrained,
                          weights_path=recipe.weights_path, image_size=recipe.image_size)
        epochs, lr, seed = recipe.epochs, recipe.lr, recipe.seed
    ckpt, reused, history = None, False, pd.DataFrame()
    if epochs > 0:
        ckpt = reference_folder(folder) / f"reference_{recipe.model}_{recipe.dataset}_{recipe.key()}.pt"
        reused = ckpt.exists() and len(load_checkpoint(ckpt)["history"]) >= epochs
        history = fit(model, train, test, epochs, lr=lr, lr_schedule="cosine", schedule="none",
                      batch_size=recipe.batch_size, weight_decay=recipe.weight_decay, device=dev, checkpoint=ckpt,
                      max_steps_per_epoch=recipe.max_steps_per_epoch, progress=progress, seed=seed)
        history.insert(0, "stage", "restart" if base is not None else "cosine")
    model.to(dev).eval()
    acc = float(history["test_acc"].iloc[-1]) if len(history) else evaluate(model, test, dev)
    if base is not None:
        history["epoch"] += len(base.history)
        history = pd.concat([base.history, history], ignore_index=True)
        reused = reused and base.reused
    train_s = float(history["epoch_s"].sum()) if "epoch_s" in history else float("nan")
    info = {"recipe": asdict(recipe), "key": recipe.key(), "checkpoint": None if ckpt is None else str(ckpt),
            "reused": reused, "acc": acc, "train_s": train_s, "plateau_pts": plateau(history),
            "n_train": len(train), "n_test": len(test), "rows": history.to_dict("records")}
    return Reference(model, recipe, history, info["checkpoint"], reused, acc, train_s, info)


def reference_recipe(model_name: str, **changes: Any) -> Recipe:
    """The model's CPU recipe (:data:`RECIPES`; else a default :class:`Recipe`) with ``changes``
    (e.g. tiny subsets and one epoch for the smoke profile)."""
    return replace(RECIPES.get(model_name, Recipe(model_name)), **changes)


def describe(info: dict[str, Any]) -> str:
    """One line on a reference (:attr:`Reference.info`): accuracy, data, plateau, training time."""
    r = info["recipe"]
    n = r.get("restarts", 1)
    restart = (f", then {'a warm restart' if n == 1 else f'{n} warm restarts'} of {r['restart_epochs']} cosine epochs"
               f" from lr {r['restart_lr']}" if r.get("restart_epochs") and n else "")
    how = (f"{r['epochs']} cosine epochs from lr {r['lr']}{restart}, on {info['n_train']:,} training images"
           + (" (flip + crop)" if r["augment"] else "")) if r["epochs"] else "weights as loaded, not trained"
    trained = "loaded from the cache" if info["reused"] else "trained in this run"
    pl = info.get("plateau_pts", float("nan"))
    return (f"reference {r['model']}: {100 * info['acc']:.2f}% on {info['n_test']:,} test images after {how}; "
            + (f"last 2 epochs gained {pl:+.2f} points ({'plateau' if pl < PLATEAU_PTS else 'NOT plateaued'}: "
               f"< {PLATEAU_PTS}); " if pl == pl else "")
            + f"training took {info['train_s'] / 60:.1f} min ({trained}, {info['checkpoint']})")

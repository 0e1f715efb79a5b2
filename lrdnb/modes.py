"""Compression modes of the layers-targeted paper (Ahmed et al. 2022, Table 1), for ResNets.

Blocks 1-4 are torchvision's ``layer1`` .. ``layer4``; the final dense layer is ``fc``.

| mode    | layers decomposed                                                          |
|---------|----------------------------------------------------------------------------|
| vanilla | all conv layers in the 4 blocks, with the final dense layer                |
| mode1   | vanilla excluding 1x1 conv layers                                          |
| mode2   | mode1 plus the 1x1 convs, excluding the downsample layers of blocks 3 and 4 |
| mode3   | mode2 but excluding the 1x1 conv layers of block 4                         |
| mode4   | vanilla without any downsample layers                                      |
| mode5   | all 1x1 conv layers in the 4 blocks, with the final dense layer            |
"""
from __future__ import annotations

import re
from typing import Callable

from torch import nn

__all__ = ["MODES", "mode_filter"]

_BLOCK = re.compile(r"^layer([1-4])\.")


def _parts(name: str, mod: nn.Module) -> tuple[int | None, bool, bool, bool]:
    """(block 1-4 or None, is 1x1 conv, is downsample, is final fc)."""
    m = _BLOCK.match(name)
    block = int(m.group(1)) if m else None
    is_1x1 = isinstance(mod, nn.Conv2d) and tuple(mod.kernel_size) == (1, 1)
    return block, is_1x1, ".downsample." in name, name == "fc"


def _vanilla(b, one, ds, fc):
    return fc or b is not None


def _mode1(b, one, ds, fc):
    return _vanilla(b, one, ds, fc) and not one


def _mode2(b, one, ds, fc):
    return _vanilla(b, one, ds, fc) and not (ds and b in (3, 4))


def _mode3(b, one, ds, fc):
    return _mode2(b, one, ds, fc) and not (one and b == 4)


def _mode4(b, one, ds, fc):
    return _vanilla(b, one, ds, fc) and not ds


def _mode5(b, one, ds, fc):
    return fc or (b is not None and one)


MODES: dict[str, Callable[[int | None, bool, bool, bool], bool]] = {
    "vanilla": _vanilla,
    "mode1": _mode1,
    "mode2": _mode2,
    "mode3": _mode3,
    "mode4": _mode4,
    "mode5": _mode5,
}


def mode_filter(mode: str, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """``(name, module) -> bool``: is this layer decomposed under ``mode``?

    Raises:
        ValueError: unknown mode, or a model without ResNet's ``layer1..layer4`` and ``fc``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown compression mode {mode!r}; valid: {list(MODES)}")
    names = {n for n, _ in model.named_children()}
    if not {"layer1", "layer2", "layer3", "layer4", "fc"} <= names:
        raise ValueError(
            f"compression mode {mode!r} is defined for torchvision ResNets (children layer1..layer4, fc); "
            f"this model has children {sorted(names)}. Use include/exclude patterns instead."
        )
    rule = MODES[mode]
    return lambda name, mod: rule(*_parts(name, mod))

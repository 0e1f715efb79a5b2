"""lrdnb: low-rank decomposed networks that train and run fast.

Implements the methods of Hajimolahoseini et al. 2023 (rank optimization, Algorithm 1, eqs. 5-6;
sequential freezing, Algorithm 2), Ahmed et al. 2022 (rank quantization, compression modes) and
Idelbayev & Carreira-Perpinan (per-layer runtime lookup tables).

Example:
    >>> import torch, torchvision, lrdnb
    >>> model, plan = lrdnb.decompose(torchvision.models.resnet18(), torch.zeros(1, 3, 64, 64), ratio=2)
    >>> plan.to_frame()[["name", "method", "ranks"]].head(3)  # doctest: +SKIP
"""
from .decompose import apply, decompose, load, save
from .freezing import NoFreezing, RegularFreezing, SequentialFreezing, make_schedule
from .layers import FactorizedConv2d, FactorizedLinear, Tucker2Conv2d, factor_roles, is_factorized
from .plan import plan
from .spec import LayerSpec, Plan
from .rankopt import RankSearch, Timing, optimize_ranks
from .train import evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "plan", "Plan", "LayerSpec", "optimize_ranks", "RankSearch", "Timing", "apply", "decompose", "save", "load",
    "fit", "evaluate", "RegularFreezing", "SequentialFreezing", "NoFreezing", "make_schedule",
    "FactorizedLinear", "FactorizedConv2d", "Tucker2Conv2d", "factor_roles", "is_factorized",
]

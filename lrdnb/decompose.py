"""Apply a plan: fill factorized modules with factor weights (:mod:`lrdnb.factors`) and swap
them into the model; save and load decomposed models. The only module that changes a model.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .factors import svd_factors, tucker2_factors
from .layers import FactorizedConv2d, FactorizedLinear, Tucker2Conv2d, build_factorized
from .plan import LayerSpec, Plan, plan as make_plan

__all__ = [
    "WEIGHT_METHODS",
    "apply",
    "decompose",
    "save",
    "load",
]

WEIGHT_METHODS = ("hosvd", "hooi", "none")


def _fill(new: nn.Module, old: nn.Module, weights: str) -> None:
    """Copy factor weights of ``old`` into the fresh factorized module ``new``."""
    w = old.weight.detach()
    with torch.no_grad():
        if isinstance(new, (FactorizedLinear, FactorizedConv2d)):
            r = new.ranks[0]
            first, last = svd_factors(w.reshape(w.shape[0], -1), r)
            new.first.weight.copy_(first.reshape(new.first.weight.shape))
            new.last.weight.copy_(last.reshape(new.last.weight.shape))
        elif isinstance(new, Tucker2Conv2d):
            u_in, core, u_out = tucker2_factors(w, new.ranks, method=weights)
            new.first.weight.copy_(u_in.t()[:, :, None, None])
            new.core.weight.copy_(core)
            new.last.weight.copy_(u_out[:, :, None, None])
        if old.bias is not None:
            new.last.bias.copy_(old.bias.detach())


def _check_layer(spec: LayerSpec, mod: nn.Module) -> None:
    kind = {nn.Linear: "linear", nn.Conv2d: "conv2d"}.get(type(mod))
    if kind is None:
        for cls, k in ((nn.Linear, "linear"), (nn.Conv2d, "conv2d")):
            if isinstance(mod, cls):
                kind = k
    if kind != spec.kind or list(mod.weight.shape) != list(spec.weight_shape):
        got = f"{type(mod).__name__} {list(getattr(mod, 'weight', torch.empty(0)).shape)}"
        raise ValueError(
            f"plan entry {spec.name!r} expects {spec.kind} {spec.weight_shape} but the model has {got}; "
            "was the plan made for another model?"
        )


def apply(
    model: nn.Module,
    plan: Plan,
    weights: str = "hosvd",
    inplace: bool = False,
    progress: bool = False,
) -> nn.Module:
    """Replace every planned layer of ``model`` by its factorized module.

    Args:
        model: the model the plan was made for (not modified unless ``inplace``).
        plan: a :class:`~lrdnb.plan.Plan`.
        weights: ``"hosvd"`` / ``"hooi"`` (Tucker2 method; SVD layers always use the
            truncated SVD), or ``"none"`` to build the architecture only (e.g. before
            ``load_state_dict``).
        inplace: modify ``model`` itself instead of a deep copy.
        progress: show a tqdm bar over layers.

    Returns:
        The decomposed model, on the device and dtype of the original layers.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18()
        >>> x = torch.zeros(2, 3, 32, 32)
        >>> small = apply(m, make_plan(m, x))
        >>> small(x).shape
        torch.Size([2, 1000])
    """
    if weights not in WEIGHT_METHODS:
        raise ValueError(f"unknown weights {weights!r}; valid: {list(WEIGHT_METHODS)}")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be an lrdnb Plan, got {type(plan).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    specs = plan.decomposed
    if progress:
        from tqdm.auto import tqdm

        specs = tqdm(specs, desc="decompose", unit="layer")
    for spec in specs:
        try:
            old = model.get_submodule(spec.name)
        except AttributeError as e:
            raise ValueError(f"plan entry {spec.name!r} is not a submodule of this model") from e
        _check_layer(spec, old)
        new = build_factorized(spec, device=old.weight.device, dtype=old.weight.dtype)
        if weights != "none":
            _fill(new, old, weights)
        new.train(old.training)
        model.set_submodule(spec.name, new)
    return model


def decompose(
    model: nn.Module,
    example_input: Any,
    weights: str = "hosvd",
    optimize: str | None = None,
    optimize_kwargs: dict[str, Any] | None = None,
    inplace: bool = False,
    progress: bool = False,
    **plan_kwargs: Any,
) -> tuple[nn.Module, Plan]:
    """Plan, optionally optimize ranks on the device, and apply, in one call.

    Args:
        optimize: ``None``, ``"algorithm1"`` or ``"joint"`` (see :func:`lrdnb.rankopt.optimize_ranks`).
        optimize_kwargs: passed to ``optimize_ranks`` (device, pass_, budget, cache, ...).
        **plan_kwargs: passed to :func:`lrdnb.plan.plan` (ratio, selector, quantize, mode, ...).

    Returns:
        ``(decomposed_model, plan)``.

    Example:
        >>> import torchvision
        >>> m, p = decompose(torchvision.models.resnet18(), torch.zeros(1, 3, 32, 32), ratio=2)
        >>> round(p.summary()["params_ratio"], 1)
        0.5
    """
    p = make_plan(model, example_input, **plan_kwargs)
    if optimize is not None:
        from .rankopt import optimize_ranks

        p = optimize_ranks(model, example_input, p, method=optimize, **(optimize_kwargs or {}))
    return apply(model, p, weights=weights, inplace=inplace, progress=progress), p


def save(path: str | Path, model: nn.Module, plan: Plan) -> None:
    """Save a decomposed model as ``{plan JSON, state_dict}`` (loadable with ``weights_only=True``)."""
    torch.save({"format": "lrdnb-1", "plan": plan.to_json(), "state_dict": model.state_dict()}, str(path))


def load(path: str | Path, model: nn.Module, map_location: Any = "cpu") -> tuple[nn.Module, Plan]:
    """Load what :func:`save` wrote onto a fresh instance of the original architecture.

    Args:
        model: an undecomposed model of the same architecture (its weights are not used).

    Returns:
        ``(decomposed_model, plan)`` with the saved weights.
    """
    obj = torch.load(str(path), map_location=map_location, weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != "lrdnb-1":
        raise ValueError(f"{path} is not an lrdnb checkpoint (written by lrdnb.save)")
    p = Plan.from_json(obj["plan"])
    m = apply(model, p, weights="none")
    m.load_state_dict(obj["state_dict"])
    return m, p

"""Apply a plan: fill factorized modules with factor weights (:mod:`lrdnb.factors`) and swap
them into the model; save and load decomposed models. The only module that changes a model.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .factors import svd_factors, tucker2_factors
from .layers import FactorizedConv2d, FactorizedLinear, Tucker2Conv2d, build_factorized, is_factorized
from .plan import candidate_layers, check_model, layer_spec, plan as make_plan
from .spec import LayerSpec, Plan

__all__ = [
    "WEIGHT_METHODS",
    "apply",
    "decompose",
    "factorize",
    "save",
    "load",
]

WEIGHT_METHODS = ("hosvd", "hooi", "none")
#: What a plan entry must agree on with the layer it replaces.
_CHECKED_FIELDS = ("kind", "weight_shape", "bias", "stride", "padding", "dilation", "groups", "padding_mode")


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
    """Raise ``ValueError`` naming the layer and field where plan entry ``spec`` does not
    describe ``mod`` (the model is the source of truth: a hand-edited stride, padding, bias or
    shape would otherwise build a different layer)."""
    if is_factorized(mod):
        raise ValueError(f"plan entry {spec.name!r}: the model's {spec.name!r} is already decomposed "
                         f"({type(mod).__name__}); apply a plan to the original model")
    try:
        truth = layer_spec(spec.name, mod)
    except ValueError:
        raise ValueError(f"plan entry {spec.name!r} is a {spec.kind} layer, but the model's "
                         f"{spec.name!r} is a {type(mod).__name__}; was the plan made for another model?") from None
    for f in _CHECKED_FIELDS:
        mine, theirs = getattr(spec, f), getattr(truth, f)
        if _plain(mine) != _plain(theirs):
            raise ValueError(f"plan entry {spec.name!r}: {f} is {mine!r} in the plan but {theirs!r} in the model "
                             f"({type(mod).__name__}); was the plan made for another model (or edited)?")


def _plain(x: Any) -> Any:
    return list(x) if isinstance(x, (list, tuple)) else x


def _targets(model: nn.Module, plan: Plan, strict: bool) -> list[LayerSpec]:
    """Check every plan entry against ``model`` before anything changes; return the entries to
    decompose. Entries that are not submodules are an error; layers of the model that the plan
    does not list are a warning (an error with ``strict``)."""
    layers = candidate_layers(model)
    modules = dict(model.named_modules())
    missing = [s.name for s in plan if s.name not in modules]
    if missing:
        made = plan.meta.get("model")
        made = f" (the plan was made for a {made})" if made else ""
        raise ValueError(f"plan entries {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}) are not "
                         f"submodules of this {type(model).__name__}{made}; was the plan made for another model?")
    for spec in plan:  # the model's facts first: their message is the most specific
        _check_layer(spec, modules[spec.name])
    plan.check()
    unplanned = [n for n in layers if n not in {s.name for s in plan}]
    if unplanned:
        msg = (f"the plan lists no entry for {len(unplanned)} layers of this {type(model).__name__}: "
               f"{unplanned[:10]}{' ...' if len(unplanned) > 10 else ''}; they stay as they are. Was the plan "
               f"made for another model (it was made for a {plan.meta.get('model', '?')})?")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)
    return plan.decomposed


def _build(spec: LayerSpec, old: nn.Module, weights: str) -> nn.Module:
    """The factorized module of ``spec``, on ``old``'s device and dtype, filled from ``old``."""
    new = build_factorized(spec, device=old.weight.device, dtype=old.weight.dtype)
    if weights != "none":
        _fill(new, old, weights)
    new.train(old.training)
    return new


def apply(
    model: nn.Module,
    plan: Plan,
    weights: str = "hosvd",
    inplace: bool = False,
    progress: bool = False,
    strict: bool = False,
) -> nn.Module:
    """Replace every planned layer of ``model`` by its factorized module.

    The model is the source of truth: every plan entry is checked against the layer it names
    (kind, weight shape, stride, padding, dilation, groups, padding mode, bias) and its ranks
    against the layer's full rank and size before anything changes. The swap is atomic: all
    new modules are built first, then swapped in, so on any error the model is left as it was.

    Args:
        model: the model the plan was made for (not modified unless ``inplace``).
        plan: a :class:`~lrdnb.plan.Plan`.
        weights: ``"hosvd"`` / ``"hooi"`` (Tucker2 method; SVD layers always use the
            truncated SVD), or ``"none"`` to build the architecture only (e.g. before
            ``load_state_dict``).
        inplace: modify ``model`` itself instead of a deep copy.
        progress: show a tqdm bar over layers.
        strict: raise instead of warning when the model has layers the plan does not list.

    Returns:
        The decomposed model, on the device and dtype of the original layers.

    Raises:
        ValueError: an entry that is not a submodule, does not match its layer, or has ranks
            that cannot be built or would not shrink the layer (the message names the layer).

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18()
        >>> x = torch.zeros(2, 3, 32, 32)
        >>> small = apply(m, make_plan(m, x))
        >>> small(x).shape
        torch.Size([2, 1000])
    """
    check_model(model, "apply")
    if weights not in WEIGHT_METHODS:
        raise ValueError(f"unknown weights {weights!r}; valid: {list(WEIGHT_METHODS)}")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be an lrdnb Plan, got {type(plan).__name__}")
    specs = _targets(model, plan, strict)
    if not inplace:
        model = copy.deepcopy(model)
    if progress:
        from tqdm.auto import tqdm

        specs = tqdm(specs, desc="decompose", unit="layer")
    new = {s.name: _build(s, model.get_submodule(s.name), weights) for s in specs}
    for name, mod in new.items():  # nothing above changed the model; nothing below can fail
        model.set_submodule(name, mod)
    return model


def factorize(module: nn.Module, method: str, ranks: Sequence[int], weights: str = "hosvd") -> nn.Module:
    """The factorized copy of one dense ``nn.Linear`` / ``nn.Conv2d`` at ``ranks`` (as
    tltorch's ``FactorizedLinear.from_linear``). Ranks are checked against the full rank but,
    unlike :func:`apply`, not against the layer's size: at full rank the copy reproduces the
    layer exactly (the oracle of the tests).

    Example:
        >>> f = factorize(nn.Linear(8, 6), "svd", [6])
        >>> f.ranks
        (6,)
    """
    spec = layer_spec("layer", module).with_ranks(list(ranks), method=method)
    spec.check(smaller=False)
    return _build(spec, module, weights)


def decompose(
    model: nn.Module,
    example: Any = None,
    weights: str = "hosvd",
    optimize: str | None = None,
    optimize_kwargs: dict[str, Any] | None = None,
    inplace: bool = False,
    progress: bool = False,
    *,
    example_args: Sequence[Any] | None = None,
    example_kwargs: Mapping[str, Any] | None = None,
    **plan_kwargs: Any,
) -> tuple[nn.Module, Plan]:
    """Plan, optionally optimize ranks on the device, and apply, in one call.

    Args:
        example: one input the model accepts: a tensor (or a list) is called as
            ``model(example)``, a tuple as ``model(*example)``, a dict as ``model(**example)``.
        optimize: ``None``, ``"algorithm1"`` or ``"joint"`` (see :func:`lrdnb.rankopt.optimize_ranks`).
        optimize_kwargs: passed to ``optimize_ranks`` (``search=RankSearch(...)``,
            ``timing=Timing(...)``, ``budget``, ``progress``).
        example_args, example_kwargs: the example call given explicitly instead of ``example``,
            ``model(*example_args, **example_kwargs)``: a torchvision detection model takes a
            list of images, ``example_args=([img],)`` (or ``example=([img],)``).
        **plan_kwargs: passed to :func:`lrdnb.plan.plan` (ratio, selector, quantize, mode, ...).

    Returns:
        ``(decomposed_model, plan)``.

    Example:
        >>> import torchvision
        >>> m, p = decompose(torchvision.models.resnet18(), torch.zeros(1, 3, 32, 32), ratio=2)
        >>> round(p.summary()["params_ratio"], 1)
        0.5
    """
    check_model(model, "decompose")
    p = make_plan(model, example, example_args=example_args, example_kwargs=example_kwargs, **plan_kwargs)
    if optimize is not None:
        from .rankopt import optimize_ranks

        given = example if example is not None else (example_args if example_args is not None else example_kwargs)
        p = optimize_ranks(model, given, p, method=optimize, **(optimize_kwargs or {}))
    return apply(model, p, weights=weights, inplace=inplace, progress=progress), p


def save(path: str | Path, model: nn.Module, plan: Plan) -> None:
    """Save a decomposed model as ``{plan JSON, state_dict}`` (loadable with ``weights_only=True``)."""
    torch.save({"format": "lrdnb-1", "plan": plan.to_json(), "state_dict": model.state_dict()}, str(path))


def _read_checkpoint(path: str | Path, map_location: Any) -> dict[str, Any]:
    """The dict :func:`save` wrote, read with ``weights_only=True``; anything else is a
    ``ValueError`` that says so (never torch's advice to load it unsafely)."""
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes), not an lrdnb checkpoint (written by lrdnb.save)")
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - arbitrary bytes fail anywhere in the unpickler (IndexError, KeyError, ...)
        raise ValueError(f"{path} is not an lrdnb checkpoint (written by lrdnb.save): torch.load cannot read it "
                         f"as one ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != "lrdnb-1" or not isinstance(obj.get("plan"), str):
        raise ValueError(f"{path} is not an lrdnb checkpoint (written by lrdnb.save)")
    return obj


def load(path: str | Path, model: nn.Module, map_location: Any = "cpu") -> tuple[nn.Module, Plan]:
    """Load what :func:`save` wrote onto a fresh instance of the original architecture.

    Args:
        path: a file written by :func:`save`.
        model: an undecomposed model of the same architecture (its weights are not used).
        map_location: as for ``torch.load``.

    Returns:
        ``(decomposed_model, plan)`` with the saved weights.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` (the architecture is needed).
        ValueError: ``path`` is empty or not a checkpoint :func:`save` wrote.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load needs the original architecture as model (an undecomposed nn.Module to rebuild "
                        f"from the saved plan), got {type(model).__name__}")
    obj = _read_checkpoint(path, map_location)
    p = Plan.from_json(obj["plan"])
    m = apply(model, p, weights="none")
    m.load_state_dict(obj["state_dict"])
    return m, p

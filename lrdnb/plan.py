"""Planning: which layers of a model to decompose, how, at which ranks, and why.

:func:`plan` walks a model, records every candidate layer's input shape with forward hooks on
an example batch, picks a method (SVD for Linear / 1x1 / flattened convs, Tucker2 for KxK
convs) and ranks (eq. 5/6 ratio rule, VBMF, energy, or fixed), applies rank quantization and
compression modes (layers-targeted paper), and keeps a layer, with the reason, wherever a
decomposition would not reduce its parameters. The plan itself is plain data (:mod:`lrdnb.spec`).
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import ranks as R
from .modes import MODES, mode_filter
from .spec import KINDS, METHODS, LayerSpec, Plan, check_ranks, cost

__all__ = ["LayerSpec", "Plan", "plan", "SELECTORS", "METHODS", "KINDS", "candidate_layers", "layer_spec",
           "example_call", "check_model"]

SELECTORS = ("ratio", "vbmf", "energy", "fixed")
_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def check_model(model: Any, what: str) -> None:
    """Raise ``TypeError`` naming what was passed unless ``model`` is an ``nn.Module``."""
    if isinstance(model, nn.Module):
        return
    hint = ""
    if isinstance(model, Mapping):
        hint = " (a state_dict? load it into the model's architecture first: model.load_state_dict(sd))"
    elif isinstance(model, (str, Path)):
        hint = " (a path? build the model and load its weights first)"
    raise TypeError(f"{what} needs a torch.nn.Module as model, got {type(model).__name__}{hint}")


def example_call(
    example: Any = None,
    example_args: Sequence[Any] | None = None,
    example_kwargs: Mapping[str, Any] | None = None,
) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` of the example call ``model(*args, **kwargs)``.

    ``example`` is one input: a tensor (or a list, e.g. a detection model's list of images) is
    called as ``model(example)``, a tuple as ``model(*example)``, a dict as ``model(**example)``.
    ``example_args`` / ``example_kwargs`` say the call explicitly (a detection model:
    ``example_args=([img],)``); give one form or the other, not both.
    """
    if example is not None and (example_args is not None or example_kwargs is not None):
        raise TypeError("give either example or example_args / example_kwargs, not both")
    if example is None:
        if example_args is None and example_kwargs is None:
            raise TypeError("needs an example call: example=batch, or example_args=(...) / example_kwargs={...}")
        if example_args is not None and not isinstance(example_args, tuple):
            raise TypeError(f"example_args must be a tuple of positional arguments, got "
                            f"{type(example_args).__name__}; a model that takes a list of images is called "
                            "with example_args=([img],)")
        if example_kwargs is not None and not isinstance(example_kwargs, Mapping):
            raise TypeError(f"example_kwargs must be a dict, got {type(example_kwargs).__name__}")
        return tuple(example_args or ()), dict(example_kwargs or {})
    if isinstance(example, tuple):
        return example, {}
    if isinstance(example, Mapping):
        return (), dict(example)
    return (example,), {}


def _tensors(x: Any) -> list[torch.Tensor]:
    """Every tensor inside nested tuples, lists and dicts."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def _record_shapes(model: nn.Module, args: tuple, kwargs: dict[str, Any], names: Sequence[str]) -> dict[str, tuple]:
    """``{layer: (input shape, output shape, reads the example input itself)}`` from one forward."""
    shapes: dict[str, tuple] = {}
    handles = []
    modules = dict(model.named_modules())
    given = _tensors((args, kwargs))
    for n in names:
        def hook(mod, inp, out, n=n):
            if n not in shapes and inp and isinstance(inp[0], torch.Tensor):
                shapes[n] = (list(inp[0].shape), list(out.shape), any(inp[0] is g for g in given))
        handles.append(modules[n].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"lrdnb: while running the example call model(*args, **kwargs) with {len(args)} positional "
                       f"and {len(kwargs)} keyword arguments; a model that takes a list (torchvision detection) "
                       "is called with example_args=([img],)")
        raise
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def _functional_children(model: nn.Module) -> set[str]:
    """Linear layers whose weight a parent reads directly (MultiheadAttention.out_proj)."""
    out = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            for child, _ in mod.named_children():
                out.add(f"{name}.{child}" if name else child)
    return out


def _kind(mod: nn.Module) -> str | None:
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, nn.Conv2d):
        return "conv2d"
    for cls in _UNSUPPORTED:
        if isinstance(mod, cls):
            return cls.__name__.lower()
    return None


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of every layer a plan of ``model`` lists: ``nn.Linear`` and
    ``nn.Conv2d`` (decomposed where it pays) and the other convolutions (listed as kept)."""
    return {n: m for n, m in model.named_modules() if _kind(m) is not None}


def layer_spec(name: str, mod: nn.Module) -> LayerSpec:
    """The model's own description of layer ``mod`` (kind, weight shape, bias and conv
    hyperparameters; method ``keep``): what a plan entry is checked against."""
    kind = _kind(mod)
    if kind is None:
        raise ValueError(f"layer {name!r} is a {type(mod).__name__}, not one of the layers a plan lists "
                         "(Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d)")
    spec = LayerSpec(name=name, kind=kind, weight_shape=list(mod.weight.shape), bias=mod.bias is not None)
    if kind != "linear":
        spec.stride, spec.dilation = list(mod.stride), list(mod.dilation)
        spec.padding = mod.padding if isinstance(mod.padding, str) else list(mod.padding)
        spec.padding_mode, spec.groups = mod.padding_mode, mod.groups
    return spec


def _keep(spec: LayerSpec, reason: str) -> LayerSpec:
    spec.method, spec.ranks, spec.reason = "keep", [], reason
    spec.params_after, spec.flops_after = spec.params_before, spec.flops_before
    return spec


def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return bool(patterns) and any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan(
    model: nn.Module,
    example: Any = None,
    ratio: float = 2.0,
    selector: str = "ratio",
    ranks: Mapping[str, int | Sequence[int]] | None = None,
    beta: float = 1.0,
    quantize: int | None = None,
    quantize_mode: str = "floor",
    mode: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    final_fc_ratio: float | None = None,
    final_fc: str | None = None,
    vbmf_weakening: float = 1.0,
    energy: float = 0.9,
    *,
    example_args: Sequence[Any] | None = None,
    example_kwargs: Mapping[str, Any] | None = None,
) -> Plan:
    """Plan a low-rank decomposition of ``model``.

    Args:
        model: any ``nn.Module``; candidates are ``nn.Linear`` and ``nn.Conv2d`` with
            ``groups == 1``. Other convolutions (Conv1d/3d, transposed) are listed as kept.
        example: one input the model accepts; forward hooks record each layer's input shape. A
            tensor (or a list) is called as ``model(example)``, a tuple as ``model(*example)``,
            a dict as ``model(**example)``.
        ratio: target compression ``alpha`` per layer (eq. 5 for Tucker2, ``C S / (r (C+S))``
            for SVD).
        selector: ``"ratio"`` (paper's parameter-reduction rule), ``"vbmf"`` (weakened
            EVBMF on the weights), ``"energy"`` (singular-value energy) or ``"fixed"``
            (only the layers named in ``ranks``).
        ranks: per-layer fixed ranks ``{name: r or (r1, r2)}``; override the selector.
        beta: ``r2 = beta * r1`` for Tucker2 (eq. 5).
        quantize: round ranks to multiples of this (rank quantization); ``None`` = off.
        quantize_mode: ``"floor"``, ``"nearest"`` or ``"ceil"``.
        mode: compression mode of the layers-targeted paper (``"vanilla"``, ``"mode1"`` ..
            ``"mode5"``; ResNets); ``None`` = every candidate.
        include, exclude: fnmatch patterns on layer names (``"layer4.*"``).
        filter_fn: ``filter_fn(module, name) -> bool``, torchao-style selection.
        final_fc_ratio: separate ratio for the final classifier (layers-targeted paper).
        final_fc: name of the final classifier; default: the last ``nn.Linear``.
        vbmf_weakening: weakening factor in [0, 1] for ``selector="vbmf"``.
        energy: kept energy fraction for ``selector="energy"``.
        example_args, example_kwargs: the example call given explicitly,
            ``model(*example_args, **example_kwargs)``, instead of ``example``: a model with
            several inputs, or one that takes a list (a torchvision detection model:
            ``example_args=([img],)``, or ``example=([img],)``).

    Returns:
        A :class:`Plan`; layers kept say why in ``reason``.

    Example:
        >>> import torchvision
        >>> p = plan(torchvision.models.resnet18(), torch.zeros(1, 3, 64, 64))
        >>> p["layer4.0.conv2"].ranks
        [309, 309]
    """
    check_model(model, "plan")
    args, kwargs = example_call(example, example_args, example_kwargs)
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; valid: {list(SELECTORS)}")
    R._check_alpha(ratio)
    if final_fc_ratio is not None:
        R._check_alpha(final_fc_ratio)
    if selector == "fixed" and not ranks:
        raise ValueError("selector='fixed' needs ranks={layer_name: rank or (r1, r2)}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown compression mode {mode!r}; valid: {list(MODES)}")
    modules = candidate_layers(model)
    if ranks:
        missing = [n for n in ranks if n not in modules]
        if missing:
            raise ValueError(f"ranks name layers not in the model (or not Linear / Conv2d layers): {missing}")
    if not modules:
        raise ValueError("model has no nn.Linear or nn.Conv2d layers to decompose")
    shapes = _record_shapes(model, args, kwargs, list(modules))
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    final_fc = final_fc or (linears[-1] if linears else None)
    select = _Selection(_functional_children(model), mode_filter(mode, model) if mode else None, mode,
                        include, exclude, filter_fn)
    layers: list[LayerSpec] = []
    clamped: list[str] = []  # at rank 1 but still short of the ratio asked for
    for name, mod in modules.items():
        spec = layer_spec(name, mod)
        if name in shapes:
            spec.input_shape, spec.output_shape, reads_input = shapes[name]
            spec.input_grad = not reads_input
        spec.params_before, spec.flops_before = cost(spec, "keep", [])
        why_not = select.why_not(name, mod, spec, name in shapes)
        if why_not:
            layers.append(_keep(spec, why_not))
            continue
        alpha = final_fc_ratio if (final_fc_ratio is not None and name == final_fc) else ratio
        layers.append(_choose(spec, mod, selector, ranks, alpha, beta, quantize, quantize_mode,
                              vbmf_weakening, energy))
        if selector == "ratio" and name not in (ranks or {}) and _short_of_ratio(spec, alpha):
            clamped.append(name)
    _warn_clamped(clamped, layers, ratio)
    first = args[0] if len(args) == 1 and not kwargs else None
    meta = {
        "model": type(model).__name__,
        "example_shape": list(first.shape) if isinstance(first, torch.Tensor) else None,
        "ratio": ratio, "selector": selector, "beta": beta, "quantize": quantize,
        "quantize_mode": quantize_mode, "mode": mode, "include": list(include or []),
        "exclude": list(exclude or []), "final_fc": final_fc, "final_fc_ratio": final_fc_ratio,
        "vbmf_weakening": vbmf_weakening, "energy": energy,
        "model_params": sum(p.numel() for p in model.parameters()),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    out = Plan(layers, meta)
    out.check()  # what apply will check, so a plan from here always applies
    return out


@dataclass
class _Selection:
    """Which candidate layers :func:`plan` decomposes; :meth:`why_not` says why one is kept."""

    functional: set[str]
    in_mode: Callable[[str, nn.Module], bool] | None
    mode: str | None
    include: Sequence[str] | None
    exclude: Sequence[str] | None
    filter_fn: Callable[[nn.Module, str], bool] | None

    def why_not(self, name: str, mod: nn.Module, spec: LayerSpec, called: bool) -> str:
        """The reason to keep layer ``name``, or ``""`` to decompose it."""
        if spec.kind not in ("linear", "conv2d"):
            return f"{type(mod).__name__}: not supported (only Linear and Conv2d are decomposed)"
        if name in self.functional:
            return "weight read directly by nn.MultiheadAttention; cannot be replaced"
        if not called:
            return "not called by the example forward (no input shape)"
        if spec.groups != 1:
            return f"grouped/depthwise conv (groups={spec.groups}) is not decomposed"
        if self.in_mode is not None and not self.in_mode(name, mod):
            return f"not selected by compression mode {self.mode!r}"
        if self.include and not _matches(name, self.include):
            return "not matched by include"
        if _matches(name, self.exclude):
            return "matched by exclude"
        if self.filter_fn is not None and not self.filter_fn(mod, name):
            return "rejected by filter_fn"
        return ""


def _short_of_ratio(spec: LayerSpec, alpha: float) -> bool:
    """At rank 1 and still short of compression ``alpha`` (the rank rule wanted below 1)."""
    bias = spec.out_channels if spec.bias else 0  # the ratio rules count weights only
    return set(spec.ranks) == {1} and (spec.params_after - bias) * alpha > spec.params_before - bias


def _warn_clamped(names: Sequence[str], layers: Sequence[LayerSpec], ratio: float) -> None:
    """One warning for the layers the ratio rule put at rank 1 and that would need less than
    rank 1 to reach the ratio (an extreme ratio: they keep almost none of their weights)."""
    if names:
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        warnings.warn(f"ratio {ratio:g} leaves {len(names)} of {sum(s.method != 'keep' for s in layers)} "
                      f"decomposed layers at rank 1, short of the ratio ({list(names[:5])}{more}): they keep "
                      "almost none of their weights; use a smaller ratio", UserWarning, stacklevel=3)


def _method_for(spec: LayerSpec) -> str:
    return "tucker2" if spec.kind == "conv2d" and spec.kernel != (1, 1) else "svd"


def _choose(spec, mod, selector, fixed, alpha, beta, quantize, qmode, weakening, energy) -> LayerSpec:
    """Method and ranks for one candidate layer; keep it if nothing reduces parameters."""
    method = _method_for(spec)
    c, s = spec.in_channels, spec.out_channels
    kk = spec.kernel[0] * spec.kernel[1]
    why = ""
    if fixed and spec.name in fixed:
        r = fixed[spec.name]
        rk = list(r) if isinstance(r, (list, tuple)) else [r]
        method = "tucker2" if len(rk) == 2 else "svd"
        check_ranks(spec.name, rk, method)
        if method == "tucker2" and spec.kind != "conv2d":
            raise ValueError(f"{spec.name}: two ranks given but a linear layer takes one (SVD)")
        why = "fixed rank"
    elif selector == "fixed":
        return _keep(spec, "not in the fixed rank table")
    else:
        w = mod.weight.detach() if selector in ("vbmf", "energy") else None
        if method == "tucker2":
            rk = _tucker2_choice(spec, w, selector, alpha, beta, weakening, energy)
            if rk[0] >= c or rk[1] >= s:
                method = "svd"  # Tucker2 cannot reduce C or S: flatten instead
                why = f"tucker2 ranks {rk} reach full channels ({c}, {s}); SVD of the (C*k*k) x S unfolding; "
        if method == "svd":
            cin = c * kk
            if selector == "ratio":
                rk = [R.svd_rank(cin, s, alpha)]
                why += f"eq. 2 rank at ratio {alpha:g}"
            else:
                mat = w.reshape(s, -1) if w is not None else None
                rk = [R.vbmf_rank(mat, weakening) if selector == "vbmf" else R.energy_rank(mat, energy)]
                why += f"{selector} rank"
        else:
            why += {"ratio": f"eq. 5 ranks at ratio {alpha:g}", "vbmf": f"VBMF (weakening {weakening:g})",
                    "energy": f"energy {energy:g}"}[selector]
    maxr = [min(c * kk, s)] if method == "svd" else [c, s]
    for r, m in zip(rk, maxr):
        if r < 1 or r > m:
            raise ValueError(f"{spec.name}: rank {r} outside [1, {m}] for {method}")
    if quantize:
        q = [R.quantize_rank(r, quantize, m, qmode) for r, m in zip(rk, maxr)]
        if q != rk:
            why += f"; quantized to multiple of {quantize} ({qmode})"
        rk = q
    params, flops = cost(spec, method, rk)
    if params >= spec.params_before and why == "fixed rank":
        raise ValueError(f"plan entry {spec.name!r}: fixed {method} ranks {rk} give {params} parameters, not fewer "
                         f"than the original layer's {spec.params_before}")
    if params >= spec.params_before:
        return _keep(spec, f"{method} ranks {rk} give {params} params >= {spec.params_before}: no reduction")
    spec.method, spec.ranks, spec.reason = method, list(rk), why
    spec.params_after, spec.flops_after = params, flops
    return spec


def _tucker2_choice(spec, w, selector, alpha, beta, weakening, energy) -> list[int]:
    c, s = spec.in_channels, spec.out_channels
    if selector == "ratio":
        return list(R.tucker2_rank(c, s, spec.kernel, alpha, beta))
    if selector == "vbmf":
        return R.vbmf_ranks(w, weakening)
    return R.energy_ranks(w, energy)

"""Plans: which layers to decompose, how, at which ranks, and why. Plain data (JSON).

:func:`plan` walks a model, records every candidate layer's input shape with forward hooks on
an example batch, picks a method (SVD for Linear / 1x1 / flattened convs, Tucker2 for KxK
convs) and ranks (eq. 5/6 ratio rule, VBMF, energy, or fixed), applies rank quantization and
compression modes (layers-targeted paper), and keeps a layer, with the reason, wherever a
decomposition would not reduce its parameters.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import ranks as R
from .modes import MODES, mode_filter

__all__ = ["LayerSpec", "Plan", "plan", "SELECTORS"]

SELECTORS = ("ratio", "vbmf", "energy", "fixed")


@dataclass
class LayerSpec:
    """One layer of a plan. Shapes follow PyTorch: conv weight ``[S, C, k_h, k_w]``,
    linear weight ``[out, in]``; ``ranks`` is ``[r]`` for SVD, ``[r1, r2]`` (input mode,
    output mode) for Tucker2, ``[]`` for keep. FLOPs are per example (2 per multiply-add, as
    ``torch.utils.flop_counter`` counts), for the input shape the example batch produced."""

    name: str
    kind: str  # "linear" | "conv2d"
    weight_shape: list[int]
    bias: bool
    input_shape: list[int] | None = None
    output_shape: list[int] | None = None
    stride: list[int] = field(default_factory=lambda: [1, 1])
    padding: list[int] | str = field(default_factory=lambda: [0, 0])
    dilation: list[int] = field(default_factory=lambda: [1, 1])
    padding_mode: str = "zeros"
    groups: int = 1
    method: str = "keep"  # "svd" | "tucker2" | "keep"
    ranks: list[int] = field(default_factory=list)
    reason: str = ""
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    time_original: float | None = None  # seconds, filled by rank optimization
    time_decomposed: float | None = None
    # does training compute the gradient of this layer's input? False for a layer that reads the
    # network's input directly (a ResNet's conv1): its timed train pass then skips that gradient,
    # as the network's backward does (on ResNet-50's conv1 here it is half the layer's train call)
    input_grad: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerSpec":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown LayerSpec fields {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**dict(d))

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def kernel(self) -> tuple[int, int]:
        return (1, 1) if self.kind == "linear" else (self.weight_shape[2], self.weight_shape[3])

    @property
    def signature(self) -> str:
        """Shape signature (everything step time depends on except ranks and method)."""
        pad = self.padding if isinstance(self.padding, str) else "x".join(map(str, self.padding))
        return (
            f"{self.kind}|w={'x'.join(map(str, self.weight_shape))}|b={int(self.bias)}"
            f"|s={'x'.join(map(str, self.stride))}|p={pad}|d={'x'.join(map(str, self.dilation))}"
            f"|pm={self.padding_mode}|in={'x'.join(map(str, self.input_shape or []))}"
        )

    def timed_signature(self, pass_: str) -> str:
        """What this layer's timings of ``pass_`` are cached under: :attr:`signature`, and for the
        ``"train"``/``"step"`` passes of a layer that gets no input gradient (``input_grad``)
        a curve of its own."""
        return self.signature + ("" if self.input_grad or pass_ == "forward" else "|ig=0")

    def with_ranks(self, ranks: Sequence[int], method: str | None = None, reason: str | None = None) -> "LayerSpec":
        """A copy at other ranks, with params and FLOPs recomputed."""
        d = self.to_dict()
        d["ranks"] = [int(r) for r in ranks]
        d["method"] = method or self.method
        if reason is not None:
            d["reason"] = reason
        new = LayerSpec.from_dict(d)
        new.params_after, new.flops_after = cost(new, new.method, new.ranks)
        return new


def cost(spec: LayerSpec, method: str, ranks: Sequence[int]) -> tuple[int, int]:
    """(params, FLOPs per example) of ``spec`` built with ``method`` at ``ranks``."""
    out_c, in_c = spec.weight_shape[0], spec.weight_shape[1]
    bias = out_c if spec.bias else 0
    if spec.kind == "linear":
        inner = 1
        if spec.input_shape and len(spec.input_shape) > 2:
            inner = math.prod(spec.input_shape[1:-1])
        if method == "keep":
            return out_c * in_c + bias, 2 * out_c * in_c * inner
        r = ranks[0]
        return R.svd_params(in_c, out_c, r) + bias, 2 * r * (in_c + out_c) * inner
    kh, kw = spec.kernel
    kk = kh * kw
    hin, win = (spec.input_shape or [1, in_c, 1, 1])[2:4]
    hout, wout = (spec.output_shape or [1, out_c, 1, 1])[2:4]
    cin_g = in_c // max(spec.groups, 1)
    if method == "keep":
        return out_c * cin_g * kk + bias, 2 * out_c * cin_g * kk * hout * wout
    if method == "svd":
        r = ranks[0]
        return R.svd_params(in_c * kk, out_c, r) + bias, 2 * r * (in_c * kk + out_c) * hout * wout
    if method == "tucker2":
        r1, r2 = ranks
        flops = 2 * (in_c * r1 * hin * win + r1 * r2 * kk * hout * wout + r2 * out_c * hout * wout)
        return R.tucker2_params(in_c, out_c, (kh, kw), r1, r2) + bias, flops
    raise ValueError(f"unknown method {method!r}; valid: 'svd', 'tucker2', 'keep'")


@dataclass
class Plan:
    """A decomposition plan: per-layer :class:`LayerSpec` plus ``meta`` (how it was made).

    Plain data: ``to_json`` / ``from_json`` round-trip exactly; ``to_frame`` shows it as a
    DataFrame; edit a layer with ``plan[name] = plan[name].with_ranks([...])``.
    """

    layers: list[LayerSpec]
    meta: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[LayerSpec]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise KeyError(f"no layer {name!r} in plan; layers: {[s.name for s in self.layers][:10]}...")

    def __setitem__(self, name: str, spec: LayerSpec) -> None:
        for i, s in enumerate(self.layers):
            if s.name == name:
                self.layers[i] = spec
                return
        raise KeyError(f"no layer {name!r} in plan")

    @property
    def decomposed(self) -> list[LayerSpec]:
        return [s for s in self.layers if s.method != "keep"]

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "layers": [s.to_dict() for s in self.layers]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        if "layers" not in d:
            raise ValueError("not a plan: expected a mapping with 'layers' (and 'meta')")
        return cls([LayerSpec.from_dict(x) for x in d["layers"]], dict(d.get("meta", {})))

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of the plan; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Plan":
        """Read a plan from JSON text or a file path."""
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            s = Path(s).read_text()
        return cls.from_dict(json.loads(s))

    def to_frame(self):
        """One row per layer (pandas DataFrame)."""
        import pandas as pd

        cols = ["name", "kind", "weight_shape", "method", "ranks", "reason", "params_before",
                "params_after", "flops_before", "flops_after", "time_original", "time_decomposed"]
        return pd.DataFrame([{c: getattr(s, c) for c in cols} for s in self.layers])

    def summary(self) -> dict[str, float]:
        """Totals over candidate layers: params/FLOPs before and after and their ratios."""
        pb = sum(s.params_before for s in self.layers)
        pa = sum(s.params_after for s in self.layers)
        fb = sum(s.flops_before for s in self.layers)
        fa = sum(s.flops_after for s in self.layers)
        return {
            "layers": len(self.layers),
            "decomposed": len(self.decomposed),
            "params_before": pb,
            "params_after": pa,
            "params_ratio": pa / pb if pb else 1.0,
            "flops_before": fb,
            "flops_after": fa,
            "flops_ratio": fa / fb if fb else 1.0,
        }


def _record_shapes(model: nn.Module, example: Any, names: Sequence[str]) -> dict[str, tuple]:
    """``{layer: (input shape, output shape, reads the example input itself)}`` from one forward."""
    shapes: dict[str, tuple] = {}
    handles = []
    modules = dict(model.named_modules())
    given = list(example.values()) if isinstance(example, Mapping) else (
        list(example) if isinstance(example, (tuple, list)) else [example])
    for n in names:
        def hook(mod, inp, out, n=n):
            if n not in shapes and inp and isinstance(inp[0], torch.Tensor):
                shapes[n] = (list(inp[0].shape), list(out.shape), any(inp[0] is g for g in given))
        handles.append(modules[n].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example, (tuple, list)):
                model(*example)
            elif isinstance(example, Mapping):
                model(**example)
            else:
                model(example)
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


def _base_spec(name: str, mod: nn.Module) -> LayerSpec:
    if isinstance(mod, nn.Linear):
        return LayerSpec(name=name, kind="linear", weight_shape=list(mod.weight.shape), bias=mod.bias is not None)
    pad = mod.padding if isinstance(mod.padding, str) else list(mod.padding)
    return LayerSpec(
        name=name, kind="conv2d", weight_shape=list(mod.weight.shape), bias=mod.bias is not None,
        stride=list(mod.stride), padding=pad, dilation=list(mod.dilation),
        padding_mode=mod.padding_mode, groups=mod.groups,
    )


def _keep(spec: LayerSpec, reason: str) -> LayerSpec:
    spec.method, spec.ranks, spec.reason = "keep", [], reason
    spec.params_after, spec.flops_after = spec.params_before, spec.flops_before
    return spec


def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return bool(patterns) and any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan(
    model: nn.Module,
    example_input: Any,
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
) -> Plan:
    """Plan a low-rank decomposition of ``model``.

    Args:
        model: any ``nn.Module``; candidates are ``nn.Linear`` and ``nn.Conv2d`` with
            ``groups == 1``.
        example_input: a batch the model accepts; forward hooks record each layer's input shape.
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

    Returns:
        A :class:`Plan`; layers kept say why in ``reason``.

    Example:
        >>> import torchvision
        >>> p = plan(torchvision.models.resnet18(), torch.zeros(1, 3, 64, 64))
        >>> p["layer4.0.conv2"].ranks
        [309, 309]
    """
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; valid: {list(SELECTORS)}")
    R._check_alpha(ratio)
    if final_fc_ratio is not None:
        R._check_alpha(final_fc_ratio)
    if selector == "fixed" and not ranks:
        raise ValueError("selector='fixed' needs ranks={layer_name: rank or (r1, r2)}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown compression mode {mode!r}; valid: {list(MODES)}")
    modules = dict(model.named_modules())
    if ranks:
        missing = [n for n in ranks if n not in modules]
        if missing:
            raise ValueError(f"ranks name layers not in the model: {missing}")
    candidates = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not candidates:
        raise ValueError("model has no nn.Linear or nn.Conv2d layers to decompose")
    shapes = _record_shapes(model, example_input, candidates)
    linears = [n for n in candidates if isinstance(modules[n], nn.Linear)]
    final_fc = final_fc or (linears[-1] if linears else None)
    in_mode = mode_filter(mode, model) if mode else None
    functional = _functional_children(model)

    layers = []
    for name in candidates:
        mod = modules[name]
        spec = _base_spec(name, mod)
        if name in shapes:
            spec.input_shape, spec.output_shape, reads_input = shapes[name]
            spec.input_grad = not reads_input
        spec.params_before, spec.flops_before = cost(spec, "keep", [])
        if name in functional:
            layers.append(_keep(spec, "weight read directly by nn.MultiheadAttention; cannot be replaced"))
            continue
        if name not in shapes:
            layers.append(_keep(spec, "not called by the example forward (no input shape)"))
            continue
        if spec.groups != 1:
            layers.append(_keep(spec, f"grouped/depthwise conv (groups={spec.groups}) is not decomposed"))
            continue
        if in_mode is not None and not in_mode(name, mod):
            layers.append(_keep(spec, f"not selected by compression mode {mode!r}"))
            continue
        if include and not _matches(name, include):
            layers.append(_keep(spec, "not matched by include"))
            continue
        if _matches(name, exclude):
            layers.append(_keep(spec, "matched by exclude"))
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            layers.append(_keep(spec, "rejected by filter_fn"))
            continue
        alpha = final_fc_ratio if (final_fc_ratio is not None and name == final_fc) else ratio
        layers.append(_choose(spec, mod, selector, ranks, alpha, beta, quantize, quantize_mode,
                              vbmf_weakening, energy))
    meta = {
        "model": type(model).__name__,
        "example_shape": list(example_input.shape) if isinstance(example_input, torch.Tensor) else None,
        "ratio": ratio, "selector": selector, "beta": beta, "quantize": quantize,
        "quantize_mode": quantize_mode, "mode": mode, "include": list(include or []),
        "exclude": list(exclude or []), "final_fc": final_fc, "final_fc_ratio": final_fc_ratio,
        "vbmf_weakening": vbmf_weakening, "energy": energy,
        "model_params": sum(p.numel() for p in model.parameters()),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    return Plan(layers, meta)


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
        rk = [int(r)] if isinstance(r, (int,)) else [int(x) for x in r]
        method = "tucker2" if len(rk) == 2 else "svd"
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

"""Plans as plain data (JSON): one :class:`LayerSpec` per layer - its shapes, method, ranks and
why - and the :class:`Plan` that holds them, checked on construction and on load (ranks are
integers, at least 1, below the layer's full rank, as many as the method takes).

:func:`lrdnb.plan.plan` makes plans from a model; :func:`lrdnb.apply` applies them.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import ranks as R

__all__ = ["LayerSpec", "Plan", "cost", "check_ranks", "METHODS", "KINDS"]

METHODS = ("svd", "tucker2", "keep")
#: Layer kinds a plan lists: the first two are decomposed, the others are listed as kept.
KINDS = ("linear", "conv2d", "conv1d", "conv3d", "convtranspose1d", "convtranspose2d", "convtranspose3d")
_RANK_COUNT = {"svd": 1, "tucker2": 2, "keep": 0}


@dataclass
class LayerSpec:
    """One layer of a plan. Shapes follow PyTorch: conv weight ``[S, C, k_h, k_w]``,
    linear weight ``[out, in]``; ``ranks`` is ``[r]`` for SVD, ``[r1, r2]`` (input mode,
    output mode) for Tucker2, ``[]`` for keep. FLOPs are per example (2 per multiply-add, as
    ``torch.utils.flop_counter`` counts), for the input shape the example batch produced."""

    name: str
    kind: str  # "linear" | "conv2d" (decomposed); other KINDS (conv1d, conv3d, transposed) are only kept
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
    def kernel(self) -> tuple[int, ...]:
        """``(k_h, k_w)`` of a conv2d, ``(1, 1)`` for a linear layer, the kernel of another conv."""
        return (1, 1) if self.kind == "linear" else tuple(self.weight_shape[2:])

    def check(self, smaller: bool = True) -> None:
        """Raise ``ValueError`` (naming this layer) unless kind, method and ranks describe a layer
        :func:`lrdnb.apply` can build: integer ranks, as many as the method takes (svd 1, tucker2 2,
        keep 0), ``1 <= r`` and at most the full rank (SVD ``min(C k_h k_w, S)``; Tucker2
        ``r1 <= C``, ``r2 <= S``), and, with ``smaller``, fewer parameters than the layer itself
        (a decomposition that does not shrink the layer is a mistake, never built silently)."""
        where = f"plan entry {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: unknown kind {self.kind!r}; valid: {list(KINDS)}")
        if self.method not in METHODS:
            raise ValueError(f"{where}: unknown method {self.method!r}; valid: {list(METHODS)}")
        ndim = {"linear": 2, "conv2d": 4}.get(self.kind)
        shape = self.weight_shape
        if (not isinstance(shape, (list, tuple)) or not all(_is_int(d) and d >= 1 for d in shape)
                or (ndim is not None and len(shape) != ndim)):
            raise ValueError(f"{where}: weight_shape {shape!r} is not a {ndim or 'list of'} positive integers "
                             f"for a {self.kind} layer")
        check_ranks(self.name, self.ranks, self.method)
        if self.method == "keep":
            return
        if self.kind not in ("linear", "conv2d"):
            raise ValueError(f"{where}: a {self.kind} layer is only kept (method 'keep'), not {self.method!r}")
        if self.method == "tucker2" and self.kind != "conv2d":
            raise ValueError(f"{where}: tucker2 needs a conv2d layer; a {self.kind} layer takes 'svd' (one rank)")
        if self.groups != 1:
            raise ValueError(f"{where}: a grouped conv (groups={self.groups!r}) is not decomposed; use 'keep'")
        full = _full_ranks(self)
        for i, (r, m) in enumerate(zip(self.ranks, full)):
            if r > m:
                what = f"rank {r}" if self.method == "svd" else f"r{i + 1}={r}"
                raise ValueError(f"{where}: {self.method} {what} is above the full rank {m} "
                                 f"(allowed: 1..{m}; ranks {list(self.ranks)}, full {full})")
        if smaller:
            before, after = cost(self, "keep", [])[0], cost(self, self.method, self.ranks)[0]
            if after >= before:
                raise ValueError(f"{where}: {self.method} ranks {list(self.ranks)} give {after} parameters, not "
                                 f"fewer than the original layer's {before}; lower the ranks or use 'keep'")

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


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_ranks(name: str, ranks: Any, method: str) -> None:
    """Raise ``ValueError`` naming layer ``name`` unless ``ranks`` is a list of integers
    ``>= 1`` (not bool, float or str), as many as ``method`` takes (svd 1, tucker2 2, keep 0)."""
    where = f"plan entry {name!r}"
    if method not in _RANK_COUNT:
        raise ValueError(f"{where}: unknown method {method!r}; valid: {list(METHODS)}")
    if not isinstance(ranks, (list, tuple)):
        raise ValueError(f"{where}: ranks must be a list of integers, got {type(ranks).__name__} {ranks!r}")
    bad = [r for r in ranks if not _is_int(r)]
    if bad:
        raise ValueError(f"{where}: ranks must be integers, got {list(ranks)!r} "
                         f"({', '.join(sorted({type(r).__name__ for r in bad}))})")
    want = _RANK_COUNT[method]
    if len(ranks) != want:
        raise ValueError(f"{where}: method {method!r} takes {want} rank{'s' if want != 1 else ''}, "
                         f"got {len(ranks)}: {list(ranks)}")
    low = [r for r in ranks if r < 1]
    if low:
        raise ValueError(f"{where}: ranks must be >= 1, got {list(ranks)} (a rank-0 layer outputs only its bias)")


def _full_ranks(spec: LayerSpec) -> list[int]:
    """The largest ranks of ``spec.method``: SVD ``min(C k_h k_w, S)``; Tucker2 ``(C, S)``."""
    c, s = spec.in_channels, spec.out_channels
    if spec.method == "tucker2":
        return [c, s]
    return [min(c * math.prod(spec.kernel), s)]


def _other_conv_cost(spec: LayerSpec) -> tuple[int, int]:
    """(params, FLOPs per example) of a kept conv1d / conv3d / transposed conv."""
    nd = len(spec.weight_shape) - 2
    per_pos = math.prod(spec.weight_shape)  # out * in/groups * kernel (in * out/groups * kernel if transposed)
    shape = spec.input_shape if spec.kind.startswith("convtranspose") else spec.output_shape
    positions = math.prod(shape[-nd:]) if shape and len(shape) > nd else 1
    bias = spec.out_channels if not spec.kind.startswith("convtranspose") else spec.weight_shape[1] * spec.groups
    return per_pos + (bias if spec.bias else 0), 2 * per_pos * positions


def cost(spec: LayerSpec, method: str, ranks: Sequence[int]) -> tuple[int, int]:
    """(params, FLOPs per example) of ``spec`` built with ``method`` at ``ranks``."""
    if spec.kind not in ("linear", "conv2d"):
        return _other_conv_cost(spec)
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
        """A plan from :meth:`to_dict`'s data, checked (:meth:`check`): a hand-edited rank that
        :func:`lrdnb.apply` could not build, or that would not shrink its layer, fails here."""
        if not isinstance(d, Mapping) or not isinstance(d.get("layers"), list):
            raise ValueError("not a plan: expected a mapping with a list of 'layers' (and 'meta')")
        layers = []
        for i, x in enumerate(d["layers"]):
            if not isinstance(x, Mapping) or not isinstance(x.get("name"), str):
                raise ValueError(f"plan layer #{i} is not a mapping with a 'name': {x!r:.80}")
            try:
                layers.append(LayerSpec.from_dict(x))
            except TypeError as e:  # a missing required field
                raise ValueError(f"plan entry {x['name']!r}: {e}") from None
        p = cls(layers, dict(d.get("meta", {})))
        p.check()
        return p

    def check(self, smaller: bool = True) -> None:
        """Raise ``ValueError`` naming the layer for a duplicated name or an entry whose kind,
        method or ranks cannot be built (:meth:`LayerSpec.check`)."""
        seen: set[str] = set()
        for spec in self.layers:
            if spec.name in seen:
                raise ValueError(f"plan entry {spec.name!r} appears twice")
            seen.add(spec.name)
            spec.check(smaller=smaller)

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

"""Factorized layers: chains of plain ``nn.Conv2d`` / ``nn.Linear`` with named factors.

A decomposed layer is a short ``nn.Module`` whose children are the factors, named by *role*
so that freezing schedules (Algorithm 2 of the sequential-freezing paper) can address them
without knowing layer types:

* SVD (eq. 1-2):    ``first`` -> ``last``               (Linear, 1x1 conv, or KxK conv flattened)
* Tucker2 (eq. 4):  ``first`` (1x1) -> ``core`` (KxK) -> ``last`` (1x1)

Modules here know shapes only. They are built from a :class:`~lrdnb.plan.LayerSpec` (or plain
shape arguments) with freshly initialised weights; :mod:`lrdnb.decompose` is the only module
that fills them with factor weights. :mod:`lrdnb.timing` builds them to time ranks without
decomposing anything.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "FactorizedLinear",
    "FactorizedConv2d",
    "Tucker2Conv2d",
    "FACTOR_ROLES",
    "is_factorized",
    "factor_roles",
    "build_factorized",
]

#: Roles of each factorized kind, in forward order.
FACTOR_ROLES = {"svd": ("first", "last"), "tucker2": ("first", "core", "last")}


class _Chain(nn.Module):
    """Base class: forward runs the factors in order; ``method`` names the decomposition."""

    method: str = ""

    @property
    def roles(self) -> tuple[str, ...]:
        return FACTOR_ROLES[self.method]

    @property
    def ranks(self) -> tuple[int, ...]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for role in self.roles:
            x = getattr(self, role)(x)
        return x


class FactorizedLinear(_Chain):
    """``Linear(in, out)`` as ``Linear(in, r, bias=False) -> Linear(r, out)`` (SVD, eq. 2).

    Example:
        >>> m = FactorizedLinear(64, 32, rank=8)
        >>> m(torch.zeros(2, 64)).shape
        torch.Size([2, 32])
    """

    method = "svd"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.first = nn.Linear(in_features, rank, bias=False, **kw)
        self.last = nn.Linear(rank, out_features, bias=bias, **kw)

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.first.out_features,)


class FactorizedConv2d(_Chain):
    """``Conv2d(C, S, k)`` as ``Conv2d(C, r, k)`` -> ``Conv2d(r, S, 1)`` (SVD of the
    ``S x (C k_h k_w)`` unfolding, eq. 2; for a 1x1 conv this is the paper's 1x1 -> 1x1).

    The first factor carries the original stride, padding, dilation and padding mode; the
    last is a pointwise conv carrying the bias.
    """

    method = "svd"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        rank: int,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(
            in_channels, rank, kernel_size, stride=stride, padding=padding,
            dilation=dilation, bias=False, padding_mode=padding_mode, **kw,
        )
        self.last = nn.Conv2d(rank, out_channels, 1, bias=bias, **kw)

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.first.out_channels,)


class Tucker2Conv2d(_Chain):
    """``Conv2d(C, S, k)`` as 1x1 ``C -> r1``, KxK core ``r1 -> r2``, 1x1 ``r2 -> S`` (eq. 4).

    ``ranks = (r1, r2)``: ``r1`` on the input-channel mode (C), ``r2`` on the output mode (S),
    as in eq. 5 (``r2 = beta * r1``). The core carries stride, padding (any form, including
    ``'same'`` and non-zero padding modes: the first factor is pointwise and bias-free, so it
    commutes with padding), dilation; the last factor carries the bias.

    Example:
        >>> m = Tucker2Conv2d(64, 64, 3, ranks=(16, 16), padding=1)
        >>> m(torch.zeros(1, 64, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    method = "tucker2"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        ranks: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        r1, r2 = (int(r) for r in ranks)
        kw = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(in_channels, r1, 1, bias=False, **kw)
        self.core = nn.Conv2d(
            r1, r2, kernel_size, stride=stride, padding=padding, dilation=dilation,
            bias=False, padding_mode=padding_mode, **kw,
        )
        self.last = nn.Conv2d(r2, out_channels, 1, bias=bias, **kw)

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.core.in_channels, self.core.out_channels)


def is_factorized(module: nn.Module) -> bool:
    """True for the factorized modules of this file."""
    return isinstance(module, _Chain)


def factor_roles(module: nn.Module) -> dict[str, nn.Module]:
    """Role name -> factor submodule of a factorized module (empty dict for any other module)."""
    if not is_factorized(module):
        return {}
    return {role: getattr(module, role) for role in module.roles}


def _check_ranks(name: str, method: str, ranks: Sequence) -> None:
    """Ranks torch would otherwise take silently or fail on deep inside: integers >= 1 (a rank-0
    layer outputs only its bias), one for SVD, two for Tucker2."""
    want = 2 if method == "tucker2" else 1
    ok = all(isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in ranks)
    if not ok or len(ranks) != want or any(r < 1 for r in ranks):
        raise ValueError(f"layer {name!r}: {method} needs {want} integer rank{'s' if want > 1 else ''} >= 1, "
                         f"got {ranks!r}")


def build_factorized(
    spec: "dict | object",
    ranks: Sequence[int] | None = None,
    method: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build the module a plan entry describes, with fresh weights (no decomposition).

    Args:
        spec: a :class:`~lrdnb.plan.LayerSpec` (or its dict) giving kind, weight shape,
            stride, padding, dilation, padding mode and bias.
        ranks: ranks to build with; defaults to ``spec.ranks``.
        method: ``"svd"``, ``"tucker2"`` or ``"keep"`` (the original dense layer);
            defaults to ``spec.method``.

    Returns:
        A :class:`FactorizedLinear`, :class:`FactorizedConv2d`, :class:`Tucker2Conv2d`, or a
        plain ``nn.Linear`` / ``nn.Conv2d`` for ``"keep"``.

    Raises:
        ValueError: ranks that are not integers >= 1, or not one (SVD) / two (Tucker2). Upper
            bounds are not checked here (timing sweeps build any shape); plans check them.
    """
    s = spec if isinstance(spec, dict) else spec.to_dict()  # type: ignore[attr-defined]
    method = method or s["method"]
    ranks = list(ranks if ranks is not None else s["ranks"])
    if method in FACTOR_ROLES:
        _check_ranks(s.get("name", "?"), method, ranks)
    kw = {"device": device, "dtype": dtype}
    shape = s["weight_shape"]
    if s["kind"] == "linear":
        out_f, in_f = shape
        if method == "keep":
            return nn.Linear(in_f, out_f, bias=s["bias"], **kw)
        if method != "svd":
            raise ValueError(f"linear layers support method 'svd' or 'keep', got {method!r}")
        return FactorizedLinear(in_f, out_f, ranks[0], bias=s["bias"], **kw)
    if s["kind"] != "conv2d":
        raise ValueError(f"unknown layer kind {s['kind']!r}; valid: 'linear', 'conv2d'")
    out_c, in_c, kh, kw_ = shape
    conv_kw = dict(
        stride=tuple(s["stride"]),
        padding=s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"]),
        dilation=tuple(s["dilation"]),
        bias=s["bias"],
        padding_mode=s.get("padding_mode", "zeros"),
        **kw,
    )
    if method == "keep":
        return nn.Conv2d(in_c, out_c, (kh, kw_), **conv_kw)
    if method == "svd":
        return FactorizedConv2d(in_c, out_c, (kh, kw_), ranks[0], **conv_kw)
    if method == "tucker2":
        return Tucker2Conv2d(in_c, out_c, (kh, kw_), ranks, **conv_kw)
    raise ValueError(f"unknown method {method!r}; valid: 'svd', 'tucker2', 'keep'")

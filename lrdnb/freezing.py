"""Freezing schedules for decomposed models: regular and sequential freezing (Algorithm 2).

Section 2.2 of Hajimolahoseini et al. 2023 ("Training acceleration of low-rank decomposed
networks using sequential freezing and rank quantization"): after LRD the factors are close to
optimal, so only one factor per decomposed layer needs fine-tuning.

* :class:`RegularFreezing` freezes the same factors for the whole run: ``first`` of an SVD pair
  (train ``last``), ``first`` and ``last`` of a Tucker2 triple (train the ``core``).
* :class:`SequentialFreezing` is Algorithm 2: even periods freeze as regular freezing, odd
  periods freeze the complement, so every factor gets trained every other period while the
  number of trainable layers stays that of the original model.
* :class:`NoFreezing` trains every factor (and undoes any earlier freezing).

A schedule only toggles ``requires_grad`` of the parameters of factor roles
(:func:`lrdnb.layers.factor_roles`); layers that were not decomposed keep training. It also
drops the ``.grad`` of parameters it freezes. With ``optimizer.zero_grad(set_to_none=True)``
before each backward (what :func:`lrdnb.train.fit` does) a frozen parameter has ``grad is
None``, and ``torch.optim.SGD`` (all implementations: for-loop, foreach, fused) skips such
parameters entirely: no update, no momentum, **no weight decay**. Zeroed (not ``None``) grads
would still let weight decay and momentum move a frozen weight.

Two traps when the frozen set changes mid-run:

* ``torch.compile``: a compiled graph bakes in which inputs require grad. Observed with torch
  2.14 (``tests/test_freezing.py::test_compile_recompiles_when_frozen_set_changes``): Dynamo
  guards on ``requires_grad`` of module parameters, so a change triggers one recompilation per
  distinct frozen set (2 for sequential freezing, then cached) and the graph is *not* stale.
  Older torch versions, ``inline_inbuilt_nn_modules=False`` or CUDA-graph modes may behave
  differently; the test above guards the behaviour we rely on. Mind
  ``torch._dynamo.config.recompile_limit`` (8) if you build schedules with many frozen sets.
* DDP: parameters that do not require grad when ``DistributedDataParallel`` is built are
  left out of gradient synchronisation *for good* (unfreezing them later trains each replica
  apart, silently), and a parameter that stops receiving gradients makes the next step fail
  ("Expected to have finished reduction in the prior iteration") unless
  ``find_unused_parameters=True``. :func:`lrdnb.train.fit` therefore unfreezes every factor
  before wrapping (:func:`unfreeze_all`) and passes ``find_unused_parameters=True`` whenever a
  schedule freezes anything.

Example:
    >>> from lrdnb.layers import Tucker2Conv2d
    >>> m = torch.nn.Sequential(Tucker2Conv2d(8, 8, 3, ranks=(4, 4)))
    >>> s = SequentialFreezing()
    >>> sorted(s.apply(m, epoch=0)["frozen"])
    ['0.first.weight', '0.last.bias', '0.last.weight']
    >>> sorted(s.apply(m, epoch=1)["frozen"])
    ['0.core.weight']
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch  # noqa: F401 (the module docstring example uses it)
from torch import nn

from .layers import FACTOR_ROLES, factor_roles, is_factorized

__all__ = [
    "DEFAULT_FROZEN_ROLES",
    "FreezingSchedule",
    "NoFreezing",
    "RegularFreezing",
    "SequentialFreezing",
    "SCHEDULES",
    "make_schedule",
    "factor_parameters",
    "unfreeze_all",
    "frozen_summary",
]

#: Section 2.2: freeze ``first`` of SVD, ``first`` and ``last`` of Tucker2 (train ``last`` / ``core``).
DEFAULT_FROZEN_ROLES: dict[str, tuple[str, ...]] = {"svd": ("first",), "tucker2": ("first", "last")}


def factor_parameters(model: nn.Module) -> Iterator[tuple[str, str, str, nn.Parameter]]:
    """Every parameter of every factor of every decomposed module of ``model``.

    Yields:
        ``(parameter_name, method, role, parameter)`` with names as in ``model.named_parameters()``.
    """
    for mod_name, mod in model.named_modules():
        if not is_factorized(mod):
            continue
        for role, factor in factor_roles(mod).items():
            for p_name, p in factor.named_parameters():
                prefix = f"{mod_name}." if mod_name else ""
                yield f"{prefix}{role}.{p_name}", mod.method, role, p


def _check_roles(frozen_roles: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    out = {}
    for method, roles in frozen_roles.items():
        if method not in FACTOR_ROLES:
            raise ValueError(f"unknown decomposition method {method!r}; valid: {list(FACTOR_ROLES)}")
        roles = (roles,) if isinstance(roles, str) else tuple(roles)
        bad = [r for r in roles if r not in FACTOR_ROLES[method]]
        if bad:
            raise ValueError(f"unknown roles {bad} for {method!r}; valid: {list(FACTOR_ROLES[method])}")
        out[method] = roles
    return out


def _set_frozen(model: nn.Module, frozen: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Freeze exactly the factor roles in ``frozen`` (per method), unfreeze all other factors."""
    changed_frozen, changed_unfrozen = [], []
    n_frozen = 0
    for name, method, role, p in factor_parameters(model):
        freeze = role in frozen.get(method, ())
        if freeze:
            n_frozen += p.numel()
            p.grad = None  # a stale grad would still be applied (with weight decay) by optimizer.step()
        if p.requires_grad == freeze:
            p.requires_grad_(not freeze)
            (changed_frozen if freeze else changed_unfrozen).append(name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "frozen": changed_frozen,
        "unfrozen": changed_unfrozen,
        "frozen_roles": {m: list(r) for m, r in frozen.items() if r},
        "frozen_params": n_frozen,
        "trainable_params": trainable,
    }


def unfreeze_all(model: nn.Module) -> list[str]:
    """Set ``requires_grad=True`` on every factor parameter; returns the names it changed."""
    return _set_frozen(model, {})["unfrozen"]


def frozen_summary(frozen_roles: Mapping[str, Sequence[str]]) -> str:
    """Compact text for a table cell: ``"svd:first tucker2:first+last"`` (``""`` = nothing frozen)."""
    return " ".join(f"{m}:{'+'.join(r)}" for m, r in sorted(frozen_roles.items()) if r)


@dataclass
class FreezingSchedule:
    """Base class: which factor roles are frozen at a given epoch (and step).

    Subclasses implement :meth:`roles_at`. Schedules are plain data: :meth:`to_dict` /
    :func:`make_schedule` round-trip them through JSON.
    """

    name: ClassVar[str] = ""
    #: True when the frozen set may change inside an epoch (``fit`` then calls ``apply`` every step).
    per_step: ClassVar[bool] = False

    def roles_at(self, epoch: int, step: int | None = None) -> dict[str, tuple[str, ...]]:
        """``{method: roles to freeze}`` at ``epoch`` (0-based) and global ``step``."""
        raise NotImplementedError

    @property
    def freezes(self) -> bool:
        """False only for schedules that never freeze anything (DDP needs no unused-parameter search)."""
        return True

    def phases(self) -> tuple[int, ...]:
        """Epochs whose frozen sets a timing must cover: ``(0, 1)`` when the set alternates from
        epoch to epoch (sequential freezing), else ``(0,)``."""
        return (0, 1) if self.roles_at(0) != self.roles_at(1) else (0,)

    def apply(self, model: nn.Module, epoch: int, step: int | None = None) -> dict[str, Any]:
        """Set ``requires_grad`` of every factor of ``model`` for ``epoch`` / ``step``.

        Returns:
            ``{"frozen": [names newly frozen], "unfrozen": [names newly unfrozen],
            "frozen_roles": {method: [roles]}, "frozen_params": n, "trainable_params": n}``.
        """
        return _set_frozen(model, self.roles_at(epoch, step))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, dict):
                d[k] = {m: list(r) for m, r in v.items()}
        return {"name": self.name, **d}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "FreezingSchedule":
        d = dict(d)
        return make_schedule(d.pop("name"), **d)


@dataclass
class NoFreezing(FreezingSchedule):
    """Train every factor (plain fine-tuning of the decomposed model)."""

    name: ClassVar[str] = "none"

    def roles_at(self, epoch: int, step: int | None = None) -> dict[str, tuple[str, ...]]:
        return {}

    @property
    def freezes(self) -> bool:
        return False


@dataclass
class RegularFreezing(FreezingSchedule):
    """Freeze the same factor roles for the whole run (Section 2.2, "regular freezing").

    Args:
        frozen_roles: ``{method: roles}``; default freezes SVD ``first`` and Tucker2 ``first``
            and ``last``, so SVD layers train ``last`` and Tucker2 layers train ``core``.
    """

    name: ClassVar[str] = "regular"
    frozen_roles: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_FROZEN_ROLES))

    def __post_init__(self) -> None:
        self.frozen_roles = _check_roles(self.frozen_roles)

    def roles_at(self, epoch: int, step: int | None = None) -> dict[str, tuple[str, ...]]:
        return dict(self.frozen_roles)


@dataclass
class SequentialFreezing(FreezingSchedule):
    """Algorithm 2: alternate which factors train, every ``period`` epochs (or steps).

    Period ``k = epoch // period`` (or ``step // period`` with ``unit="step"``): even ``k``
    freezes ``frozen_roles`` (as :class:`RegularFreezing`: Tucker2 ``L(0)``, ``L(2)``; SVD ``L(0)``),
    odd ``k`` freezes the complement (Tucker2 ``L(1)``; SVD ``L(1)``).

    Args:
        frozen_roles: roles frozen in even periods, ``{method: roles}``; a method left out
            is never frozen (its layers always train).
        period: length of one phase; the paper's is 1 epoch.
        unit: ``"epoch"`` or ``"step"`` (global optimizer steps, counted from 0).
    """

    name: ClassVar[str] = "sequential"
    frozen_roles: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_FROZEN_ROLES))
    period: int = 1
    unit: str = "epoch"

    def __post_init__(self) -> None:
        self.frozen_roles = _check_roles(self.frozen_roles)
        if self.unit not in ("epoch", "step"):
            raise ValueError(f"unknown unit {self.unit!r}; valid: ['epoch', 'step']")
        if int(self.period) < 1:
            raise ValueError(f"period must be >= 1, got {self.period}")
        self.period = int(self.period)

    @property
    def per_step(self) -> bool:  # type: ignore[override]
        return self.unit == "step"

    def phase(self, epoch: int, step: int | None = None) -> int:
        """0 in even periods (regular freezing), 1 in odd ones (the complement)."""
        if self.unit == "step":
            if step is None:
                raise ValueError("SequentialFreezing(unit='step') needs the global step: apply(model, epoch, step)")
            return (step // self.period) % 2
        return (epoch // self.period) % 2

    def roles_at(self, epoch: int, step: int | None = None) -> dict[str, tuple[str, ...]]:
        if self.phase(epoch, step) == 0:
            return dict(self.frozen_roles)
        return {m: tuple(r for r in FACTOR_ROLES[m] if r not in roles) for m, roles in self.frozen_roles.items()}


SCHEDULES: dict[str, type[FreezingSchedule]] = {
    cls.name: cls for cls in (NoFreezing, RegularFreezing, SequentialFreezing)
}


def make_schedule(name: str | FreezingSchedule | None = "none", **kwargs: Any) -> FreezingSchedule:
    """A schedule by name: ``"none"``, ``"regular"`` or ``"sequential"`` (``None`` = ``"none"``).

    Keyword arguments go to the class (``frozen_roles``, ``period``, ``unit``); a schedule instance is
    returned unchanged.

    Raises:
        ValueError: unknown name.
    """
    if isinstance(name, FreezingSchedule):
        return name
    name = "none" if name is None else name
    if name not in SCHEDULES:
        raise ValueError(f"unknown freezing schedule {name!r}; valid: {list(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)

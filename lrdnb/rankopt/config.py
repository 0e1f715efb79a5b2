"""The two settings of a rank search, as plain data: how to search and how to time.

``optimize_ranks(model, x, plan, search=RankSearch(...), timing=Timing(...))``: each is a frozen
dataclass with one default per knob, converts to and from a plain dict (``to_dict`` /
``from_dict``, what notebooks and profiles pass), and refuses unknown names.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import torch
from torch import nn

__all__ = ["PASSES", "RankSearch", "Timing", "ResolvedTiming", "split_settings"]

#: ``forward`` (no grad), ``train`` (forward + backward), ``step`` (train + SGD momentum update).
PASSES = ("forward", "train", "step")
SEARCHES = ("auto", "staircase", "exhaustive")

#: A timer: ``timer(fn, number, threads) -> seconds per call`` of ``number`` back-to-back calls of
#: ``fn`` (``fn.module`` is the module it runs). The default is ``torch.utils.benchmark``'s; tests
#: pass a fake device here.
TimerFn = Callable[[Callable[[], Any], int, int], float]


def _from_dict(cls, d: Mapping[str, Any] | Any):
    if isinstance(d, cls):
        return d
    if d is None:
        return cls()
    if not isinstance(d, Mapping):
        raise TypeError(f"{cls.__name__} settings must be a {cls.__name__} or a dict, got {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s) {unknown}; valid: {names}")
    return cls(**dict(d))


@dataclass(frozen=True)
class RankSearch:
    """How Algorithm 1 (Hajimolahoseini et al. 2023, Sec. 2.1) looks for each layer's rank.

    Args:
        kind: ``"staircase"`` (coarse grid every ``grid`` ranks, then the tile boundaries of the
            largest coarse drops re-timed in pairs), ``"exhaustive"`` (every rank from eq. 5 to
            eq. 6, the paper's procedure; needed by ``method="joint"``) or ``"auto"`` (staircase
            for Algorithm 1, exhaustive for joint).
        grid: coarse spacing: the device's tile (16 for AVX-512 fp32 oneDNN kernels); also the
            multiple the input plan's ranks are rounded down to for the final check.
        alpha: the range's eq.-5 ratio: ``"plan"`` (the plan's ratio where its ranks are eq. 5's,
            else each layer's achieved compression), a number, or ``None`` (achieved compression).
        refine: coarse drops whose tile boundary is re-timed in pairs.
        rounds: paired rounds per check of a step, or of a layer against the original.
        confirm: a step (or the original being faster) counts when seen in this fraction of the
            rounds with a median ratio on the same side.
        min_drop: a step must save at least this fraction of the time above it.
        tie_tol: confirmed drops within this (relative) of the largest tie; the highest rank wins
            (least accuracy lost).
        repeats: passes over the ranks timed (``None``: 1 for the staircase, whose steps are
            re-timed in pairs anyway, 2 for the exhaustive search).
        check_rounds: most paired rounds of the final whole-model check of the searched plan
            against the input plan and its grid-rounded ranks (0: no check).
    """

    kind: str = "auto"
    grid: int = 16
    alpha: float | str | None = "plan"
    refine: int = 2
    rounds: int = 5
    confirm: float = 0.8
    min_drop: float = 0.02
    tie_tol: float = 0.03
    repeats: int | None = None
    check_rounds: int = 7

    def __post_init__(self) -> None:
        if self.kind not in SEARCHES:
            raise ValueError(f"unknown search kind {self.kind!r}; valid: {list(SEARCHES)}")
        for name in ("grid", "refine", "rounds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"RankSearch.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.repeats is not None and (not isinstance(self.repeats, int) or self.repeats < 1):
            raise ValueError(f"RankSearch.repeats must be None or an int >= 1, got {self.repeats!r}")
        if not 0 < self.confirm <= 1:
            raise ValueError(f"RankSearch.confirm must be in (0, 1], got {self.confirm!r}")
        if not isinstance(self.check_rounds, int) or self.check_rounds < 0:
            raise ValueError(f"RankSearch.check_rounds must be an int >= 0, got {self.check_rounds!r}")
        if not (self.alpha in ("plan", None) or (isinstance(self.alpha, (int, float)) and self.alpha > 1)):
            raise ValueError(f"RankSearch.alpha must be 'plan', None or a ratio > 1, got {self.alpha!r}")

    def resolved(self, method: str) -> "RankSearch":
        """``kind`` and ``repeats`` filled in for ``method`` (``"algorithm1"`` or ``"joint"``)."""
        kind = self.kind if self.kind != "auto" else ("staircase" if method == "algorithm1" else "exhaustive")
        if kind == "staircase" and method == "joint":
            raise ValueError("method='joint' needs every rank's time: use RankSearch(kind='exhaustive')")
        return replace(self, kind=kind, repeats=self.repeats or (1 if kind == "staircase" else 2))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "RankSearch" | None) -> "RankSearch":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class Timing:
    """What is timed, where and how.

    Args:
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda[:N]"``.
        pass_: ``"forward"``, ``"train"`` or ``"step"`` (:data:`PASSES`): what to make fast.
        threads: intra-op threads while timing (default: the current count). On a shared machine
            use 1: multi-threaded kernels spin-wait on each other under load.
        dtype: e.g. ``"float32"``; default: the model's parameter dtype.
        channels_last: ``True``/``False``, or ``"auto"``: when the model runs in it (the example
            batch or a spatial conv weight is channels_last).
        frozen: factor roles frozen while training, ``{method: roles}`` (a freezing schedule's
            ``roles_at(epoch)``): the train passes time the layers without those gradients.
        cache: ``"default"`` (``$LRDNB_CACHE`` or the per-user cache folder), a folder, a
            :class:`lrdnb.rankopt.cache.TimingCache`, or ``None``.
        min_run_time: seconds per measurement (calls are batched up to it).
        timer: :data:`TimerFn`; default ``torch.utils.benchmark``. Not serialized.
    """

    device: str = "auto"
    pass_: str = "train"
    threads: int | None = None
    dtype: str | None = None
    channels_last: bool | str = "auto"
    frozen: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cache: Any = "default"
    min_run_time: float = 0.004
    timer: TimerFn | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pass_ not in PASSES:
            raise ValueError(f"unknown pass {self.pass_!r}; valid: {list(PASSES)}")
        if self.channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be True, False or 'auto', got {self.channels_last!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"Timing.threads must be None or an int >= 1, got {self.threads!r}")
        object.__setattr__(self, "frozen", {str(m): tuple(r) for m, r in dict(self.frozen or {}).items()})

    def resolve(self, model: nn.Module | None = None, example: Any = None) -> "ResolvedTiming":
        """Concrete device, threads, dtype and layout for timing ``model`` on ``example``."""
        from ..provenance import resolve_device

        if self.dtype is None:
            p0 = next(model.parameters(), None) if model is not None else None
            dtype = p0.dtype if p0 is not None else torch.float32
        else:
            dtype = getattr(torch, str(self.dtype).replace("torch.", ""), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {self.dtype!r}; e.g. 'float32', 'bfloat16'")
        cl = self.channels_last
        if cl == "auto":
            cl = model is not None and runs_channels_last(model, example)
        return ResolvedTiming(resolve_device(self.device), self.pass_, int(self.threads or torch.get_num_threads()),
                              dtype, bool(cl), self.frozen, self.cache, self.min_run_time, self.timer)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("timer")
        d["frozen"] = {m: list(r) for m, r in self.frozen.items()}
        d["cache"] = self.cache if self.cache is None or isinstance(self.cache, str) else str(self.cache)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "Timing" | None) -> "Timing":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class ResolvedTiming:
    """:class:`Timing` with everything concrete (what the measuring code reads)."""

    device: torch.device
    pass_: str
    threads: int
    dtype: torch.dtype
    channels_last: bool
    frozen: Mapping[str, tuple[str, ...]]
    cache: Any
    min_run_time: float
    timer: TimerFn | None

    def record(self) -> dict[str, Any]:
        """What a result records about how it was timed."""
        from ..provenance import device_name

        return {"device": str(self.device), "device_name": device_name(self.device), "torch": torch.__version__,
                "pass": self.pass_, "threads": self.threads, "dtype": str(self.dtype).replace("torch.", ""),
                "channels_last": self.channels_last, "frozen": {m: list(r) for m, r in self.frozen.items() if r}}


def split_settings(flat: Mapping[str, Any] | None) -> dict[str, Any]:
    """A flat dict of settings (as notebooks and profiles write them, e.g. ``{"alpha": 16,
    "repeats": 1, "cache": None}``) -> ``{"search": RankSearch, "timing": Timing}`` plus any
    ``budget`` and ``progress`` (the keyword arguments of ``optimize_ranks``); nested
    ``{"search": {...}, "timing": {...}}`` is accepted too.

    Example:
        >>> s = split_settings({"repeats": 1, "threads": 1})
        >>> s["search"].repeats, s["timing"].threads
        (1, 1)
    """
    flat = dict(flat or {})
    out: dict[str, Any] = {}
    search = dict(flat.pop("search", None) or {})
    timing = dict(flat.pop("timing", None) or {})
    for k in ("budget", "progress"):
        if k in flat:
            out[k] = flat.pop(k)
    s_names = {f.name for f in fields(RankSearch)}
    t_names = {f.name for f in fields(Timing)}
    for k, v in flat.items():
        if k in s_names:
            search[k] = v
        elif k in t_names:
            timing[k] = v
        else:
            raise ValueError(f"unknown rank-search setting {k!r}; valid: {sorted(s_names | t_names | {'budget', 'progress'})}")
    out["search"], out["timing"] = RankSearch.from_dict(search), Timing.from_dict(timing)
    return out


def _is_channels_last(t: Any) -> bool:
    """A 4-D tensor laid out channels_last (and not also plain contiguous, as 1x1 or C=1 ones are)."""
    return (isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous())


def runs_channels_last(model: nn.Module, example: Any = None) -> bool:
    """Whether ``model`` runs in the channels_last memory format: ``example`` is channels_last, or
    a ``Conv2d`` weight with a kernel larger than 1x1 is (what ``model.to(memory_format=...)`` does).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3))
        >>> runs_channels_last(m), runs_channels_last(m.to(memory_format=torch.channels_last))
        (False, True)
    """
    if _is_channels_last(example):
        return True
    return any(_is_channels_last(m.weight) for m in model.modules()
               if isinstance(m, nn.Conv2d) and tuple(m.weight.shape[-2:]) != (1, 1))

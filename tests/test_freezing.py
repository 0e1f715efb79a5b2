"""Freezing schedules: which factors are frozen when (Algorithm 2), and the traps around them."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lrdnb.freezing import (
    FreezingSchedule,
    NoFreezing,
    RegularFreezing,
    SCHEDULES,
    SequentialFreezing,
    factor_parameters,
    frozen_summary,
    make_schedule,
    unfreeze_all,
)
from lrdnb.layers import FactorizedConv2d, FactorizedLinear, Tucker2Conv2d


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        Tucker2Conv2d(3, 8, 3, ranks=(2, 4), padding=1),  # 0: first, core, last
        nn.Conv2d(8, 8, 1),  # 1: undecomposed, always trains
        FactorizedConv2d(8, 8, 1, rank=4),  # 2: first, last
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        FactorizedLinear(8, 4, rank=2),  # 5: first, last
    )


def frozen_roles_of(model: nn.Module) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for _, method, role, p in factor_parameters(model):
        if not p.requires_grad:
            out.setdefault(method, set()).add(role)
    return out


# Algorithm 2 of the paper, written out: (epoch parity) -> roles frozen
ALGORITHM_2 = {
    0: {"tucker2": {"first", "last"}, "svd": {"first"}},  # e % 2 == 0: freeze L(0), L(2) / L(0)
    1: {"tucker2": {"core"}, "svd": {"last"}},  # else: freeze L(1)
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_make_schedule_and_round_trip(name):
    s = make_schedule(name)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["name"] == name
    assert FreezingSchedule.from_dict(d) == s


def test_unknown_names_raise_listing_valid():
    with pytest.raises(ValueError, match="none.*regular.*sequential"):
        make_schedule("alternate")
    with pytest.raises(ValueError, match="valid"):
        RegularFreezing(frozen_roles={"svd": ("middle",)})
    with pytest.raises(ValueError, match="valid"):
        RegularFreezing(frozen_roles={"cp": ("first",)})
    with pytest.raises(ValueError, match="unit"):
        SequentialFreezing(unit="batch")


def test_regular_freezing_defaults_train_last_and_core():
    m = tiny()
    info = RegularFreezing().apply(m, epoch=0)
    assert frozen_roles_of(m) == ALGORITHM_2[0]
    assert sorted(info["frozen"]) == ["0.first.weight", "0.last.bias", "0.last.weight", "2.first.weight", "5.first.weight"]
    assert info["unfrozen"] == []
    # undecomposed layers keep training
    assert m[1].weight.requires_grad and m[1].bias.requires_grad
    assert info["trainable_params"] == sum(p.numel() for p in m.parameters() if p.requires_grad)
    # regular freezing never changes after the first epoch
    for e in range(1, 4):
        assert RegularFreezing().apply(m, epoch=e)["frozen"] == []
        assert frozen_roles_of(m) == ALGORITHM_2[0]


def test_regular_freezing_configurable_roles():
    m = tiny()
    RegularFreezing(frozen_roles={"svd": ("last",)}).apply(m, 0)
    assert frozen_roles_of(m) == {"svd": {"last"}}  # Tucker2 left alone


def test_sequential_freezing_alternates_exactly_as_algorithm_2():
    m = tiny()
    s = SequentialFreezing()
    previous: set[str] = set()
    for epoch in range(6):
        info = s.apply(m, epoch)
        assert frozen_roles_of(m) == ALGORITHM_2[epoch % 2], epoch
        now = {n for n, *_, p in factor_parameters(m) if not p.requires_grad}
        assert set(info["frozen"]) == now - previous
        assert set(info["unfrozen"]) == previous - now
        # every factor is either trained this epoch or the last one
        assert not (now & previous)
        previous = now
        assert m[1].weight.requires_grad


def test_sequential_period_in_epochs_and_steps():
    s = SequentialFreezing(period=2)
    assert [s.phase(e) for e in range(6)] == [0, 0, 1, 1, 0, 0]
    st = SequentialFreezing(period=3, unit="step")
    assert st.per_step and not s.per_step
    assert [st.phase(0, k) for k in range(8)] == [0, 0, 0, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="step"):
        st.phase(0)


def test_no_freezing_undoes_freezing():
    m = tiny()
    RegularFreezing().apply(m, 0)
    info = NoFreezing().apply(m, 1)
    assert frozen_roles_of(m) == {} and len(info["unfrozen"]) == 5
    assert info["frozen_params"] == 0
    assert not NoFreezing().freezes and RegularFreezing().freezes


def test_apply_drops_stale_grads_and_unfreeze_all():
    m = tiny()
    m(torch.randn(2, 3, 6, 6)).sum().backward()
    RegularFreezing().apply(m, 0)
    assert m[0].first.weight.grad is None and m[0].core.weight.grad is not None
    assert sorted(unfreeze_all(m)) == sorted(RegularFreezing().apply(tiny(), 0)["frozen"])


def test_frozen_summary():
    assert frozen_summary({"tucker2": ("first", "last"), "svd": ("first",)}) == "svd:first tucker2:first+last"
    assert frozen_summary({}) == ""


def _sgd_steps(m: nn.Module, set_to_none: bool, steps: int = 3) -> None:
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(4, 3, 6, 6)
    for _ in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        m(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_frozen_weights_bit_identical_under_momentum_and_weight_decay(foreach):
    m = tiny()
    _sgd_steps(m, True)  # build momentum buffers for every parameter first
    RegularFreezing().apply(m, 0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2, foreach=foreach)
    x = torch.randn(4, 3, 6, 6)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        m(x).square().mean().backward()
        opt.step()
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n


def test_trap_zeroed_instead_of_none_grads_let_weight_decay_move_frozen_weights():
    """Why fit uses zero_grad(set_to_none=True): a zero grad is still a grad to SGD."""
    m = tiny()
    m(torch.randn(2, 3, 6, 6)).sum().backward()
    RegularFreezing().apply(m, 0)
    for p in m.parameters():  # what zero_grad(set_to_none=False) leaves on frozen params
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    w = m[0].first.weight.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt.step()
    assert not torch.equal(m[0].first.weight, w)


def test_compile_recompiles_when_frozen_set_changes():
    """torch.compile trap: the graph must follow requires_grad (Dynamo guards on it; not stale)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    m = tiny()
    counter = CompileCounterWithBackend("aot_eager")
    cm = torch.compile(m, backend=counter)
    x = torch.randn(2, 3, 6, 6)
    s = SequentialFreezing()
    got = []
    for epoch in range(4):
        s.apply(m, epoch)
        for p in m.parameters():
            p.grad = None
        cm(x).sum().backward()
        got.append({n for n, p in m.named_parameters() if p.grad is not None})
        want = {n for n, p in m.named_parameters() if p.requires_grad}
        assert got[-1] == want, epoch  # a stale graph would give grads to frozen factors or none to trained ones
    assert got[0] == got[2] and got[1] == got[3] and got[0] != got[1]
    assert counter.frame_count == 2  # one graph per frozen set, then reused from the cache
    torch._dynamo.reset()


def test_trap_ddp_needs_find_unused_parameters(tmp_path):
    """DDP trap: freezing a factor mid-run fails without find_unused_parameters=True."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(2, 3, 6, 6)
        for find_unused, should_fail in [(False, True), (True, False)]:
            m = tiny()
            d = DDP(m, find_unused_parameters=find_unused)
            d(x).sum().backward()  # epoch 0: all factors trainable
            SequentialFreezing().apply(m, 0)
            failed = False
            try:
                for _ in range(2):
                    for p in m.parameters():
                        p.grad = None
                    d(x).sum().backward()
            except RuntimeError as e:
                failed = "finished reduction" in str(e)
            assert failed == should_fail
    finally:
        dist.destroy_process_group()


def test_phases_cover_every_frozen_set_a_timing_must_see():
    assert make_schedule("sequential").phases() == (0, 1)
    assert make_schedule("regular").phases() == (0,) and make_schedule("none").phases() == (0,)

"""fit: per-epoch gradients and updates under every schedule, resume, checkpoints, DDP, compile."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lrdnb.freezing import SCHEDULES, factor_parameters, make_schedule
from lrdnb.layers import FactorizedConv2d, FactorizedLinear, Tucker2Conv2d
from lrdnb.train import evaluate, fit, load_checkpoint

COLUMNS = ["epoch", "train_loss", "test_acc", "train_step_s", "data_s", "train_img_s", "infer_img_s",
           "frozen", "frozen_params", "trainable_params", "lr"]


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        Tucker2Conv2d(3, 8, 3, ranks=(2, 4), padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),  # undecomposed: always trains
        FactorizedConv2d(8, 8, 1, rank=4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        FactorizedLinear(8, 4, rank=2),
    )


def data(n: int = 48, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g))


KW = dict(lr=0.05, batch_size=16, device="cpu", progress=False, seed=3)


class Recorder:
    """Per epoch: names of parameters that received a gradient, and of those whose values changed."""

    def __init__(self, model: nn.Module, epoch0: int = 0) -> None:
        self.model, self.epoch = model, epoch0
        self.grads: dict[int, set[str]] = {}
        self.updated: dict[int, set[str]] = {}
        self.rows: list[dict] = []
        self.snap = self._snapshot()
        for name, p in model.named_parameters():
            p.register_post_accumulate_grad_hook(lambda p, name=name: self.grads.setdefault(self.epoch, set()).add(name))

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def __call__(self, row: dict) -> None:
        now = self._snapshot()
        self.updated[row["epoch"]] = {n for n in now if not torch.equal(now[n], self.snap[n])}
        self.frozen_identical = all(torch.equal(now[n], self.snap[n]) for n in self.frozen_names())
        self.snap, self.epoch = now, row["epoch"] + 1
        self.rows.append(row)

    def frozen_names(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if not p.requires_grad}


def expected_trained(model: nn.Module, schedule, epoch: int) -> set[str]:
    roles = schedule.roles_at(epoch)
    frozen = {n for n, method, role, _ in factor_parameters(model) if role in roles.get(method, ())}
    return {n for n, _ in model.named_parameters()} - frozen


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_grads_and_updates_per_epoch_for_every_schedule(name):
    m = tiny()
    rec = Recorder(m)
    schedule = make_schedule(name)
    df = fit(m, data(), data(16, 2), epochs=4, schedule=schedule, on_epoch_end=rec, **KW)
    assert list(df.epoch) == [0, 1, 2, 3]
    for e in range(4):
        want = expected_trained(m, schedule, e)
        assert rec.grads[e] == want, (name, e)
        assert rec.updated[e] == want, (name, e)  # frozen ones bit-identical (momentum + weight decay on)
    if name == "sequential":
        assert rec.grads[0] != rec.grads[1] and rec.grads[0] == rec.grads[2]
        assert list(df.frozen) == ["svd:first tucker2:first+last", "svd:last tucker2:core"] * 2
    if name == "regular":
        assert set(df.frozen) == {"svd:first tucker2:first+last"}
    if name == "none":
        assert set(df.frozen) == {""} and set(df.frozen_params) == {0}


def test_rows_hold_metrics():
    m = tiny()
    df = fit(m, data(), data(16, 2), epochs=2, schedule="regular", **KW)
    for c in COLUMNS:
        assert c in df.columns
    assert len(df) == 2 and (df.steps == 3).all() and (df.images == 48).all()
    assert (df.train_step_s > 0).all() and (df.data_s >= 0).all()
    assert (df.train_img_s - 48 / (df.train_step_s * 3)).abs().max() < 1e-6 * df.train_img_s.max()
    assert (df.infer_img_s > 0).all() and df.test_acc.between(0, 1).all()
    total = sum(p.numel() for p in m.parameters())
    assert (df.trainable_params + df.frozen_params == total).all()
    assert (df.lr == 0.05).all()
    assert evaluate(m, data(16, 2), device="cpu") == pytest.approx(df.test_acc.iloc[-1])


def test_cosine_lr_and_max_steps():
    df = fit(tiny(), data(), data(16, 2), epochs=4, lr_schedule="cosine", max_steps_per_epoch=2, **KW)
    assert list(df.lr) == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert (df.steps == 2).all()
    with pytest.raises(ValueError, match="fixed.*cosine"):
        fit(tiny(), data(), data(), epochs=1, lr_schedule="step", **KW)


class Stop(Exception):
    pass


def stop_after(epoch: int, recorder: Recorder | None = None):
    def cb(row):
        if recorder is not None:
            recorder(row)
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    return cb


def test_resume_after_interrupt_keeps_finished_epochs_and_matches_uninterrupted(tmp_path):
    ck = tmp_path / "run.pt"
    straight = tiny()
    df_straight = fit(straight, data(), data(16, 2), epochs=3, schedule="sequential", **KW)

    m = tiny()
    with pytest.raises(KeyboardInterrupt):
        fit(m, data(), data(16, 2), epochs=3, schedule="sequential", checkpoint=ck, on_epoch_end=stop_after(1), **KW)
    saved = load_checkpoint(ck)  # weights_only=True
    assert [r["epoch"] for r in saved["history"]] == [0, 1]

    m2 = tiny(seed=99)  # a fresh process: weights come from the checkpoint
    rec = Recorder(m2, epoch0=2)
    df = fit(m2, data(), data(16, 2), epochs=3, schedule="sequential", checkpoint=ck, on_epoch_end=rec, **KW)
    assert list(df.epoch) == [0, 1, 2] and [r["epoch"] for r in rec.rows] == [2]  # 0-1 not redone
    assert df.iloc[:2].equals(df.iloc[:2].__class__(saved["history"]))
    # the resumed epoch trains what Algorithm 2 says and updates exactly that
    want = expected_trained(m2, make_schedule("sequential"), 2)
    assert rec.grads[2] == want
    # bit-identical to the uninterrupted run: model, loss, accuracy
    for (n, a), b in zip(straight.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    assert list(df.train_loss) == list(df_straight.train_loss)
    assert list(df.test_acc) == list(df_straight.test_acc)
    # a finished run returns its rows without training
    again = fit(m2, data(), data(16, 2), epochs=3, schedule="sequential", checkpoint=ck, on_epoch_end=stop_after(-1, None), **KW)
    assert again.equals(df)


class Flaky(Dataset):
    """Raises KeyboardInterrupt when item ``at`` is read for the ``nth`` time (a mid-epoch Ctrl-C)."""

    def __init__(self, base: Dataset, reads_before_stop: int) -> None:
        self.base, self.left = base, reads_before_stop

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.base[i]


def test_interrupt_mid_epoch_redoes_only_that_epoch(tmp_path):
    ck = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):  # 48 items per epoch: stop inside epoch 2
        fit(tiny(), Flaky(data(), 48 * 2 + 20), data(16, 2), epochs=3, schedule="regular", checkpoint=ck, **KW)
    assert len(load_checkpoint(ck)["history"]) == 2
    rows = []
    df = fit(tiny(), data(), data(16, 2), epochs=3, schedule="regular", checkpoint=ck, on_epoch_end=rows.append, **KW)
    assert list(df.epoch) == [0, 1, 2] and [r["epoch"] for r in rows] == [2]


def test_resume_with_other_settings_raises(tmp_path):
    ck = tmp_path / "run.pt"
    fit(tiny(), data(), data(16, 2), epochs=1, schedule="regular", checkpoint=ck, **KW)
    with pytest.raises(ValueError, match="schedule"):
        fit(tiny(), data(), data(16, 2), epochs=2, schedule="sequential", checkpoint=ck, **KW)


def test_step_period_schedule_alternates_inside_an_epoch():
    m = tiny()
    core_steps, first_steps = [], []
    step = {"k": 0}
    m[0].core.weight.register_post_accumulate_grad_hook(lambda p: core_steps.append(step["k"]))
    m[0].first.weight.register_post_accumulate_grad_hook(lambda p: first_steps.append(step["k"]))
    m[3].bias.register_post_accumulate_grad_hook(lambda p: step.__setitem__("k", step["k"] + 1))  # dense: every step
    s = make_schedule("sequential", period=1, unit="step")
    fit(m, data(), data(16, 2), epochs=2, schedule=s, **KW)
    # backward reaches layer 3 before layer 0, so the core/first hooks see the count already incremented
    assert [k - 1 for k in core_steps] == [0, 2, 4] and [k - 1 for k in first_steps] == [1, 3, 5]


def test_amp_bfloat16_on_cpu():
    df = fit(tiny(), data(), data(16, 2), epochs=1, amp=True, schedule="regular", **KW)
    assert math.isfinite(df.train_loss.iloc[0])


def test_compile_with_sequential_freezing_trains_the_right_factors():
    torch._dynamo.reset()
    m = tiny()
    rec = Recorder(m)
    s = make_schedule("sequential")
    fit(m, data(), data(16, 2), epochs=3, schedule=s, compile="aot_eager", on_epoch_end=rec, **KW)
    for e in range(3):
        assert rec.updated[e] == expected_trained(m, s, e), e
    torch._dynamo.reset()


def test_ddp_single_process_gloo(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        m = tiny()
        rec = Recorder(m)
        s = make_schedule("sequential")
        df = fit(m, data(), data(16, 2), epochs=3, schedule=s, checkpoint=tmp_path / "ddp.pt", on_epoch_end=rec, **KW)
        assert len(df) == 3
        for e in range(3):
            assert rec.updated[e] == expected_trained(m, s, e), e
        assert not any(k.startswith("module.") for k in load_checkpoint(tmp_path / "ddp.pt")["model"])
    finally:
        dist.destroy_process_group()


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_train import tiny, data, KW
    from lrdnb.train import fit
    from lrdnb.freezing import make_schedule
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    m = tiny()
    make_schedule("regular").apply(m, 0)  # handed over with factors frozen: fit must unfreeze before wrapping
    fit(m, data(64, seed=10 + rank), data(16, 2), epochs=3, schedule="sequential", **KW)
    torch.save(m.state_dict(), "{out}" + str(rank))
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_ddp_two_processes_keep_replicas_identical_through_sequential_freezing(tmp_path):
    """Each rank sees other data; all-reduced grads keep replicas equal, also for factors frozen at epoch 0."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=os.path.dirname(__file__), store=tmp_path / "store", out=tmp_path / "sd"))
    procs = [subprocess.Popen([sys.executable, str(script), str(r)]) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    a, b = (torch.load(tmp_path / f"sd{r}", weights_only=True) for r in range(2))
    init = tiny().state_dict()
    for n, _ in tiny().named_parameters():  # BN running stats are broadcast, then updated locally: not compared
        assert torch.allclose(a[n].float(), b[n].float(), atol=1e-6), n
    assert not torch.equal(a["0.first.weight"], init["0.first.weight"])  # trained at epoch 1 only

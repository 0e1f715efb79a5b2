"""Coarse-to-fine step search (lrdnb.steps): located steps, timings saved, cache replay, same choice as
the exhaustive sweep on a staircase curve.

The device is replaced by a synthetic staircase (what this CPU's oneDNN kernels and the paper's
Fig. 2 show) so that the assertions are exact; the real-device path runs in test_rankopt.py and
benchmarks/rankopt_cost.py.
"""
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lrdnb
from lrdnb import pairs, steps, sweeps
from lrdnb.cache import TimingCache
from lrdnb.plan import LayerSpec
from lrdnb.rankopt import algorithm1, optimize_ranks, rank_range

FAST = dict(device="cpu", min_run_time=1e-4, progress=False, threads=1)


def spec(c=64, method="tucker2", ranks=(38, 38)) -> LayerSpec:
    return LayerSpec("c", "conv2d", [c, c, 3, 3], False, [2, c, 4, 4], output_shape=[2, c, 4, 4], padding=[1, 1],
                     method=method, ranks=list(ranks))


def stair_time(r: int, at=None) -> float:
    """Seconds per call: a staircase with steps ``{rank: height}`` (just above ``rank`` the time is
    ``height`` higher), a slight slope, and 10.0 for rank 0 (the original layer)."""
    at = {13: 0.3, 20: 0.05, 27: 0.25, 37: 0.4} if at is None else at
    if r == 0:
        return 10.0
    return 1.0 + 0.002 * r + sum(h for a, h in at.items() if r > a)


@pytest.fixture
def fake_device(monkeypatch):
    """Session timings and paired verification read ``stair_time``; counts what was measured."""
    log = {"measured": [], "verified": [], "sessions": 0, "references": 0}
    real_init = sweeps._Session.__init__

    def init(self, *a, **k):
        log["sessions"] += 1
        real_init(self, *a, **k)

    def fake_time(self, k, r, p):
        self.seen.add((r, p))
        self.seq.append((k, r, p, stair_time(r)))
        if r:
            log["measured"].append(r)
        else:
            log["references"] += 1

    def fake_round(run, ranks, *a):
        log["verified"].append(sorted(ranks))
        return {r: stair_time(r) for r in ranks}

    monkeypatch.setattr(sweeps._Session, "__init__", init)
    monkeypatch.setattr(sweeps._Session, "_time", fake_time)
    monkeypatch.setattr(pairs, "_round", fake_round)
    return log


def test_coarse_grid():
    assert steps.coarse_grid(range(244, 310), 16) == [309, 304, 288, 272, 256, 244]
    assert steps.coarse_grid([5, 3, 4], 1) == [5, 4, 3]  # grid 1: every rank
    assert steps.coarse_grid([7], 8) == [7]
    with pytest.raises(ValueError, match="grid"):
        steps.coarse_grid([1, 2], 0)


@pytest.mark.parametrize("grid", [8, 16, 5])
def test_staircase_locates_steps_off_grid(fake_device, grid):
    ranks = list(range(45, 9, -1))  # 45 .. 10
    df = steps.staircase_sweep(spec(), ranks=ranks, pass_="train", grid=grid, refine=2, repeats=2, **FAST)
    # the largest step 38 -> 37 first, then the highest-rank step at least half as large: 28 -> 27
    # (14 -> 13 is larger but lower; 21 -> 20 is too small to count)
    assert df.attrs["steps"] == [37, 27]
    measured = set(fake_device["measured"])
    assert len(measured) < len(ranks) / 2  # far fewer ranks than the exhaustive sweep
    assert {37, 38, 27, 28} <= set(df["rank"])  # both sides of the located step are in the curve
    d = df[df["method"] == "tucker2"]
    assert d["rank"].between(10, 45).all() and (d["pass"] == "train").all()
    assert np.allclose(d["norm_s"] / d["ref_s"], [stair_time(r) / 10.0 for r in d["rank"]])


def test_staircase_finds_step_below_grid_rank_in_two_probes(fake_device, monkeypatch):
    # one step between 31 and 32 (just below the grid rank 32): probes lo + 1 = 25, then hi - 1 = 31
    at = {31: 0.4}
    monkeypatch.setattr(sweeps._Session, "_time", lambda self, k, r, p: (
        self.seen.add((r, p)), self.seq.append((k, r, p, stair_time(r, at))), fake_device["measured"].append(r)))
    df = steps.staircase_sweep(spec(), ranks=list(range(45, 9, -1)), pass_="train", grid=8, refine=1, repeats=1,
                               **FAST)
    assert df.attrs["steps"] == [31]
    coarse = set(df.attrs["coarse"])
    assert [r for r in fake_device["measured"] if r and r not in coarse] == [25, 31]


@pytest.mark.parametrize("locate, found", [("bisect", 31), ("boundary", 24)])
def test_staircase_locate_boundary_never_probes_inside(fake_device, monkeypatch, tmp_path, locate, found):
    # one step 32 -> 31, inside the coarse interval 24 -> 32: its boundary 25 -> 24 is rejected in
    # pairs; bisection then finds 31 with single probes and a second paired test, while
    # locate="boundary" keeps the boundary as the drop's step and times nothing off the grid
    at = {31: 0.4}
    monkeypatch.setattr(sweeps._Session, "_time", lambda self, k, r, p: (
        self.seen.add((r, p)), self.seq.append((k, r, p, stair_time(r, at))), fake_device["measured"].append(r)))
    monkeypatch.setattr(pairs, "_round", lambda run, ranks, *a: {r: stair_time(r, at) for r in ranks})
    kw = dict(ranks=list(range(45, 9, -1)), pass_="train", grid=8, refine=1, repeats=1, verify_rounds=3, early=0.8,
              min_step=0.02, cache=TimingCache(tmp_path), **FAST)
    df = steps.staircase_sweep(spec(), locate=locate, **kw)
    assert df.attrs["steps"] == [found]
    assert sorted(df.attrs["verified"]["candidate"]) == ([24, 31] if locate == "bisect" else [24])
    off_grid = [r for r in fake_device["measured"] if r and r not in df.attrs["coarse"]]
    assert (off_grid == []) == (locate == "boundary")
    # the other setting, on the same cache, decides for itself (its outcome is cached under its own tag)
    other = {"bisect": "boundary", "boundary": "bisect"}[locate]
    assert steps.staircase_sweep(spec(), locate=other, **kw).attrs["steps"] == [{"bisect": 31, "boundary": 24}[other]]
    with pytest.raises(ValueError, match="locate"):
        steps.staircase_sweep(spec(), locate="inside", **kw)


def test_staircase_tests_tile_boundary_in_pairs_not_single_probes(fake_device, monkeypatch):
    # a step at the grid rank 32 (33 -> 32); single measurements of 33 read 20% low (noise): a
    # probe would put 33 below the step, paired re-timing does not (and no probe is taken)
    at = {32: 0.3}
    monkeypatch.setattr(sweeps._Session, "_time", lambda self, k, r, p: (
        self.seen.add((r, p)), self.seq.append((k, r, p, stair_time(r, at) * (0.8 if r == 33 else 1.0))),
        fake_device["measured"].append(r)))
    monkeypatch.setattr(pairs, "_round", lambda run, ranks, *a: {r: stair_time(r, at) for r in ranks})
    df = steps.staircase_sweep(spec(), ranks=list(range(45, 9, -1)), pass_="train", grid=8, refine=1, repeats=1,
                               verify_rounds=3, early=0.8, min_step=0.02, **FAST)
    assert df.attrs["steps"] == [32]
    assert df.attrs["verified"]["candidate"].tolist() == [32]
    assert set(fake_device["measured"]) - {0} <= set(df.attrs["coarse"])  # no single-rank probe


@pytest.mark.parametrize("every", [100, 3])
def test_staircase_times_the_reference_at_start_close_and_every_n(fake_device, every):
    # 6 coarse ranks x 2 passes = 12 measurements; the original layer (the slowest call of a
    # search) is timed at the start, every ``every`` measurements and at the close - not at the
    # start of each pass (a coarse pass is shorter than reference_every in optimize_ranks)
    df = steps.staircase_sweep(spec(), ranks=list(range(45, 9, -1)), pass_="train", grid=8, refine=1, repeats=2,
                               reference_every=every, **FAST)
    assert df.attrs["coarse"] == [45, 40, 32, 24, 16, 10]
    n = len(fake_device["measured"])  # coarse ranks and locating probes
    assert n >= 12 and fake_device["references"] == 2 + (n - 1) // every
    keep = df[df["method"] == "keep"].iloc[0]
    assert keep["n"] == (2 if every == 100 else 3)  # one value per repeat tag that had ticks
    # the curve is still reference-normalised: T = 10, the staircase's values divided by it x T
    assert keep["norm_s"] == pytest.approx(10.0)
    got = df[df["rank"] == 32]["norm_s"].item()
    assert got == pytest.approx(stair_time(32), rel=1e-6)


def test_staircase_cache_replays_without_timing(fake_device, tmp_path):
    cache = TimingCache(tmp_path)
    kw = dict(ranks=list(range(45, 9, -1)), pass_="train", grid=8, refine=2, repeats=2, verify_rounds=3,
              confirm=0.8, min_step=0.02, cache=cache, **FAST)
    a = steps.staircase_sweep(spec(), **kw)
    n_sessions, n_verified = fake_device["sessions"], len(fake_device["verified"])
    # the largest coarse drop 32 -> 40: its tile boundary 33 -> 32 is tested in pairs first (the
    # slope alone, < min_step: rejected), then located by probes at 37 and verified (one call per
    # round); sequential: the first confirmed step ends the search
    assert n_sessions == 1 and fake_device["verified"] == [[32, 33]] * 3 + [[37, 38]] * 3
    assert list(a.attrs["verified"]["candidate"]) == [37, 32] and a.attrs["steps"] == [37]
    b = steps.staircase_sweep(spec(), **{**kw, "cache": TimingCache(tmp_path)})
    assert fake_device["sessions"] == n_sessions and len(fake_device["verified"]) == n_verified  # nothing timed
    assert b.attrs["steps"] == a.attrs["steps"] and b["cached"].all()
    pd.testing.assert_frame_equal(a.attrs["verified"].drop(columns="cached"), b.attrs["verified"].drop(columns="cached"))
    key = ["rank", "method", "pass"]
    pd.testing.assert_series_equal(a.sort_values(key)["norm_s"].reset_index(drop=True),
                                   b.sort_values(key)["norm_s"].reset_index(drop=True), rtol=1e-5)


def test_boundaries_are_aligned_dropping_untested():
    val = {45: 1.5, 40: 1.49, 32: 1.1, 24: 1.2, 16: 1.0, 10: 0.7}
    # (32, 40) dropped, (24, 32) rose, (16, 24) dropped; 10 is not on the grid; 40 already tested
    assert steps._boundaries(val, list(val), 8, done={40}) == [32, 16]
    assert steps._boundaries(val, list(val), 8, done=set()) == [40, 32, 16]


def test_staircase_boundaries_pair_tests_every_tile_boundary(fake_device, tmp_path):
    kw = dict(ranks=list(range(45, 9, -1)), pass_="train", grid=8, refine=2, repeats=2, verify_rounds=3,
              early=0.8, min_step=0.02, boundaries=True, cache=TimingCache(tmp_path), **FAST)
    a = steps.staircase_sweep(spec(), **kw)
    # the two picks are located as without boundaries (37, 27); then the other aligned boundaries
    # of dropping coarse intervals (40 -> 45: slope; 16 -> 24: the step at 20 lies inside) are
    # re-timed in one rotation - slope only, so stopped after 3 rounds (min_step) and rejected
    assert a.attrs["steps"] == [37, 27, 40, 16]
    assert fake_device["verified"][-3:] == [[16, 17, 40, 41]] * 3
    v = a.attrs["verified"].set_index("candidate")
    assert set(v.index) == {40, 37, 32, 27, 24, 16} and (v["se"].fillna(0) < 1e-12).all()  # exact fake times
    ok = lrdnb.choose.confirmed(a.attrs["verified"], 0.8, 0.02)
    assert sorted(a.attrs["verified"]["candidate"][ok]) == [27, 37]
    n = len(fake_device["verified"])
    b = steps.staircase_sweep(spec(), **{**kw, "cache": TimingCache(tmp_path)})  # replay: nothing timed
    assert len(fake_device["verified"]) == n and b.attrs["steps"] == a.attrs["steps"]
    c = steps.staircase_sweep(spec(), **{**kw, "boundaries": False, "cache": TimingCache(tmp_path)})
    assert c.attrs["steps"] == [37, 27]  # its own cached outcome (tag without "-b")


def test_staircase_verifies_next_step_when_first_not_confirmed(fake_device, monkeypatch):
    calls = []

    def half_confirmed(run, ranks, *a):  # the first pair only seen in 2 of 5 rounds
        calls.append(sorted(ranks))
        slow = sum(37 in c for c in calls) > 2  # rank 37 from its third round on
        return {r: stair_time(r) * (1.5 if slow and r == 37 else 1.0) for r in ranks}

    monkeypatch.setattr(pairs, "_round", half_confirmed)
    df = steps.staircase_sweep(spec(), ranks=list(range(45, 9, -1)), pass_="train", grid=8, refine=2,
                               verify_rounds=5, confirm=0.8, min_step=0.02, **FAST)
    v = df.attrs["verified"].set_index("candidate")
    # each coarse drop: the tile boundary in pairs (slope only: rejected), then the rank the probes
    # find; no early stop asked: all rounds
    assert calls == [[32, 33]] * 5 + [[37, 38]] * 5 + [[24, 25]] * 5 + [[27, 28]] * 5
    assert df.attrs["steps"] == [37, 27] and v.loc[37, "faster"] == pytest.approx(0.4) and v.loc[27, "faster"] == 1.0
    r, why = algorithm1(df[df.method == "tucker2"]["rank"], df[df.method == "tucker2"]["norm_s"], 10.0,
                        verified=df.attrs["verified"])
    assert r == 27 and "28->27" in why


@pytest.mark.parametrize("unanimous, rounds_step", [(3, 3), (None, 5)])
def test_verify_steps_stops_when_settled(fake_device, monkeypatch, unanimous, rounds_step):
    # 38 -> 37 is a step (faster in every round); 31 -> 30 goes the wrong way (slower in every round)
    times = {30: 1.2, 31: 1.1}

    def fake(run, ranks, *a):
        fake_device["verified"].append(sorted(ranks))
        return {r: times.get(r, stair_time(r)) for r in ranks}

    monkeypatch.setattr(pairs, "_round", fake)
    v = steps.verify_steps(spec(), [37, 30], "train", rounds=5, early=0.8, unanimous=unanimous, **FAST)
    full = steps.verify_steps(spec(), [37, 30], "train", rounds=5, **FAST)
    v = v.set_index("candidate")
    assert v.loc[37, "rounds"] == rounds_step and v.loc[37, "faster"] == 1.0  # confirmed: all rounds unless unanimous
    assert v.loc[30, "rounds"] == 2 and v.loc[30, "faster"] == 0.0  # rejected at 2 slower rounds
    assert full.set_index("candidate")["rounds"].tolist() == [5, 5]
    # the verdicts (what algorithm1 counts) are those of all five rounds
    for c in (37, 30):
        f = full.set_index("candidate").loc[c]
        assert (v.loc[c, "faster"] >= 0.8 and v.loc[c, "ratio"] < 1) == (f["faster"] >= 0.8 and f["ratio"] < 1)
    with pytest.raises(ValueError, match="early"):
        steps.verify_steps(spec(), [37], "train", early=1.5, **FAST)


def test_staircase_flat_curve_has_no_steps(fake_device, monkeypatch):
    monkeypatch.setattr(sweeps._Session, "_time", lambda self, k, r, p: self.seq.append((k, r, p, 10.0 if r == 0
                                                                                          else 1.0 + 0.001 * r)))
    df = steps.staircase_sweep(spec(), ranks=list(range(40, 20, -1)), pass_="train", grid=8, verify_rounds=3,
                               **FAST)
    assert df.attrs["steps"][0] in range(20, 40)  # a rising curve: each coarse drop is the slope
    flat = steps.staircase_sweep(spec(), ranks=[30, 29, 28], pass_="train", grid=8, repeats=1, **FAST)
    assert set(flat["rank"]) >= {30, 28}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(128, 128, 3, padding=1, bias=False)
        self.b = nn.Conv2d(128, 128, 3, padding=1, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def tiled_device(monkeypatch, log, quantum):
    """Sessions and paired rounds read a tiled staircase - a step every ``quantum`` ranks, and a
    large one (0.3) at 65 -> 64 - and each paired round's ranks are logged in ``log["verified"]``."""
    def t(r):
        return 10.0 if r == 0 else 1.0 + 0.002 * r + 0.1 * np.ceil(r / quantum) + (0.3 if r > 64 else 0.0)

    def rounds_logged(run, ranks, *a):
        log["verified"].append(sorted(ranks))
        return {r: t(r) for r in ranks}

    monkeypatch.setattr(sweeps._Session, "_time",
                        lambda self, k, r, p: (self.seen.add((r, p)), self.seq.append((k, r, p, t(r)))))
    monkeypatch.setattr(pairs, "_round", rounds_logged)


@pytest.mark.parametrize("quantum", [8, 16])
def test_staircase_and_exhaustive_choose_the_same_rank(fake_device, monkeypatch, quantum):
    tiled_device(monkeypatch, fake_device, quantum)
    torch.manual_seed(0)
    m, x = Net(), torch.randn(2, 128, 4, 4)
    p = lrdnb.plan(m, x)
    rr = rank_range(p["a"], alpha=2)
    assert rr[0] > 64 > rr[-1]
    kw = dict(cache=None, repeats=2, **FAST)
    stair = optimize_ranks(m, x, p, search="staircase", **kw)
    exh = optimize_ranks(m, x, p, search="exhaustive", **kw)
    assert stair["a"].ranks[0] == exh["a"].ranks[0] == 64  # the rank just past the 65 -> 64 drop
    assert stair.meta["rank_optimization"]["timings"] < exh.meta["rank_optimization"]["timings"] / 2
    assert stair.meta["rank_optimization"]["search"] == "staircase"


def test_optimize_ranks_unanimous_stops_confirmed_steps_early(fake_device, monkeypatch):
    # the 65 -> 64 step is faster in every paired round: with unanimous=3 it is confirmed after 3
    # rounds instead of 5, and the choice is the same
    tiled_device(monkeypatch, fake_device, 16)
    torch.manual_seed(0)
    m, x = Net(), torch.randn(2, 128, 4, 4)
    p = lrdnb.plan(m, x)
    rounds = {}
    for u in (None, 3):
        fake_device["verified"].clear()
        q = optimize_ranks(m, x, p, cache=None, repeats=1, unanimous=u, **FAST)
        rounds[u] = len(fake_device["verified"])
        assert q.meta["rank_optimization"]["unanimous"] == u
        assert q["a"].ranks[0] == q["b"].ranks[0] == 64  # the rank just past the 65 -> 64 drop
    assert 0 < rounds[3] < rounds[None]


def test_optimize_ranks_search_errors():
    m, x = Net(), torch.randn(2, 128, 4, 4)
    p = lrdnb.plan(m, x)
    with pytest.raises(ValueError, match="search"):
        optimize_ranks(m, x, p, search="binary", cache=None)
    with pytest.raises(ValueError, match="exhaustive"):
        optimize_ranks(m, x, p, method="joint", search="staircase", cache=None)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        optimize_ranks(m, x, p, repeats=0, cache=None)


def test_optimize_ranks_default_repeats_per_search(fake_device):
    # one pass over the staircase's coarse grid (its steps are re-timed in pairs), two over every rank
    m, x = Net(), torch.randn(2, 128, 4, 4)
    p = lrdnb.plan(m, x)
    counts = {}
    for search in ("staircase", "exhaustive"):
        fake_device["measured"].clear()
        q = optimize_ranks(m, x, p, search=search, cache=None, **FAST)
        counts[search] = pd.Series(fake_device["measured"]).value_counts()
        assert q.meta["rank_optimization"]["repeats"] == {"staircase": 1, "exhaustive": 2}[search]
    top = rank_range(p["a"], alpha=2)[0]
    # (a and b are two curves: a reads the network's input and is timed without an input gradient)
    assert counts["staircase"][top] == 2 and counts["exhaustive"][top] == 4


def test_curve_mixes_sessions_by_ratio():
    """A partly cached curve: rows measured while the machine ran 2x slower carry a 2x larger
    reference; their times are compared by ratio to the original layer, not by raw seconds."""
    from lrdnb.rankopt import _curve

    df = pd.DataFrame([
        {"rank": 0, "method": "keep", "pass": "train", "norm_s": 1.0, "ref_s": 1.0, "ratios": "1;1"},
        {"rank": 8, "method": "svd", "pass": "train", "norm_s": 0.5, "ref_s": 1.0, "ratios": "0.5;0.5"},
        {"rank": 9, "method": "svd", "pass": "train", "norm_s": 1.4, "ref_s": 2.0, "ratios": "0.7"},  # slow session
    ])
    r, t2, tm, T = _curve(df, "train")
    assert list(r) == [8, 9] and T == 1.0
    assert np.allclose(tm, [0.5, 0.7]) and t2.shape == (2, 2) and np.allclose(t2[:, 1], 0.7)
    assert algorithm1(r, t2, T)[0] == 8


def test_verify_steps_warms_up_each_new_shape_once(monkeypatch):
    """Every rank of the pairs gets exactly one untimed first call (kernel creation) before the
    timed rounds - not none (a cold first round) and not one per rank already warm."""
    calls: dict[int, int] = {}
    real = pairs.make_runner

    def counting(module, *a, **k):
        fn = real(module, *a, **k)
        r = module.first.out_channels if hasattr(module, "first") else 0

        def run():
            calls[r] = calls.get(r, 0) + 1
            fn()
        return run

    monkeypatch.setattr(pairs, "make_runner", counting)
    rounds = 3
    pairs.verify_steps(spec(), [36, 32], "train", rounds=rounds, device="cpu", min_run_time=1e-9, threads=1,
                       progress=False)
    # min_run_time ~0: one call per measurement; the largest rank (37) also ran the size estimate
    assert calls == {37: rounds + 2, 36: rounds + 1, 33: rounds + 1, 32: rounds + 1}


def test_session_ratio_is_normalised_by_the_interpolated_reference():
    s = sweeps._Session(spec(), "tucker2", ("train",), torch.device("cpu"), 1, torch.float32, False, 1.0, (), 1e-4,
                        16, 0, size_rank=38)
    # reference 10 s before and 20 s after: the rank between them is compared with 15 s
    s.seq = [(0, 0, "train", 10.0), (0, 38, "train", 3.0), (0, 0, "train", 20.0)]
    assert s.ratio(38, "train") == pytest.approx(0.2)


def test_optimize_ranks_keeps_a_hopeless_layer_without_locating_steps(fake_device, monkeypatch, tmp_path):
    # the original layer takes 0.5 s, every decomposed rank >= 1 s: no rank can beat it
    monkeypatch.setattr(sweeps._Session, "_time", lambda self, k, r, p: (
        self.seen.add((r, p)), self.seq.append((k, r, p, 0.5 if r == 0 else stair_time(r)))))
    m, x = Net(), torch.randn(2, 128, 4, 4)
    p = lrdnb.plan(m, x)
    q = optimize_ranks(m, x, p, cache=TimingCache(tmp_path), **FAST)
    assert fake_device["verified"] == []  # nothing re-timed in pairs
    info = q.meta["rank_optimization"]
    assert info["slower"] == 1.1 and info["kept_unsearched"] == info["signatures"] == 2
    for name in ("a", "b"):
        assert q[name].method == "keep" and "no steps located" in q[name].reason
        best = float(re.search(r"best ([0-9.]+)x", q[name].reason).group(1))
        assert best >= 1.1 and q[name].time_decomposed == q[name].time_original  # kept: its own time
    # a warm run replays the same decision; searching anyway keeps the original too, after paired checks
    again = optimize_ranks(m, x, p, cache=TimingCache(tmp_path), **FAST)
    assert again.meta["rank_optimization"]["timings"] == 0 and again.meta["rank_optimization"]["kept_unsearched"] == 2
    assert [s.reason for s in again] == [s.reason for s in q]
    full = optimize_ranks(m, x, p, cache=None, slower=None, **FAST)
    assert fake_device["verified"] and full.meta["rank_optimization"]["kept_unsearched"] == 0
    assert all(full[n].method == "keep" and "no steps located" not in full[n].reason for n in ("a", "b"))

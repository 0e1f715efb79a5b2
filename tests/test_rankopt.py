"""Rank optimization: Algorithm 1 on synthetic curves, joint selection, optimize_ranks on a tiny model."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lrdnb
from lrdnb.cache import TimingCache
from lrdnb.factors import svd_error_curve, tucker2_error_curve
from lrdnb.plan import LayerSpec
from lrdnb.rankopt import algorithm1, curve_steps, joint_select, optimize_ranks, rank_range, top_candidates

FAST = dict(device="cpu", min_run_time=1e-4, progress=False, threads=1, repeats=1, reference_every=0)


def staircase(ranks, quantum=16, base=1.0, step=0.15, slope=0.002):
    """Step time that jumps by `step` just above each multiple of `quantum` (the CPU's Fig. 2)."""
    r = np.asarray(ranks)
    return base + slope * r + step * np.ceil(r / quantum)


# ---------------------------------------------------------------- rank range (eq. 5 / 6)
def test_rank_range_paper_layer():
    spec = LayerSpec("c", "conv2d", [512, 512, 3, 3], False, [8, 512, 14, 14], method="tucker2", ranks=[309, 309])
    r = rank_range(spec, alpha=2)
    assert r[0] == 309 and r[-1] == 244 and r == sorted(r, reverse=True) and len(r) == 66
    assert rank_range(spec)[0] == 309  # own ranks as R; R_min at its achieved ratio + 1
    assert abs(rank_range(spec)[-1] - 244) <= 1


def test_rank_range_svd():
    spec = LayerSpec("fc", "linear", [1000, 2048], True, [8, 2048], method="svd", ranks=[335])
    r = rank_range(spec, alpha=2)
    assert r[0] == 335 and r[-1] == lrdnb.ranks.svd_rank(2048, 1000, 3)
    with pytest.raises(ValueError, match="method"):
        rank_range(spec, alpha=2, method="cp")


# ---------------------------------------------------------------- Algorithm 1
def test_algorithm1_known_argmax():
    ranks = list(range(244, 310))
    t = staircase(ranks)
    t[ranks.index(257):] += 0.3  # the biggest step: 257 -> 256
    r, why = algorithm1(ranks, t, t_original=10.0)
    assert r == 256 and "257->256" in why and "faster than original" in why
    # order of the input does not matter
    assert algorithm1(ranks[::-1], t[::-1], 10.0)[0] == 256


def test_algorithm1_original_faster():
    ranks = list(range(240, 260))
    r, why = algorithm1(ranks, staircase(ranks), t_original=0.5)
    assert r is None and "original layer kept" in why


def test_algorithm1_top_rank_never_candidate_and_flat_curve():
    r, _ = algorithm1([10, 11, 12], [1.0, 1.0, 1.0], 2.0)
    assert r in (10, 11)
    r, why = algorithm1([10, 11, 12], [1.0, 1.0, 1.0], 2.0, min_drop=0.05)
    assert r == 12 and "no drop" in why  # nothing above the noise: keep the starting rank


def test_algorithm1_multiple():
    ranks = list(range(240, 310))
    t = staircase(ranks, quantum=16)
    t[ranks.index(251):] += 0.5  # a big step at 251 -> 250, not a multiple of 16
    assert algorithm1(ranks, t, 10.0)[0] == 250
    r, why = algorithm1(ranks, t, 10.0, multiple=16)
    assert r % 16 == 0 and "x16" in why


def test_algorithm1_relative_variant():
    ranks = [1, 2, 3, 4]
    t = [1.0, 1.5, 10.0, 12.0]  # absolute: 3->2 saves 8.5 (85%); relative: 2->1 saves 33%
    assert algorithm1(ranks, t, 100.0)[0] == 2
    t2 = [1.0, 3.0, 3.3, 20.0]  # absolute: 4->3 (16.7, 83%); relative same; 2->1: 67%
    assert algorithm1(ranks, t2, 100.0, variant="relative")[0] == 3
    t3 = [0.1, 1.0, 2.0, 3.0]  # absolute drops all 1 (ties -> first = lowest rank); relative picks 2->1 (90%)
    assert algorithm1(ranks, t3, 100.0, variant="relative")[0] == 1


def test_algorithm1_smoothing_ignores_isolated_spike():
    ranks = list(range(240, 310))
    t = staircase(ranks)
    t[ranks.index(281)] += 1.0  # one noisy measurement at 281: a huge fake drop 281 -> 280
    assert algorithm1(ranks, t, 10.0)[0] == 280  # the paper's argmax falls for it
    r, _ = algorithm1(ranks, t, 10.0, smooth="median3")
    assert r % 16 == 0  # a real step of the staircase
    assert algorithm1(ranks, t, 10.0, smooth="median5")[0] % 16 == 0


def test_algorithm1_consistent_over_repeats():
    ranks = list(range(240, 310))
    rng = np.random.default_rng(0)
    reps = np.stack([staircase(ranks) + rng.normal(0, 0.01, len(ranks)) for _ in range(3)])
    reps[1, ranks.index(281)] += 1.0  # spike in one repeat only
    r, _ = algorithm1(ranks, reps, 10.0)  # median over repeats already rejects a one-repeat spike
    assert r % 16 == 0
    r, _ = algorithm1(ranks, reps, 10.0, smooth="consistent")
    assert r % 16 == 0
    with pytest.raises(ValueError, match="repeats"):
        algorithm1(ranks, reps[0], 10.0, smooth="consistent")


def test_algorithm1_errors():
    with pytest.raises(ValueError, match="variant"):
        algorithm1([1, 2], [1, 2], 3, variant="best")
    with pytest.raises(ValueError, match="smoothing"):
        algorithm1([1, 2], [1, 2], 3, smooth="gauss")
    with pytest.raises(ValueError, match=">= 2 ranks"):
        algorithm1([1], [1], 3)


def test_curve_steps():
    ranks = list(range(240, 300))
    df = pd.DataFrame({"rank": ranks, "norm_s": staircase(ranks), "method": "tucker2", "pass": "train"})
    st = curve_steps(df, "train", top=3)
    assert set(st["rank_to"]) <= {240, 256, 272, 288} and len(st) == 3
    assert (st["drop_rel"] > st["noise_rel"]).all()


# ---------------------------------------------------------------- joint selection
def synthetic_tables(n_layers=6, seed=0):
    """Per-layer step curves (period 16) and convex error curves of different steepness."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_layers):
        ranks = np.arange(40, 81)
        t = staircase(ranks, step=rng.uniform(0.05, 0.3), slope=rng.uniform(0.001, 0.01))
        err = np.exp(-ranks / rng.uniform(10, 60))
        T = t.max() * rng.uniform(0.9, 1.5)
        rows.append(pd.DataFrame({"layer": f"l{i}", "rank": 0, "time_s": [T], "error": [0.0]}))
        rows.append(pd.DataFrame({"layer": f"l{i}", "rank": ranks, "time_s": t, "error": err}))
    return pd.concat(rows, ignore_index=True)


def uniform(df, rank):
    sel = df[df["rank"] == rank]
    return float(sel["time_s"].sum()), float((sel["error"] ** 2).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_meets_budget_and_beats_uniform(seed):
    df = synthetic_tables(seed=seed)
    t_u, e_u = uniform(df, 64)
    res = joint_select(df, budget=t_u)
    assert res["feasible"] and res["time_s"] <= t_u * (1 + 1e-9)
    assert res["error"] < e_u  # strictly better at the same time
    assert set(res["ranks"]) == {f"l{i}" for i in range(6)}
    chosen = res["table"]
    assert len(chosen) == 6 and chosen["time_s"].sum() == pytest.approx(res["time_s"])
    # tighter budgets give more error, never more time than allowed
    res2 = joint_select(df, budget=0.9 * t_u)
    assert res2["time_s"] <= 0.9 * t_u * (1 + 1e-9) and res2["error"] >= res["error"]


def test_joint_lambda_count_and_infeasible():
    df = synthetic_tables()
    fast = joint_select(df, lam=1e6)  # time is all that matters
    slow = joint_select(df, lam=0.0)  # error is all that matters: keep everything (error 0)
    assert fast["time_s"] < slow["time_s"] and slow["error"] == 0 and set(slow["ranks"].values()) == {0}
    d2 = df.copy()
    d2["count"] = 3
    r3 = joint_select(d2, budget=3 * uniform(df, 64)[0])
    assert r3["time_s"] == pytest.approx(3 * joint_select(df, budget=uniform(df, 64)[0])["time_s"])
    with pytest.warns(UserWarning, match="below the fastest"):
        bad = joint_select(df, budget=1e-6)
    assert not bad["feasible"]
    with pytest.raises(ValueError, match="exactly one"):
        joint_select(df)
    with pytest.raises(ValueError, match="columns"):
        joint_select(df.drop(columns="error"), budget=1.0)


def test_joint_start_is_never_beaten_by_worse():
    df = synthetic_tables(seed=3)
    start = {f"l{i}": 64 for i in range(6)}
    t_u, e_u = uniform(df, 64)
    res = joint_select(df, budget=t_u, start=start)
    assert res["error"] <= e_u and res["time_s"] <= t_u * (1 + 1e-9)


# ---------------------------------------------------------------- optimize_ranks on a tiny model
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 24, 3, padding=1)
        self.c2 = nn.Conv2d(24, 24, 3, padding=1)
        self.c3 = nn.Conv2d(24, 24, 3, padding=1)  # same signature as c2: timed once
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny(), torch.randn(2, 3, 8, 8)


def test_optimize_ranks_algorithm1_tiny(tiny, tmp_path):
    m, x = tiny
    p = lrdnb.plan(m, x)
    new = optimize_ranks(m, x, p, cache=TimingCache(tmp_path), smooth=None, **FAST)
    assert new is not p and p["c2"].time_original is None  # input plan untouched
    info = new.meta["rank_optimization"]
    dec = [s for s in p.decomposed]
    assert info["signatures"] == len(dec) - 1  # c2 and c3 share a signature
    assert info["timings"] > 0 and info["device_name"].startswith("cpu")
    for s in dec:
        n = new[s.name]
        assert n.time_original > 0 and n.time_decomposed > 0
        assert "Algorithm 1" in n.reason or "single rank" in n.reason
        if n.method == "keep":
            assert n.ranks == [] and "original" in n.reason
        else:
            assert n.method == s.method and min(rank_range(s)) <= n.ranks[0] <= max(rank_range(s))
    # c2 and c3 share timings, so they share the choice
    assert new["c2"].ranks == new["c3"].ranks and new["c2"].time_decomposed == new["c3"].time_decomposed
    out = lrdnb.apply(m, new)(x)
    assert out.shape == (2, 10)
    # warm cache: nothing re-timed, same plan
    again = optimize_ranks(m, x, p, cache=TimingCache(tmp_path), smooth=None, **FAST)
    assert again.meta["rank_optimization"]["timings"] == 0
    assert again.meta["rank_optimization"]["steps_verified"] == 0
    assert [s.ranks for s in again] == [s.ranks for s in new]


def test_optimize_ranks_joint_real_model(tiny, tmp_path):
    m, x = tiny
    p = lrdnb.plan(m, x)
    new = optimize_ranks(m, x, p, method="joint", cache=TimingCache(tmp_path), **FAST)
    info = new.meta["rank_optimization"]
    assert info["predicted_time_s"] <= info["budget_s"] * (1 + 1e-9)
    assert info["budget_s"] == pytest.approx(info["start_time_s"])  # default budget: the plan's own time
    assert info["predicted_error"] <= info["start_error"] + 1e-12  # never worse than uniform ratio
    # predicted error is the real reconstruction error of the chosen ranks
    err = 0.0
    for s in new.decomposed:
        w = m.get_submodule(s.name).weight
        e = tucker2_error_curve(w)[tuple(s.ranks)] if s.method == "tucker2" else svd_error_curve(w)[s.ranks[0]]
        err += float(e) ** 2
    assert err == pytest.approx(info["predicted_error"], rel=1e-9)
    assert all("joint" in s.reason for s in new if s.name in {d.name for d in p.decomposed})


def test_decompose_with_optimize(tiny, tmp_path):
    m, x = tiny
    dm, p = lrdnb.decompose(m, x, optimize="algorithm1",
                            optimize_kwargs=dict(cache=TimingCache(tmp_path), **FAST))
    assert "rank_optimization" in p.meta and dm(x).shape == (2, 10)


def test_optimize_ranks_errors(tiny):
    m, x = tiny
    with pytest.raises(ValueError, match="valid"):
        optimize_ranks(m, x, lrdnb.plan(m, x), method="greedy", cache=None)


def test_algorithm1_verified_and_ties():
    ranks = list(range(240, 310))
    t = staircase(ranks)
    t[ranks.index(281)] += 1.0  # the sweep's biggest "step" is a spike at 281 -> 280
    # paired re-timing: 280 is not confirmed (a round saw it slower), 256 and 272 are, about equally
    v = pd.DataFrame({"candidate": [280, 272, 256], "above": [281, 273, 257], "ratio": [0.99, 0.88, 0.87],
                      "ratio_min": [0.8, 0.85, 0.84], "ratio_max": [1.2, 0.9, 0.9]})
    v["drop_rel"] = 1 - v["ratio"]
    r, why = algorithm1(ranks, t, 10.0, verified=v)
    assert r == 256 and "verified" in why
    r, why = algorithm1(ranks, t, 10.0, verified=v, tie_tol=0.03)
    assert r == 272 and "highest of 2 tied" in why  # equal steps: the highest rank loses least accuracy
    none = v.assign(ratio_max=1.1)
    r, why = algorithm1(ranks, t, 10.0, verified=none)
    assert r == max(ranks) and "no step confirmed" in why


def test_algorithm1_ties_by_standard_error():
    ranks = list(range(240, 310))
    t = staircase(ranks)
    # 304 drops 8%, 288 drops 12%: 4 points apart, beyond a fixed 3% window
    v = pd.DataFrame({"candidate": [304, 288], "above": [305, 289], "ratio": [0.92, 0.88], "ratio_min": [0.9, 0.85],
                      "ratio_max": [0.95, 0.9], "faster": [1.0, 1.0]})
    v["drop_rel"] = 1 - v["ratio"]
    assert algorithm1(ranks, t, 10.0, verified=v, tie_tol=0.03)[0] == 288
    # rounds that cannot tell 8% from 12% (se 2% each: the difference is 1.4 se): tied -> 304
    r, why = algorithm1(ranks, t, 10.0, verified=v.assign(se=0.02), tie_tol=0.03, tie_z=1.64)
    assert r == 304 and "highest of 2 tied" in why and "1.64 se" in why
    # precise rounds (se 0.5%): 288's drop is significantly larger and wins
    assert algorithm1(ranks, t, 10.0, verified=v.assign(se=0.005), tie_tol=0.03, tie_z=1.64)[0] == 288
    # an unknown se (one round) adds nothing to the fixed window
    assert algorithm1(ranks, t, 10.0, verified=v.assign(se=np.nan), tie_tol=0.03, tie_z=1.64)[0] == 288


def test_top_candidates_snap_to_raw_step():
    ranks = list(range(240, 310))
    rng = np.random.default_rng(1)
    t = staircase(ranks, step=0.3) + rng.normal(0, 0.01, len(ranks))
    top = top_candidates(ranks, t, k=3, smooth="median3")
    assert len(top) == 3 and all(c % 16 == 0 for c in top)
    assert top_candidates(ranks, t, k=2, multiple=16) == sorted(top_candidates(ranks, t, k=2, multiple=16),
                                                               key=lambda c: -t[ranks.index(c + 1)] + t[ranks.index(c)])


def test_algorithm1_confirm_tolerates_one_disturbed_round():
    ranks = list(range(280, 300))
    t = staircase(ranks)
    v = pd.DataFrame({"candidate": [288], "above": [289], "ratio": [0.89], "ratio_min": [0.88],
                      "ratio_max": [1.002], "drop_rel": [0.11], "faster": [0.8]})
    assert algorithm1(ranks, t, 10.0, verified=v)[0] == 288  # 4 of 5 rounds saw the step
    assert algorithm1(ranks, t, 10.0, verified=v, confirm=1.0)[0] == max(ranks)
    assert algorithm1(ranks, t, 10.0, verified=v.assign(faster=0.6))[0] == max(ranks)


def test_algorithm1_min_drop_applies_to_verified_steps():
    ranks = list(range(280, 310))
    t = staircase(ranks)
    # 309 -> 308 seen faster in every round, but by 1.2%: the FLOP slope, not a step
    v = pd.DataFrame({"candidate": [308, 288], "above": [309, 289], "ratio": [0.988, 0.93], "ratio_min": [0.97, 0.9],
                      "ratio_max": [0.995, 0.96], "drop_rel": [0.012, 0.07], "faster": [1.0, 1.0]})
    alone = v[v.candidate == 308]
    assert algorithm1(ranks, t, 10.0, verified=alone)[0] == 308  # min_drop 0: any confirmed drop counts
    r, why = algorithm1(ranks, t, 10.0, verified=alone, min_drop=0.02)
    assert r == max(ranks) and "no step confirmed" in why
    r, why = algorithm1(ranks, t, 10.0, verified=v, min_drop=0.02)
    assert r == 288 and "289->288" in why


def test_optimize_ranks_times_in_the_models_memory_format(tiny, tmp_path):
    """channels_last="auto": layers are timed channels_last exactly when the model runs so."""
    from lrdnb.rankopt import runs_channels_last

    m, x = tiny
    p = lrdnb.plan(m, x)
    assert not runs_channels_last(m, x)
    assert runs_channels_last(m, x.contiguous(memory_format=torch.channels_last))
    one = dict(FAST, search="exhaustive", verify_top=0)
    cache = TimingCache(tmp_path)
    nchw = optimize_ranks(m, x, p, cache=cache, **one)
    assert nchw.meta["rank_optimization"]["channels_last"] is False
    m.to(memory_format=torch.channels_last)
    assert runs_channels_last(m, x)
    cl = optimize_ranks(m, x, p, cache=cache, **one)
    assert cl.meta["rank_optimization"]["channels_last"] is True
    assert cl.meta["rank_optimization"]["timings"] > 0  # a separate cache entry, not the NCHW timings
    forced = optimize_ranks(m, x, p, cache=cache, channels_last=False, **one)
    assert forced.meta["rank_optimization"]["channels_last"] is False
    assert forced.meta["rank_optimization"]["timings"] == 0  # the NCHW timings, from the cache
    with pytest.raises(ValueError, match="channels_last"):
        optimize_ranks(m, x, p, cache=None, channels_last="yes", **one)


def test_optimize_ranks_frozen_factors_timed_as_they_train(tiny, tmp_path):
    """frozen={method: roles}: decomposed layers timed without those factors' weight gradients,
    a separate cache entry; a role the method does not have is an error."""
    m, x = tiny
    p = lrdnb.plan(m, x)
    one = dict(FAST, search="exhaustive", verify_top=0)
    cache = TimingCache(tmp_path)
    free = optimize_ranks(m, x, p, cache=cache, **one)
    roles = {"tucker2": ["first", "last"], "svd": ["first"]}
    frz = optimize_ranks(m, x, p, cache=cache, frozen=roles, **one)
    info = frz.meta["rank_optimization"]
    assert info["frozen"] == roles and free.meta["rank_optimization"]["frozen"] == {}
    assert info["timings"] > 0  # not the unfrozen timings
    again = optimize_ranks(m, x, p, cache=cache, frozen=roles, **one)
    assert again.meta["rank_optimization"]["timings"] == 0 and [s.ranks for s in again] == [s.ranks for s in frz]
    with pytest.raises(ValueError, match="factor role"):
        optimize_ranks(m, x, p, cache=None, frozen={"tucker2": ["middle"]}, **one)

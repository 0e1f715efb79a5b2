"""Tables 1 and 2 (lrdnb.experiments.throughput) and the paper's numbers (lrdnb.paper).

Structure only: timings are never gated (MEASURING.md). Rank optimization is replaced by a fast
stand-in here (the real one is exercised by the notebook smoke runs and tests/test_rankopt).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lrdnb.rankopt
from lrdnb import paper
from lrdnb.experiments import throughput as T
from lrdnb.experiments.variants import BASELINES, METHODS
from lrdnb.layers import FactorizedLinear


def fake_optimize_ranks(model, example, plan, method="algorithm1", **kwargs):
    """Stand-in for Algorithm 1: every decomposed layer loses a quarter of its rank, the first is kept."""
    new = type(plan).from_dict(plan.to_dict())
    for i, s in enumerate(new.decomposed):
        if i == 0:
            new[s.name] = s.with_ranks([], "keep", "fake: kept")
        else:
            new[s.name] = s.with_ranks([max(1, r * 3 // 4) for r in s.ranks], s.method, "fake: -25%")
    return new


# ---------------------------------------------------------------- the paper's numbers
def test_paper_tables_transcribed():
    t1, t2, t3, t4 = paper.table1(), paper.table2(), paper.table3(), paper.table4()
    assert t1.shape[0] == 15 and t3.shape[0] == 15 and t4.shape[0] == 5 and t2.shape[0] == 3
    r50 = t1[t1.model == "resnet50"].set_index("method")
    assert list(r50.index) == list(METHODS)
    assert r50["train_delta_pct"].tolist() == [0.0, 6.07, 24.86, 24.57, 45.95]
    assert r50["infer_img_s"].tolist() == [1232, 1316, 1560, 1316, 1560]
    # deltas are consistent with the images/s the paper lists (to its rounding)
    for m, d in t1.groupby("model"):
        base = d[d.method == "original"].iloc[0]
        got = 100 * (d["train_img_s"] / base["train_img_s"] - 1)
        assert np.allclose(got, d["train_delta_pct"], atol=0.6), m
    assert t2.set_index("model").loc["resnet152"].tolist()[:3] == [232, 716, 232]
    assert t3.set_index(["model", "method"]).loc[("resnet101", "combined"), "imagenet_acc"] == 76.01
    assert t4.set_index("method").loc["combined", "train_img_s"] == 1745
    t1.loc[0, "train_img_s"] = -1  # copies: the module's numbers cannot be edited by accident
    assert paper.table1().loc[0, "train_img_s"] == 346


# ---------------------------------------------------------------- paired deltas
def test_pass_summary_uses_paired_ratios():
    # round 2 is a slow episode (everything 3x slower): paired ratios are unaffected
    rows = []
    for k, slow in enumerate([1, 1, 3, 1, 1]):
        for v, t in (("original", 0.20), ("lrd", 0.16), ("freezing", 0.16 * (1 + 0.01 * (k - 2)))):
            rows.append({"round": k, "variant": v, "median_s": t * slow})
    raw = pd.DataFrame(rows)
    s = T.pass_summary(raw, batch=8, reference="original", pass_="train").set_index("variant")
    assert s.loc["original", "train_delta_pct"] == pytest.approx(0)
    assert s.loc["lrd", "train_delta_pct"] == pytest.approx(25.0)
    assert s.loc["lrd", "train_delta_min"] == pytest.approx(25.0)
    assert s.loc["lrd", "train_delta_max"] == pytest.approx(25.0)
    # images/s from the median time (the slow round does not move the median)
    assert s.loc["original", "train_img_s"] == pytest.approx(8 / 0.20)
    # against lrd: freezing's per-round ratios are 1/(1 + 0.01 (k-2)): median 0, spread +-2%
    assert s.loc["freezing", "train_vs_lrd_pct"] == pytest.approx(0, abs=1e-9)
    assert s.loc["freezing", "train_vs_lrd_min"] == pytest.approx(100 * (1 / 1.02 - 1))
    assert s.loc["freezing", "train_vs_lrd_max"] == pytest.approx(100 * (1 / 0.98 - 1))
    assert (s["train_rounds"] == 5).all()
    assert s.loc["lrd", "train_vs_lrd_wins"] == 0 and s.loc["original", "train_vs_lrd_wins"] == 0
    assert s.loc["freezing", "train_vs_lrd_wins"] == 2  # rounds 0 and 1: 0.98x, 0.99x of lrd's time


def test_check_targets_reads_the_table():
    base = {"model": "m", "train_delta_pct": 0.0, "train_rounds": 6, "infer_rounds": 6}
    tab = pd.DataFrame([
        {**base, "method": "lrd", "infer_vs_lrd_pct": 0.0, "infer_vs_lrd_min": 0.0, "infer_vs_lrd_max": 0.0},
        {**base, "method": "rank_opt", "train_vs_lrd_pct": 10.0, "train_vs_lrd_wins": 6,
         "infer_vs_lrd_pct": 1.0, "infer_vs_lrd_wins": 5},
        {**base, "method": "freezing", "infer_vs_lrd_pct": -2.0, "infer_vs_lrd_min": -3.0, "infer_vs_lrd_max": 2.0},
        {**base, "method": "combined", "train_delta_pct": 50.0, "train_achieved": 0.6},
    ])
    c = T.check_targets(tab).set_index("claim")
    assert c.loc["combined train delta %", "met"]
    assert not c.loc["combined train: fraction of FLOP-predicted gain", "met"]
    train_sign = "rank_opt vs lrd train: sign test p (6 of 6 rounds faster)"
    assert c.loc[train_sign, "value"] == pytest.approx(1 / 64) and c.loc[train_sign, "met"]
    assert c.loc["rank_opt vs lrd train: median % above the A/A control", "met"]  # 10% > |-2%|
    infer_sign = "rank_opt vs lrd infer: sign test p (5 of 6 rounds faster)"
    assert c.loc[infer_sign, "value"] == pytest.approx(7 / 64) and not c.loc[infer_sign, "met"]
    assert not c.loc["rank_opt vs lrd infer: median % above the A/A control", "met"]  # 1% < 2%
    assert c.loc["freezing == lrd in inference (min..max spans 0)", "met"]
    # the baseline claims are reported, not met, where the baselines were not timed
    assert np.isnan(c.loc["rank_opt vs rank_quant train: +nan% (nan of 6 rounds faster), sign test p", "met"])
    tab.loc[tab.method == "rank_opt", ["train_vs_baseline_pct", "train_vs_baseline_wins", "train_vs_baseline_p"]] = \
        [0.5, 3, T.sign_test(3, 6)]
    c = T.check_targets(tab).set_index("claim")
    assert not c.loc["rank_opt vs rank_quant train: +0.5% (3 of 6 rounds faster), sign test p", "met"]


def test_sign_test():
    assert T.sign_test(0, 5) == 1.0 and T.sign_test(5, 5) == pytest.approx(1 / 32)
    assert T.sign_test(8, 10) == pytest.approx(56 / 1024)
    with pytest.raises(ValueError, match="wins"):
        T.sign_test(7, 6)


# ---------------------------------------------------------------- FLOPs
def test_count_flops_forward_and_frozen_backward():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16)
    assert T.count_flops(lin, x) == 2 * 4 * 16 * 8
    # training, input without grad: forward + weight gradient only
    assert T.count_flops(lin, x, train=True) == 2 * (2 * 4 * 16 * 8)
    f = FactorizedLinear(16, 8, rank=4, bias=False)
    full = T.count_flops(f, x, train=True)
    fwd = 2 * 4 * 16 * 4 + 2 * 4 * 4 * 8
    assert full == fwd + 2 * 4 * 4 * 8 * 2 + 2 * 4 * 16 * 4  # + last: grad w, grad in; first: grad w
    f.first.weight.requires_grad_(False)
    frozen = T.count_flops(f, x, train=True)
    # frozen `first` (and nothing before it needing grad): no grad w of first, no grad in of last
    assert frozen == fwd + 2 * 4 * 4 * 8
    assert all(p.grad is None for p in f.parameters())


# ---------------------------------------------------------------- Table 1
@pytest.fixture(scope="module")
def table1_small():
    mp = pytest.MonkeyPatch()
    mp.setattr(lrdnb.rankopt, "optimize_ranks", fake_optimize_ranks)
    try:
        df, meta = T.throughput_table(["resnet10_cpu"], batch=2, image_size=32, device="cpu", rounds=2,
                                      min_run_time=0.001, progress=False)
    finally:
        mp.undo()
    return df, meta


def test_throughput_table_structure(table1_small):
    df, meta = table1_small
    assert df["method"].tolist() == list(METHODS + BASELINES)
    d = df.set_index("method")
    for p in ("train", "infer"):
        assert (d[f"{p}_img_s"] > 0).all()
        assert d.loc["original", f"{p}_delta_pct"] == 0
        assert (d[f"{p}_delta_min"] <= d[f"{p}_delta_pct"] + 1e-9).all()
        assert (d[f"{p}_delta_pct"] <= d[f"{p}_delta_max"] + 1e-9).all()
        assert d.loc["lrd", f"{p}_vs_lrd_pct"] == 0
        assert (d[f"{p}_rounds"] == 2).all()
        assert d.loc["original", f"{p}_flop_speedup"] == 1
    assert d.loc["lrd", "params_ratio"] == pytest.approx(0.5, abs=0.05)
    # freezing: the LRD architecture; fewer trainable parameters and training FLOPs, same inference FLOPs
    assert d.loc["freezing", "params"] == d.loc["lrd", "params"]
    assert d.loc["freezing", "infer_gmacs"] == d.loc["lrd", "infer_gmacs"]
    assert d.loc["freezing", "trainable_params"] < d.loc["lrd", "trainable_params"]
    assert d.loc["freezing", "train_gmacs"] < d.loc["lrd", "train_gmacs"]
    assert d.loc["combined", "params"] == d.loc["rank_opt", "params"]
    assert d.loc["rank_opt", "layers_decomposed"] == d.loc["lrd", "layers_decomposed"] - 1
    assert d.loc["lrd", "train_flop_speedup"] > 1.5
    assert d.loc["combined", "train_flop_speedup"] > d.loc["rank_opt", "train_flop_speedup"]
    # resnet10_cpu at 224 px is ~0.9 GMACs: at 32 px (1/49 of the pixels) ~0.02 per image
    assert 0.01 < d.loc["original", "infer_gmacs"] < 0.04
    assert np.isnan(d.loc["original", "train_achieved"])
    # the baselines: the LRD ranks rounded down to x16 (a fake rank search here), frozen like Combined
    assert d.loc["rank_quant", "params"] == d.loc["rank_quant_freezing", "params"] < d.loc["lrd", "params"]
    assert d.loc["rank_quant_freezing", "schedule"] == d.loc["combined", "schedule"]
    assert d.loc["rank_quant", "label"] == "Rank quant. (x16)"
    for p in ("train", "infer"):  # our methods against their baselines, in the same rounds
        assert d.loc["rank_quant", f"{p}_vs_baseline_pct"] != d.loc["rank_quant", f"{p}_vs_baseline_pct"]  # NaN
        assert 0 <= d.loc["rank_opt", f"{p}_vs_baseline_wins"] <= 2 and 0 < d.loc["combined", f"{p}_vs_baseline_p"] <= 1
    assert meta["device"] == "cpu" and meta["params"]["rounds"] == 2
    assert len(meta["rounds"]) == 2 * len(METHODS + BASELINES) * 2  # rounds x methods x passes
    assert set(meta["plans"]["resnet10_cpu"]) == {"lrd", "rank_opt", "freezing", "combined", "rank_quant",
                                                  "rank_quant_freezing"}


def test_throughput_table_fixed_calls_per_measurement():
    """calls=2: every measurement is one timed block of exactly 2 calls (not blocked_autorange)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(lrdnb.rankopt, "optimize_ranks", fake_optimize_ranks)
    try:
        df, meta = T.throughput_table(["resnet10_cpu"], batch=2, image_size=32, device="cpu", rounds=3,
                                      methods=["original", "lrd"], passes=("train",), calls=2, progress=False)
    finally:
        mp.undo()
    raw = pd.DataFrame(meta["rounds"])
    assert len(raw) == 3 * 2 and (raw["n"] == 2).all()
    assert meta["params"]["calls"] == 2 and meta["params"]["min_run_time"] is None
    assert (df["train_rounds"] == 3).all() and (df["train_img_s"] > 0).all()


def test_side_by_side_and_plot(table1_small):
    df, _ = table1_small
    sbs = T.side_by_side(df)
    assert sbs["paper_train_delta_pct"].isna().all()  # the paper has no resnet10_cpu
    fake = df.assign(model="resnet50")
    sbs = T.side_by_side(fake).set_index("method")
    assert sbs.loc["combined", "paper_train_delta_pct"] == 45.95
    assert sbs.loc["freezing", "paper_infer_delta_pct"] == 6.82
    from lrdnb.plots import plot_throughput

    fig = plot_throughput(fake, paper.table1())
    assert len(fig.axes) == 2


def test_throughput_table_rejects_unknown_names():
    with pytest.raises(ValueError, match="valid"):
        T.throughput_table(["resnet10_cpu"], passes=["backward"], progress=False)
    with pytest.raises(ValueError, match="valid"):
        T.throughput_table(["resnet10_cpu"], methods=["original", "pruned"], image_size=32, batch=2,
                           device="cpu", progress=False)


# ---------------------------------------------------------------- Table 2
def test_decomposition_time_helpers():
    # the function itself runs in tests/test_table_notebooks_1_2.py (real rank optimization)
    df = pd.DataFrame([{"model": "resnet50", "lrd_hosvd_s": 2.0, "lrd_hooi_s": 30.0, "freeze_s": 1e-3,
                        "freezing_s": 2.001, "optimize_cold_s": 40.0, "rank_opt_cold_s": 42.0,
                        "optimize_warm_s": 1.0, "rank_opt_warm_s": 3.0}])
    sbs = T.side_by_side_time(df)
    assert sbs.loc[0, "paper_rank_opt_s"] == 264 and sbs.loc[0, "paper_lrd_s"] == 30
    from lrdnb.plots import plot_decomposition_time

    assert plot_decomposition_time(df, paper.table2()) is not None
    with pytest.raises(ValueError, match="hosvd"):
        T.decomposition_time_table(["resnet10_cpu"], weights=["svd"], progress=False)


def test_flop_time_share_and_amdahl():
    torch.set_num_threads(1)
    conv = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(4, 32, 16, 16)
    heavy = T.flop_time_share(lambda: conv(x))
    # the same convolutions plus plenty of FLOP-free elementwise work
    light = T.flop_time_share(lambda: [torch.relu(conv(x) + 1).exp().sqrt() for _ in range(1)] and
                              [x.sin().cos().tanh() for _ in range(20)])
    assert 0.5 < heavy <= 1.0 and 0.0 < light < heavy
    assert T.flop_time_share(lambda: x.sin()) == 0.0
    assert T.amdahl(1.0, 2.0) == pytest.approx(2.0) and T.amdahl(0.0, 5.0) == pytest.approx(1.0)
    assert T.amdahl(0.5, 1e9) == pytest.approx(2.0)


def test_profiler_chatter_is_dropped_other_stderr_kept(capfd):
    import os

    with T.quiet_kineto():
        os.write(2, b"USDT:2026-11-23 14:59:58 1:1 SyncActivityProfilerHandler.cpp:39] profiler_start\n")
        os.write(2, b"ERROR:2026 1:1 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\n")
        os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert "a real warning" in err and "profiler_start" not in err and "gpuGetDeviceCount" not in err
    T.flop_time_share(lambda: torch.randn(8).sin(), calls=1)
    assert "profiler_start" not in capfd.readouterr().err


def test_op_time_breakdown_categories(monkeypatch):
    torch.set_num_threads(1)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    x = torch.randn(4, 16, 16, 16)
    df = T.op_time_breakdown(lambda: net(x).sum().backward(), calls=2)
    assert df["share"].sum() == pytest.approx(1.0) and (df["seconds"] >= 0).all()
    cats = set(df["category"])
    assert {"flop", "batchnorm", "activation"} <= cats
    assert list(df["seconds"]) == sorted(df["seconds"], reverse=True)
    flop = float(df.loc[df["category"] == "flop", "share"].iloc[0])
    assert 0.3 < flop < 1.0  # the convolution's forward + backward lead (0.67-0.82 here)
    # flop_time_share is the flop row of the breakdown (compared on one profile: two separate
    # profiles of a millisecond step differ by more than any tolerance in a slow episode)
    from lrdnb.experiments import optime

    monkeypatch.setattr(optime, "op_time_breakdown", lambda fn, calls=3: df)
    assert T.flop_time_share(lambda: None, calls=2) == pytest.approx(flop)

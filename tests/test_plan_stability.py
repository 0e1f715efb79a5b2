"""benchmarks/plan_stability.py and benchmarks/rankopt_plans.py: the committed plan-stability
summary is what its own code computes from the committed per-setting runs (nothing typed in by
hand) and is internally consistent; rankopt_plans builds and times K cold plans beside LRD."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "plan_stability"


def load_script(name: str = "plan_stability"):
    """A benchmark script (benchmarks/ is not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (DATA / "plan_stability.csv").exists(), reason="no committed plan-stability results")
def test_committed_summary_is_recomputed_from_the_runs():
    ps = load_script()
    got = ps.summarize(DATA, list(ps.SETTINGS))
    committed = pd.read_csv(DATA / "plan_stability.csv")
    pd.testing.assert_frame_equal(got.drop(columns="flags").reset_index(drop=True),
                                  committed.drop(columns="flags").reset_index(drop=True), check_dtype=False,
                                  rtol=1e-9)
    assert set(got["setting"]) <= set(ps.SETTINGS)
    for lo, mid, hi in (("cold_ratio_min", "cold_ratio_median", "cold_ratio_max"),
                        ("same_ranks_min", "same_ranks_mean", "same_ranks_max")):
        assert (got[lo] <= got[mid]).all() and (got[mid] <= got[hi]).all()
    assert got["same_ranks_max"].le(1).all() and got["same_ranks_min"].ge(0).all()
    assert (got["cold_under_3x"] <= got["rounds"]).all() and (got["rounds"] >= 2).all()
    assert got["params_max"].lt(0.5).all()  # every plan is at least the 2x compression


def test_summarize_skips_missing_settings(tmp_path):
    ps = load_script()
    assert ps.summarize(tmp_path, list(ps.SETTINGS)).empty


def test_rankopt_plans_times_each_cold_plan_against_lrd():
    rp = load_script("rankopt_plans")
    models, plans, search_s = rp.build("resnet10_cpu", size=16, batch=2, plans=2, threads=1, seed=0)
    assert list(models) == ["original", "lrd", "rank_opt_1", "rank_opt_2"] and len(search_s) == 2
    assert set(plans) == {"lrd", "rank_opt_1", "rank_opt_2"}
    df, raw = rp.measure(models, size=16, batch=2, rounds=2, calls=1, threads=1)
    assert list(df["variant"]) == list(models)
    assert {r["pass"] for r in raw} == {"train", "infer"} and len(raw) == 2 * 2 * len(models)
    row = df.set_index("variant")
    assert row.loc["original", "params_ratio"] == 1.0 and row.loc["lrd", "train_vs_lrd_pct"] == 0.0
    assert (row["train_img_s"] > 0).all() and (row["infer_img_s"] > 0).all()
    assert row.loc["lrd", "params_ratio"] < 1.0  # decomposed
    for p in ("train", "infer"):
        assert row[f"{p}_vs_lrd_p"].between(0, 1).all() and (row[f"{p}_vs_lrd_wins"] <= 2).all()
    # Rank Opt.'s decomposed layers sit between the 3x and the 2x ranks: never above plain LRD's
    for k in ("rank_opt_1", "rank_opt_2"):
        for spec in plans[k].decomposed:
            assert all(a <= b for a, b in zip(spec.ranks, plans["lrd"][spec.name].ranks)), spec.name


def test_rankopt_plans_alternative_settings():
    rp = load_script("rankopt_plans")
    assert rp.parse_setting("r1u3:repeats=1,unanimous=3") == ("r1u3", {"repeats": 1, "unanimous": 3})
    assert rp.parse_setting("seq:sequential=True") == ("seq", {"sequential": True})
    for bad in ("r1", "r1:", "r1:repeat=1", "1x:repeats=1", "r1:repeats"):
        with pytest.raises(ValueError, match="--alt"):
            rp.parse_setting(bad)
    models, plans, search_s = rp.build("resnet10_cpu", size=16, batch=2, plans=1, threads=1, seed=0,
                                       settings={"r2": {"repeats": 2}})
    assert list(models) == ["original", "lrd", "rank_opt_1", "r2_1"] and set(search_s) == {"rank_opt_1", "r2_1"}
    assert plans["r2_1"].meta["rank_optimization"]["repeats"] == 2
    assert plans["rank_opt_1"].meta["rank_optimization"]["repeats"] == 1  # the staircase search's default
    df = pd.DataFrame({"variant": list(models), "setting": ["original", "lrd", "rank_opt", "r2"],
                       "train_vs_lrd_pct": [50.0, 0.0, 10.0, 12.0], "train_vs_lrd_wins": [20, 0, 18, 19],
                       "infer_vs_lrd_pct": [40.0, 0.0, 8.0, 9.0], "params_ratio": [1.0, 0.5, 0.45, 0.46],
                       "search_s": [None, None, 8.0, 6.0]})
    s = rp.setting_summary(df)
    assert list(s.index) == ["rank_opt", "r2"] and s.loc["r2", "search_s"] == 6.0 and s.loc["r2", "plans"] == 1

"""benchmarks/plan_stability.py: the committed summary is what its own code computes from the
committed per-setting runs (nothing typed in by hand), and it is internally consistent."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "plan_stability"


def load_script():
    spec = importlib.util.spec_from_file_location("plan_stability", ROOT / "benchmarks" / "plan_stability.py")
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

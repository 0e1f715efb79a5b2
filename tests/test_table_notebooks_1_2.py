"""The Table 1 and Table 2 notebooks run headless with the smoke profile and write their tables.

Real rank optimization (Algorithm 1 sweeps) runs here, on a narrowed rank range (see the smoke
profile in notebooks/profiles.yaml). Timings are never gated; the checks are structural.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lrdnb.experiments.variants import BASELINES, METHODS
from lrdnb.profiles import profile_params
from lrdnb.results import read_results

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
T1 = NOTEBOOKS / "table1_throughput.ipynb"
T2 = NOTEBOOKS / "table2_decomposition_time.ipynb"


def _run(nb: Path, tmp_path: Path) -> tuple[Path, Path]:
    import papermill

    data, figs = tmp_path / "data", tmp_path / "figures"
    params = {"profile": "smoke", "data_dir": str(data), "figures_dir": str(figs), "device": "cpu"}
    papermill.execute_notebook(str(nb), str(tmp_path / nb.name), parameters=params, kernel_name="python3",
                               progress_bar=False)
    return data, figs


@pytest.mark.notebooks
def test_table1_notebook_smoke(tmp_path):
    data, figs = _run(T1, tmp_path)
    df, meta = read_results("table1_throughput_smoke", data)
    models = profile_params(T1, "smoke")["models"]
    assert sorted(set(df["model"])) == sorted(models)
    for m, d in df.groupby("model"):
        assert d["method"].tolist() == list(METHODS + BASELINES), m
        d = d.set_index("method")
        assert (d["train_img_s"] > 0).all() and (d["infer_img_s"] > 0).all()
        assert d.loc["lrd", "params_ratio"] == pytest.approx(0.5, abs=0.05)
        assert d.loc["freezing", "params"] == d.loc["lrd", "params"]
        assert d.loc["freezing", "infer_gmacs"] == d.loc["lrd", "infer_gmacs"]
        assert d.loc["combined", "params"] == d.loc["rank_opt", "params"]
    assert meta["device"] == "cpu" and "device_name" in meta
    assert "rank_optimization" not in meta  # lives in the plan; the table records its rank summary
    assert (figs / "table1_throughput_smoke.png").stat().st_size > 1000


@pytest.mark.notebooks
def test_table2_notebook_smoke(tmp_path):
    data, figs = _run(T2, tmp_path)
    df, meta = read_results("table2_decomposition_time_smoke", data)
    assert df["model"].tolist() == profile_params(T2, "smoke")["models"]
    for c in ("lrd_hosvd_s", "rank_opt_cold_s", "rank_opt_warm_s", "freezing_s", "optimize_cold_s"):
        assert (df[c] > 0).all(), c
    assert np.allclose(df["freezing_s"], df["lrd_hosvd_s"] + df["freeze_s"])
    assert (df["freeze_s"] < df["lrd_hosvd_s"]).all()
    assert (df["rank_opt_cold_s"] >= df["optimize_cold_s"]).all()
    assert (df["rank_opt_changed"] + df["rank_opt_kept"] <= df["layers"]).all()
    assert meta["params"]["weights"] == ["hosvd"] and meta["device"] == "cpu"
    # a warm cache skips the sweeps: the optimization itself becomes much cheaper
    assert (df["optimize_warm_s"] < df["optimize_cold_s"]).all()
    assert (df["signatures"] <= df["layers"]).all()
    assert (figs / "table2_decomposition_time_smoke.png").stat().st_size > 1000

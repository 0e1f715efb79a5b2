"""The Fig. 2 notebook runs headless with the smoke profile and writes its curve, choices and figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lrdnb.experiments.fig2 import step_time_vs_rank
from lrdnb.profiles import profile_params
from lrdnb.results import read_results

NB = Path(__file__).resolve().parent.parent / "notebooks" / "fig2_step_time_vs_rank.ipynb"


def test_experiment_function_small():
    curves, choices = step_time_vs_rank(weight_shape=(16, 16, 3, 3), input_size=4, batch=2, passes=("train",),
                                        repeats=1, sweeps=2, min_run_time=1e-4, device="cpu", progress=False)
    res = curves.attrs["meta"]["results"]
    lo, hi = res["range"]
    assert len(choices) == 3 and list(choices["sweep"]) == ["0", "1", "pooled"]
    assert len(curves) == 2 * (hi - lo + 2)  # every rank and the original, per sweep
    assert set(res) >= {"choices", "stable", "pooled_choice", "run_to_run_rel", "steps_sweep0"}
    with pytest.raises(ValueError, match="choice_pass"):
        step_time_vs_rank(passes=("forward",), choice_pass="train")


@pytest.mark.notebooks
def test_notebook_smoke(tmp_path):
    import papermill

    params = profile_params(NB, "smoke")  # applied inside the notebook: only the profile is passed
    papermill.execute_notebook(str(NB), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                               parameters={"profile": "smoke", "device": "cpu", "data_dir": str(tmp_path / "data"),
                                           "figures_dir": str(tmp_path / "figures")})
    df, meta = read_results("fig2_step_time_vs_rank_smoke", tmp_path / "data")
    lo, hi = meta["results"]["range"]
    assert hi > lo >= 1
    for (sweep, pass_), g in df[df["method"] != "keep"].groupby(["sweep", "pass"]):
        assert len(g) == hi - lo + 1  # curve length: every rank of the range
        assert np.all(np.diff(g["rank"].to_numpy()) == -1)  # monotone rank axis, no gaps
        assert (g["norm_s"] > 0).all()
    assert set(df["pass"]) == set(params["passes"]) and df["sweep"].nunique() == params["sweeps"]
    assert (df[df["method"] == "keep"]["rank"] == 0).all()
    choices, _ = read_results("fig2_algorithm1_smoke", tmp_path / "data")
    for r in choices["rank"].dropna():
        assert lo <= r <= hi  # the top rank only when no step is confirmed
    assert meta["params"]["weight_shape"] == [32, 32, 3, 3] and meta["device"] == "cpu"
    assert (tmp_path / "figures" / "fig2_step_time_vs_rank_smoke.png").stat().st_size > 1000

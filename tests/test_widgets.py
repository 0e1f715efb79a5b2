"""Explorer tables (lrdnb.explore) and the ipywidgets explorers (lrdnb.widgets), driven in-process."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lrdnb
from lrdnb import explore as E
from lrdnb.plan import cost

pytest.importorskip("ipywidgets")
from lrdnb import widgets as X  # noqa: E402

PNG = b"\x89PNG"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 32, 3, padding=1, bias=False)  # Tucker2
        self.b = nn.Conv2d(32, 48, 1)  # SVD
        self.fc = nn.Linear(48, 40)  # SVD

    def forward(self, x):
        x = self.b(torch.relu(self.a(x)))
        return self.fc(x.mean(dim=(2, 3)))


def stair(rank: int, quantum: int = 4) -> float:
    """A Fig.-2-like staircase: rank r costs what ceil(r / quantum) * quantum costs."""
    return 1e-4 * (1 + math.ceil(rank / quantum) * quantum / 8)


def fake_sweep(plan: lrdnb.Plan, t_orig: float = 5e-3) -> pd.DataFrame:
    """What lrdnb.sweeps.sweep returns (the columns explorer_data reads), with staircase times
    at every rank from 1 to the plan rank + 4 and the original layer at rank 0."""
    rows = []
    for s in plan.decomposed:
        beta = s.ranks[1] / s.ranks[0] if s.method == "tucker2" else 1.0
        rows.append({"rank": 0, "r2": 0, "method": "keep", "pass": "forward", "median_s": t_orig,
                     "norm_s": t_orig, "signature": s.signature})
        for r in range(1, s.ranks[0] + 5):
            t = stair(r)
            rows.append({"rank": r, "r2": max(1, int(beta * r)) if s.method == "tucker2" else 0, "method": s.method,
                         "pass": "forward", "median_s": t * 1.1, "norm_s": t, "signature": s.signature})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.zeros(2, 16, 8, 8)
    plan = lrdnb.plan(model, x, ratio=2)
    assert {s.method for s in plan.decomposed} == {"tucker2", "svd"}
    sw = fake_sweep(plan)
    return model, x, plan, sw, E.explorer_data(model, x, plan, sw)


def test_table_params_errors_times(setup):
    model, x, plan, sw, data = setup
    assert list(data.columns) == list(E.EXPLORE_COLUMNS)
    assert E.layer_names(data) == [s.name for s in plan.decomposed]
    for spec in plan.decomposed:
        t = E.layer_table(data, spec.name)
        assert t["rank"].tolist() == list(range(1, len(t) + 1))  # every rank, slider-ready
        assert (t["params"] < spec.params_before).all() and t["rank"].max() >= spec.ranks[0]
        for _, row in t.iterrows():
            ranks = [row.r1, row.r2] if spec.method == "tucker2" else [row.r1]
            assert (row.params, row.flops) == cost(spec, spec.method, ranks)
        assert np.all(np.diff(t["error"]) <= 1e-12) and 0 < t["error"].iloc[-1] < t["error"].iloc[0] <= 1
        m = t[t["measured"]]
        assert np.allclose(m["time_s"], [stair(r) for r in m["rank"]])  # norm_s by default
        assert t["time_original"].iloc[0] == 5e-3 and t["time_source"].iloc[0] == "sweep"
    # the error equals the reconstruction error of the actual factors at that rank (SVD layer)
    w = model.b.weight.detach().reshape(48, 32).double()
    u, s, vh = torch.linalg.svd(w)
    w5 = (u[:, :5] * s[:5]) @ vh[:5]
    row = E.layer_table(data, "b").set_index("rank").loc[5]
    assert row["error"] == pytest.approx(float((w - w5).norm() / w.norm()), rel=1e-6)


def test_summary_interpolates_and_alg1(setup):
    model, x, plan, sw, data = setup
    spec = plan["a"]
    s = E.layer_summary(data, "a", 3)
    assert s["time_s"] == pytest.approx(stair(3)) and s["measured"]
    assert s["compression"] == pytest.approx(spec.params_before / s["params"])
    assert s["speedup"] == pytest.approx(5e-3 / stair(3))
    top = int(E.layer_table(data, "a")["rank"].max())
    if top > spec.ranks[0] + 4:  # beyond the swept ranks: no time, not made up
        assert math.isnan(E.layer_summary(data, "a", top)["time_s"])
    with pytest.raises(ValueError, match="outside"):
        E.layer_summary(data, "a", 10_000)
    with pytest.raises(ValueError, match="valid"):
        E.layer_table(data, "nope")
    # Algorithm 1 runs on [R_min, R] of the measured curve and returns what rankopt returns
    from lrdnb.rankopt import algorithm1

    t = E.layer_table(data, "a")
    lo, hi = int(t["rank_min"].iloc[0]), spec.ranks[0]
    win = t[t["rank"].between(lo, hi)]
    assert E.algorithm1_choice(data, "a") == algorithm1(win["rank"].tolist(), win["time_s"].tolist(), 5e-3)


def test_interpolation_between_measured_ranks(setup):
    model, x, plan, sw, _ = setup
    sparse = sw[(sw["rank"] % 2 == 0)]  # only even ranks (and the original) measured
    data = E.explorer_data(model, x, plan, sparse)
    s = E.layer_summary(data, "a", 3)
    assert not s["measured"] and s["time_s"] == pytest.approx((stair(2) + stair(4)) / 2)


def test_layer_explorer_drives(setup):
    model, x, plan, sw, data = setup
    lx = X.layer_explorer(data)
    assert set(lx.controls) == {"layer", "rank"} and lx.last_error is None
    assert lx.result["layer"] == "a" and lx.controls["rank"].value == plan["a"].ranks[0]
    png0 = bytes(lx.widget.children[4].value)
    assert png0.startswith(PNG)
    errors, params = [], []
    for r in range(2, 8):
        lx.controls["rank"].value = r
        assert lx.last_error is None and lx.result["rank"] == r
        assert lx.result["params"] == cost(plan["a"], "tucker2", lx.result["ranks"])[0]
        assert lx.result["time_s"] == pytest.approx(stair(r))
        errors.append(lx.result["error"])
        params.append(lx.result["params"])
    assert errors == sorted(errors, reverse=True) and params == sorted(params)
    assert bytes(lx.widget.children[4].value) != png0  # the marker moved
    assert f"{lx.result['params']:,}" in lx.widget.children[3].value  # the table shows the numbers
    lx.controls["layer"].value = "fc"
    t = E.layer_table(data, "fc")
    assert lx.controls["rank"].max == t["rank"].max() and lx.result["rank"] == plan["fc"].ranks[0]
    lx.controls["rank"].value = 1
    assert lx.result["params"] == cost(plan["fc"], "svd", [1])[0] and lx.last_error is None
    assert lx.result["alg1_reason"]


def test_model_explorer_respects_budget(setup):
    model, x, plan, sw, data = setup
    mx = X.model_explorer(data, budget=0.9)
    assert set(mx.controls) == {"mode", "budget", "lam"} and mx.last_error is None
    times, errs = [], []
    for b in (1.0, 0.8, 0.6, 0.4, 0.2):
        mx.controls["budget"].value = b
        r = mx.result
        assert mx.last_error is None and r["within_budget"]
        assert r["time_s"] <= b * r["time_original"] * (1 + 1e-9)
        ch = r["choice"]
        assert r["params"] == ch["params"].sum() and len(ch) == len(plan.decomposed)
        for _, row in ch[ch["rank"] > 0].iterrows():
            assert row.params == cost(plan[row.layer], row.method, row.ranks)[0]
        times.append(r["time_s"])
        errs.append(r["error"])
    assert times == sorted(times, reverse=True) and errs == sorted(errs)
    assert errs[0] == 0.0  # full budget: keep every original layer (error 0)
    assert "<table" in mx.widget.children[6].children[0].value
    mx.controls["mode"].value = "lambda"
    lam_times = []
    for lam in (mx.controls["lam"].min, mx.controls["lam"].max):
        mx.controls["lam"].value = lam
        assert mx.last_error is None
        lam_times.append(mx.result["time_s"])
    assert lam_times[1] <= lam_times[0]  # seconds cost more: faster choice


def test_callback_errors_are_kept_not_raised(setup, monkeypatch):
    *_, data = setup
    lx = X.layer_explorer(data)
    monkeypatch.setattr(X, "layer_summary", lambda *a: 1 / 0)
    lx.controls["rank"].value = 2
    assert isinstance(lx.last_error, ZeroDivisionError)
    assert "ZeroDivisionError" in lx.widget.children[-1].value
    monkeypatch.undo()
    lx.controls["rank"].value = 3
    assert lx.last_error is None and lx.widget.children[-1].value == ""


def test_sweep_mismatch_and_flops(setup, tmp_path):
    model, x, plan, sw, _ = setup
    with pytest.raises(ValueError, match="another model"):
        E.explorer_data(model, x, plan, sw[sw["signature"] != plan["b"].signature])
    d = E.explorer_data(model, x, plan, None)
    assert (d["time_source"] == "flops").all() and np.isfinite(d["time_s"]).all()
    assert X.layer_explorer(d).last_error is None and X.model_explorer(d).last_error is None
    with pytest.raises(FileNotFoundError, match="timing='sweep'"):
        E.prepare_explorer_data("resnet10_cpu", 32, timing="load", data_dir=tmp_path)
    with pytest.raises(ValueError, match="valid"):
        E.prepare_explorer_data("resnet10_cpu", 32, timing="nope", data_dir=tmp_path)


def test_real_sweep_roundtrip(setup, tmp_path):
    """sweep_plan -> lrdnb.sweeps.sweep frames -> explorer table (tiny shapes, seconds)."""
    model, x, plan, _, _ = setup
    sw = E.sweep_plan(plan, ranks="range", device="cpu", repeats=1, min_run_time=0.0005, cache=None, progress=False)
    assert set(sw["signature"]) == {s.signature for s in plan.decomposed}
    data = E.explorer_data(model, x, plan, sw)
    for spec in plan.decomposed:
        t = E.layer_table(data, spec.name)
        from lrdnb.rankopt import rank_range

        assert set(t.loc[t["measured"], "rank"]) == set(rank_range(spec))
    E.save_explorer_data(data, "t", {"note": "test"}, tmp_path)
    back = E.load_explorer_data("t", tmp_path)
    assert back.attrs["meta"]["note"] == "test" and len(back) == len(data)  # (+ end date and load, by the writer)
    assert X.model_explorer(back).last_error is None


@pytest.mark.notebooks
def test_notebook_smoke(tmp_path):
    papermill = pytest.importorskip("papermill")
    from pathlib import Path

    from lrdnb.profiles import profile_params
    from lrdnb.results import read_results

    nb = Path(__file__).resolve().parent.parent / "notebooks" / "explore_rank_tradeoffs.ipynb"
    params = profile_params(nb, "smoke") | {"data_dir": str(tmp_path)}
    papermill.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters=params, kernel_name="python3",
                               cwd=str(nb.parent), progress_bar=False)
    choice, meta = read_results("explore_rank_tradeoffs", tmp_path)
    assert meta["budget"] == pytest.approx(0.8) and len(choice) > 5
    assert choice["time_s"].sum() <= 0.8 * choice["time_original"].sum() * (1 + 1e-9)


def test_front_explorer_slides_along_the_measured_points():
    from lrdnb.experiments.tradeoff import front

    t = pd.DataFrame({"point": ["original", "lrd 2x", "rank quant 2x", "joint 0.6", "lrd 4x"],
                      "rule": ["original", "lrd", "rank_quant", "joint", "lrd"],
                      "params_ratio": [1, 2, 2.1, 1.8, 4], "train_speedup": [1.0, 1.5, 1.7, 1.6, 1.65],
                      "infer_speedup": [1.0, 1.2, 1.3, 1.25, 1.4], "acc_mean": [91.0, 90.6, 90.5, 90.8, 89.0],
                      "acc_sd": 0.1, "drop_vs_original": [np.nan, 0.4, 0.5, 0.2, 2.0]})
    t["on_front"] = front(t)
    assert list(t["on_front"]) == [True, False, True, True, False]  # lrd 2x: joint 0.6 is faster and better
    ex = X.front_explorer(t)
    assert ex.last_error is None and ex.result["point"] == "original" and ex.controls["point"].max == 2
    ex.controls["point"].value = 2
    assert ex.result["point"] == "rank quant 2x" and ex.result["train_speedup"] == 1.7 and ex.result["on_front"]
    assert "1.70x eager" in ex.widget.children[3].value and ex.widget.children[4].value[:4] == PNG
    ex.controls["which"].value = "all"
    assert ex.controls["point"].max == 4
    ex.controls["point"].value = 3
    assert ex.result["point"] == "lrd 4x" and ex.result["drop"] == 2.0 and not ex.result["on_front"]

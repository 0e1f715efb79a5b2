"""experiments.tradeoff: the front, paired comparisons, the compile-graph check, and the notebook's smoke run."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from lrdnb.data import FASHION_MNIST_DIR
from lrdnb.experiments import tradeoff as T
from lrdnb.profiles import profile_params
from lrdnb.results import read_results

NB = Path(__file__).resolve().parent.parent / "notebooks" / "tradeoff_speed_accuracy.ipynb"


def test_front_keeps_only_non_dominated_points():
    t = pd.DataFrame({"train_speedup": [1.0, 1.5, 1.5, 2.0, 1.2], "acc_mean": [91.0, 90.0, 90.5, 89.0, 89.5]})
    assert list(T.front(t)) == [True, False, True, True, False]


def test_pair_table_counts_rounds_won():
    rows = []
    for r in range(6):
        for point, t in (("a", 1.0 if r < 5 else 1.2), ("b", 1.1)):
            rows.append({"round": r, "variant": point, "pass_": "step", "median_s": t})
    p = T.pair_table(pd.DataFrame(rows), [("a", "b")]).iloc[0]
    assert p["a_won"] == 5 and p["rounds"] == 6 and p["pass"] == "train"
    assert p["a_faster_by_pct"] == pytest.approx(10.0) and p["p_sign"] == pytest.approx(7 / 64)


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(32, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_points_and_one_graph_per_frozen_set_under_compile():
    torch.manual_seed(0)
    x = torch.randn(4, 32)
    model = _Mlp()
    pts = T.build_points(model, x, ratios=(2.0,), windows=(), budgets=(), freeze="lrd 2x", progress=False)
    assert list(pts) == ["original", "lrd 2x", "rank quant 2x", "lrd 2x + regular", "lrd 2x + sequential"]
    assert pts["lrd 2x"].params() < pts["original"].params()
    # rounding down to x16 never grows a layer
    assert pts["rank quant 2x"].params() <= pts["lrd 2x"].params()
    assert pts["original"].model is not model and pts["lrd 2x + sequential"].model is not pts["lrd 2x"].model
    c = T.compile_stats(pts["lrd 2x + sequential"], (4, 32), epochs=4, device="cpu")
    assert c["frozen_sets"] == 2 and c["graphs_after_epoch"] == [1, 2, 2, 2] and not c["recompiles_per_epoch"]


def test_schedules_are_timed_at_every_phase_and_compiled_runners_report_their_cost():
    from lrdnb.rankopt.measure import interleaved_schedules

    torch.manual_seed(0)
    pts = T.build_points(_Mlp(), torch.randn(4, 32), ratios=(2.0,), windows=(), budgets=(), freeze="lrd 2x",
                         progress=False)
    built = []

    def make(m, name, pass_, phase):
        built.append((name, pass_, phase, sum(p.requires_grad for p in m.parameters())))
        return lambda: None

    per = interleaved_schedules({n: (pts[n].model, pts[n].schedule) for n in ("lrd 2x", "lrd 2x + sequential")},
                                (4, 32), ("step", "forward"), "cpu", make, rounds=2, min_run_time=0.001, progress=False)
    seq = [b for b in built if b[0] == "lrd 2x + sequential" and b[1] == "step"]
    assert [b[2] for b in seq] == [0, 1] and seq[0][3] != len(list(pts["lrd 2x"].model.parameters()))
    assert len(per) == 2 * 2 * 2 and set(per["pass_"]) == {"step", "forward"}  # rounds x points x passes
    _, table = T.speed_table({n: pts[n] for n in ("original", "lrd 2x + sequential")}, (4, 32), rounds=1,
                             min_run_time=0.001, compile=True, device="cpu", progress=False)
    row = table.set_index(["point", "pass"]).loc[("lrd 2x + sequential", "train")]
    assert row["compile_s"] > 0 and row["graphs"] >= 2 and row["rounds"] == 1  # one graph per frozen set


@pytest.mark.notebooks
@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's Fashion-MNIST")
def test_notebook_smoke(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("LRDNB_CACHE", str(tmp_path / "cache"))
    preset = profile_params(NB, "smoke")
    params = {"profile": "smoke", "data_dir": str(tmp_path / "data"), "figures_dir": str(tmp_path / "figures"),
              "checkpoint_dir": str(tmp_path / "ck"), "device": "cpu"}
    papermill.execute_notebook(str(NB), str(tmp_path / "out.ipynb"), parameters=params, kernel_name="python3",
                               progress_bar=False)
    t, meta = read_results("tradeoff_points_smoke", tmp_path / "data")
    n_points = 1 + 2 * len(preset["ratios"]) + len(preset["windows"]) + len(preset["budgets"]) + 2
    assert len(t) == n_points and t["point"].iloc[0] == "original"
    assert set(t["rule"]) == {"original", "lrd", "rank_quant", "algorithm1", "joint", "freezing"}
    for col in ("params_ratio", "flops_ratio", "train_speedup", "train_speedup_min", "infer_speedup", "acc_mean",
                "acc_sd", "drop_vs_original", "drop_vs_original_ci95", "on_front"):
        assert col in t, col
    assert (t["seeds"] == len(preset["seeds"])).all() and t["on_front"].any()
    o = t.set_index("point").loc["original"]
    assert o["train_speedup"] == 1 and o["params_ratio"] == 1
    assert (t.set_index("point").loc[["lrd 2x", "lrd 3x"], "params_ratio"] > 1).all()
    per_seed, _ = read_results("tradeoff_seeds_smoke", tmp_path / "data")
    assert len(per_seed) == n_points * len(preset["seeds"])
    pairs, _ = read_results("tradeoff_pairs_smoke", tmp_path / "data")
    assert {"algorithm1 2x-3x"} <= set(pairs["a"]) and set(pairs["pass"]) == {"train", "inference"}
    assert meta["params"]["seeds"] == preset["seeds"] and meta["results"]["reference"]["acc"] >= 0
    assert (tmp_path / "figures" / "tradeoff_front_smoke.png").stat().st_size > 10_000
    json.dumps(meta)

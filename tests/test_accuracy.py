"""experiments.accuracy: Tables 3/4 structure on a tiny ResNet, reference caching, targets, paper side by side."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import lrdnb.rankopt
from lrdnb import paper
from lrdnb.experiments import accuracy as A

TINY = dict(image_size=16, train_subset=48, test_subset=32, batch_size=16, example_batch=2, ref_epochs=1, epochs=1,
            max_steps_per_epoch=2, include=["layer1.*", "fc"], device="cpu", progress=False, seed=1, lr=0.01)


@pytest.fixture
def no_timing(monkeypatch):
    """Rank optimization stub: the LRD plan itself (timing sweeps are tested in test_rankopt and the notebooks)."""
    calls = []

    def fake(model, example, plan, **kw):
        calls.append(kw)
        return plan

    monkeypatch.setattr(lrdnb.rankopt, "optimize_ranks", fake)
    return calls


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_accuracy_table_structure_and_reference_reuse(tmp_path: Path, no_timing):
    ck = tmp_path / "checkpoints"
    table, hist, meta = A.accuracy_table("resnet10_cpu", checkpoint_dir=ck, **TINY)
    assert list(table["method"]) == list(A.METHODS)
    assert list(table["label"]) == [paper.METHOD_LABELS[m] for m in A.METHODS]
    for col in ("acc", "acc_before", "best_acc"):
        assert table[col].between(0, 1).all(), col
    assert table["weights_changed"].all()
    frac = table.set_index("method")["changed_frac"]
    assert frac["original"] == frac["lrd"] == 1.0
    assert frac["freezing"] < 1.0  # regular freezing: the SVD/Tucker2 `first` factors never move
    t = table.set_index("method")
    assert t.loc["original", "drop_pts"] == 0 and t.loc["original", "train_speedup"] == 1
    assert math.isclose(t.loc["lrd", "drop_pts"], 100 * (t.loc["original", "acc"] - t.loc["lrd", "acc"]))
    assert t.loc["lrd", "params"] < t.loc["original", "params"]
    assert t.loc["lrd", "decomposed_layers"] == 3  # layer1.0.conv1, conv2, fc (include)
    assert (table["epochs"] == 1).all() and (table["train_img_s"] > 0).all()
    assert list(t["schedule"]) == ["none", "none", "none", "regular", "sequential"]
    # history: a start row (right after decomposition) + one row per epoch, per method
    assert len(hist) == 2 * len(A.METHODS)
    start = hist[hist["epochs_done"] == 0].set_index("method")["test_acc"]
    assert (start == t["acc_before"]).all()
    # optimize_ranks got the device and pass defaults
    assert no_timing and no_timing[0]["timing"].pass_ == "train"
    ref = meta["results"]["reference"]
    assert ref["reused"] is False and Path(ref["checkpoint"]).exists() and len(ref["rows"]) == 1
    assert meta["params"]["model"] == "resnet10_cpu" and "not interleaved" in meta["note"]
    assert meta["results"]["plans"]["lrd"]["summary"]["decomposed"] == 3

    # second call with the same settings: the reference checkpoint is loaded, not retrained
    files = sorted(ck.iterdir())
    table2, _, meta2 = A.accuracy_table("resnet10_cpu", checkpoint_dir=ck, methods=("original", "freezing", "combined"),
                                        speed_rounds=2, speed_min_run_time=0.001, **TINY)
    assert meta2["results"]["reference"]["reused"] is True
    assert sorted(ck.iterdir()) == files
    assert meta2["results"]["reference"]["acc"] == ref["acc"]
    t2 = table2.set_index("method")
    assert t2.loc["original", "acc_before"] == t.loc["original", "acc_before"]
    assert t2.loc["freezing", "acc_before"] == t.loc["freezing", "acc_before"]  # timing copies left weights alone
    # interleaved speed: paired ratios against the original
    assert t2.loc["original", "train_speedup_rr"] == 1 and (t2["train_speedup_rr"] > 0).all()
    assert (t2["train_speedup_rr_min"] <= t2["train_speedup_rr"]).all() and (t2["train_img_s_rr"] > 0).all()
    assert "interleaved" in meta2["note"]
    assert any("(interleaved)" in x for x in A.check_targets(table2)["target"])


def test_train_reference_zero_epochs_keeps_model(tmp_path: Path):
    from lrdnb.data import load_dataset

    test = load_dataset("fashion-mnist", split="test", image_size=16, subset=16)
    ref = A.train_reference("resnet10_cpu", test, test, 0, {"dataset": "x"}, 10, 16, checkpoint_dir=tmp_path,
                            device="cpu", progress=False)
    assert ref.checkpoint is None and not ref.reused and 0 <= ref.acc <= 1
    assert list(tmp_path.iterdir()) == []


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="valid"):
        A.accuracy_table("resnet10_cpu", methods=("original", "magic"))


def _table(drops, speeds):
    return pd.DataFrame({"method": list(A.METHODS), "label": [A.LABELS[m] for m in A.METHODS],
                         "model": "m", "acc_before": 0.5, "acc": [0.9 - d / 100 for d in drops],
                         "drop_pts": drops, "train_speedup": speeds,
                         "train_speedup_pct": [100 * (s - 1) for s in speeds]})


def test_check_targets():
    ok = A.check_targets(_table([0, 0.5, 1.0, 1.4, 2.4], [1, 1.05, 1.2, 1.25, 1.5]))
    assert ok["ok"].all() and len(ok) == 8
    bad = A.check_targets(_table([0, 1.6, 1.0, 1.0, 2.6], [1, 1.3, 1.2, 1.25, 1.1])).set_index("target")["ok"]
    assert not bad["LRD drop <= 1.5 pts"] and not bad["Combined drop <= 2.5 pts"] and bad["Rank Opt. drop <= 1.5 pts"]
    assert not bad["speed-up LRD < Rank Opt. (fine-tuning runs)"] and not bad["speed-up Rank Opt. < Combined (fine-tuning runs)"]


def test_side_by_side_with_paper():
    ours = _table([0, 0.5, 1.0, 1.4, 2.4], [1, 1.05, 1.2, 1.25, 1.5])
    cmp3 = A.side_by_side(ours, paper.table3(), paper_model="resnet50").set_index("method")
    assert cmp3.loc["combined", "paper_acc_pct"] == 94.28
    assert math.isclose(cmp3.loc["combined", "paper_drop_pts"], 96.40 - 94.28)
    assert cmp3.loc["combined", "paper_train_speedup_pct"] == 45.95
    assert math.isclose(cmp3.loc["lrd", "acc_pct"], 89.5)
    cmp4 = A.side_by_side(ours, paper.table4()).set_index("method")  # 'm' not in the paper: its first model
    assert cmp4.loc["original", "paper_acc_pct"] == 98.22 and (cmp4["paper_model"] == "vit_b_16").all()
    with pytest.raises(ValueError, match="cifar10_acc"):
        A.side_by_side(ours, paper.table4(), paper_acc="imagenet_acc")


def test_plot_accuracy_table_one_row_per_model():
    import matplotlib

    matplotlib.use("Agg")
    from lrdnb.plots import plot_accuracy_table

    a = _table([0, 0.5, 1.0, 1.4, 2.4], [1, 1.05, 1.2, 1.25, 1.5])
    b = a.assign(model="n")
    for t in (a, b):
        t["train_speedup_rr"], t["train_speedup_rr_min"], t["train_speedup_rr_max"] = t["train_speedup"], 0.9, 1.6
    ours = pd.concat([a, b], ignore_index=True)
    hist = pd.concat([pd.DataFrame({"model": t["model"], "method": t["method"], "label": t["label"],
                                    "epochs_done": e, "test_acc": t["acc"]}) for t in (a, b) for e in (0, 1)])
    fig = plot_accuracy_table(ours, hist, A.side_by_side(ours, paper.table3(), paper_model="resnet50"), title="t")
    assert len(fig.axes) == 6
    import matplotlib.pyplot as plt

    plt.close(fig)

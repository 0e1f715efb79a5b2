"""experiments.accuracy / finetune / references: Tables 3-4 over seeds on a tiny ResNet, the paired
statistics, reference caching, targets and the paper side by side."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

import lrdnb.rankopt
from lrdnb import paper
from lrdnb.experiments import accuracy as A
from lrdnb.experiments.finetune import FineTune, method_stats, paired, spread
from lrdnb.experiments.references import describe, plateau, train_reference

REF = replace(A.reference_recipe("resnet10_cpu"), image_size=16, train_subset=64, test_subset=32, epochs=1, restart_epochs=0,
              max_steps_per_epoch=2, batch_size=16)
FT = FineTune(epochs=1, train_subset=48, batch_size=16, max_steps_per_epoch=2)
TINY = dict(finetune=FT, example_batch=2, include=["layer1.*", "fc"], device="cpu", progress=False)


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


def test_accuracy_table_over_seeds_paired_and_resumable(tmp_path: Path, no_timing):
    refs, ck = tmp_path / "refs", tmp_path / "ck"
    table, per_seed, hist, meta = A.accuracy_table("resnet10_cpu", REF, seeds=(0, 1), reference_dir=refs,
                                                   checkpoint_dir=ck, **TINY)
    assert list(table["method"]) == list(A.METHODS) and (table["seeds"] == 2).all()
    assert len(per_seed) == 2 * len(A.METHODS) and set(per_seed["seed"]) == {0, 1}
    for col in ("acc_mean", "acc_min", "acc_max", "acc_before"):
        assert table[col].between(0, 100).all(), col
    t = table.set_index("method")
    # the drop vs the original is the mean of per-seed (paired) differences, in points
    w = per_seed.pivot_table(index="seed", columns="method", values="acc") * 100
    assert math.isclose(t.loc["lrd", "drop_vs_original"], (w["original"] - w["lrd"]).mean(), abs_tol=1e-9)
    assert math.isclose(t.loc["freezing", "drop_vs_lrd"], (w["lrd"] - w["freezing"]).mean(), abs_tol=1e-9)
    assert t.loc["original", "acc_min"] <= t.loc["original", "acc_mean"] <= t.loc["original", "acc_max"]
    frac = per_seed.groupby("method")["changed_frac"].min()
    assert frac["original"] == frac["lrd"] == 1.0 and frac["freezing"] < 1.0  # regular freezing: `first` never moves
    assert t.loc["lrd", "params"] < t.loc["original", "params"] and t.loc["lrd", "decomposed_layers"] == 3
    assert list(t["schedule"]) == ["none", "none", "none", "regular", "sequential"]
    # history: one start row per method (first seed), one row per epoch per (method, seed)
    assert len(hist) == len(A.METHODS) + 2 * len(A.METHODS)
    start = hist[hist["epochs_done"] == 0].set_index("method")["test_acc"]
    assert (100 * start == t["acc_before"]).all()
    assert no_timing and no_timing[0]["timing"].pass_ == "train"
    ref = meta["results"]["reference"]
    assert ref["reused"] is False and Path(ref["checkpoint"]).parent == refs and len(ref["rows"]) == 1
    assert meta["params"]["seeds"] == [0, 1] and meta["params"]["finetune"]["epochs"] == 1
    assert len(list(ck.glob("finetune_*.pt"))) == 2 * len(A.METHODS)

    # rerun: the reference and every finished run come from their checkpoints, with identical results;
    # two worker processes give the same numbers as one (seeded data order, no shared state)
    files = sorted(refs.iterdir())
    t2, s2, _, meta2 = A.accuracy_table("resnet10_cpu", REF, seeds=(0, 1), reference_dir=refs, checkpoint_dir=ck,
                                        **TINY)
    assert meta2["results"]["reference"]["reused"] is True and sorted(refs.iterdir()) == files
    pd.testing.assert_series_equal(s2["acc"], per_seed["acc"])
    _, s3, _, _ = A.accuracy_table("resnet10_cpu", REF, seeds=(0, 1), workers=2, reference_dir=refs,
                                   checkpoint_dir=None, **TINY)
    pd.testing.assert_series_equal(s3["acc"], per_seed["acc"])


def test_interleaved_speed_columns(tmp_path: Path, no_timing):
    table, _, _, meta = A.accuracy_table("resnet10_cpu", REF, seeds=(0,), methods=("original", "freezing", "combined"),
                                         reference_dir=tmp_path, speed_rounds=2, speed_min_run_time=0.001, **TINY)
    t = table.set_index("method")
    assert t.loc["original", "train_speedup_rr"] == 1 and (t["train_speedup_rr"] > 0).all()
    assert (t["train_speedup_rr_min"] <= t["train_speedup_rr"]).all() and (t["train_img_s_rr"] > 0).all()
    assert "round-robin" in meta["note"]
    assert any("(interleaved)" in x for x in A.check_targets(table)["target"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="valid"):
        A.accuracy_table("resnet10_cpu", methods=("original", "magic"))
    with pytest.raises(ValueError, match="seeds is empty"):
        A.accuracy_table("resnet10_cpu", seeds=())


def test_paired_statistics():
    s = spread([1.0, 2.0, 3.0, float("nan")])
    assert s == {"n": 3, "mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0}
    a, b = pd.Series([91.0, 92.0, 93.0]), pd.Series([90.0, 90.0, 90.0])
    p = paired(a, b)  # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.303
    assert p["mean"] == 2.0 and p["sd"] == 1.0 and math.isclose(p["ci95"], 4.3027 / math.sqrt(3), rel_tol=1e-3)
    assert p["beyond"] is False  # 2 < 2.48: within the seed spread
    assert paired(pd.Series([91.0, 91.1, 91.2]), b)["beyond"] is True
    final = pd.DataFrame({"name": ["original"] * 3 + ["lrd"] * 3, "seed": [0, 1, 2] * 2,
                          "test_acc": [0.91, 0.92, 0.93, 0.90, 0.90, 0.90]})
    st = method_stats(final).set_index("name")
    assert math.isclose(st.loc["lrd", "drop_vs_original"], 2.0) and math.isclose(st.loc["original", "acc_mean"], 92.0)
    assert "drop_vs_original" not in st.columns or pd.isna(st.loc["original", "drop_vs_original"])
    assert plateau(pd.DataFrame({"test_acc": [0.8, 0.9, 0.91, 0.912, 0.913]})) == pytest.approx(0.3)  # last 2 vs before


def test_reference_warm_restart_continues_the_cached_base(tmp_path: Path):
    base = replace(REF, max_steps_per_epoch=1)
    assert replace(base, restart_lr=0.5).key() == base.key()  # restart fields count only when there is a restart
    rec = replace(base, restart_epochs=2, restart_lr=0.003, restarts=1)
    assert rec.key() != base.key()
    ref = train_reference(rec, "cpu", tmp_path, progress=False)
    h = ref.history
    assert h["stage"].tolist() == ["cosine", "restart", "restart"] and h["epoch"].tolist() == [0, 1, 2]
    assert h["lr"].iloc[1] == pytest.approx(0.003) and h["lr"].iloc[0] == pytest.approx(base.lr)
    assert ref.acc == pytest.approx(h["test_acc"].iloc[-1]) and not ref.reused
    assert ref.info["plateau_pts"] == pytest.approx(plateau(h))
    assert sorted(p.name for p in tmp_path.glob("reference_*.pt")) == sorted(
        f"reference_resnet10_cpu_fashion-mnist_{r.key()}.pt" for r in (base, rec))
    assert "then a warm restart of 2 cosine epochs from lr 0.003" in describe(ref.info)
    again = train_reference(rec, "cpu", tmp_path, progress=False)  # both stages from the cache
    assert again.reused and again.history["test_acc"].tolist() == h["test_acc"].tolist()
    assert all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), again.model.state_dict().values()))
    two = train_reference(replace(rec, restarts=2), "cpu", tmp_path, progress=False)  # one more cycle from the first
    assert two.history["epoch"].tolist() == [0, 1, 2, 3, 4] and two.history["test_acc"].tolist()[:3] == h["test_acc"].tolist()
    assert "then 2 warm restarts of 2 cosine epochs" in describe(two.info) and len(list(tmp_path.glob("reference_*.pt"))) == 3


def _table(drops, speeds, sd=0.1):
    return pd.DataFrame({"method": list(A.METHODS), "label": [A.LABELS[m] for m in A.METHODS], "model": "m",
                         "dataset": "d", "seeds": 3, "acc_mean": [90 - d for d in drops], "acc_sd": sd,
                         "drop_vs_original": drops, "drop_vs_original_sd": sd, "drop_vs_original_ci95": 2.5 * sd,
                         "drop_vs_lrd": [d - drops[1] for d in drops], "drop_vs_lrd_ci95": 2.5 * sd,
                         "drop_vs_lrd_beyond": [abs(d - drops[1]) > 2.5 * sd for d in drops],
                         "train_speedup": speeds})


def test_check_targets():
    ok = A.check_targets(_table([0, 0.5, 0.5, 0.6, 0.7], [1, 1.05, 1.2, 1.25, 1.5]))
    assert ok["ok"].all() and len(ok) == 4 + 3 + 4
    bad = A.check_targets(_table([0, 1.6, 1.0, 1.0, 2.6], [1, 1.3, 1.2, 1.25, 1.1])).set_index("target")["ok"]
    assert not bad["LRD drop <= 1.5 pts"] and not bad["Combined drop <= 2.5 pts"] and bad["Rank Opt. drop <= 1.5 pts"]
    assert not bad["Combined no worse than LRD beyond the seed spread"]  # 1.0 points worse, interval +- 0.25
    assert bad["Rank Opt. no worse than LRD beyond the seed spread"]  # it gains
    assert not bad["speed-up LRD < Rank Opt. (fine-tuning runs)"] and not bad["speed-up Rank Opt. < Combined (fine-tuning runs)"]


def test_side_by_side_with_paper():
    ours = _table([0, 0.5, 1.0, 1.4, 2.4], [1, 1.05, 1.2, 1.25, 1.5])
    cmp3 = A.side_by_side(ours, paper.table3(), paper_model="resnet50").set_index("method")
    assert cmp3.loc["combined", "paper_acc_pct"] == 94.28
    assert math.isclose(cmp3.loc["combined", "paper_drop_pts"], 96.40 - 94.28)
    assert cmp3.loc["combined", "paper_train_speedup_pct"] == 45.95
    assert math.isclose(cmp3.loc["lrd", "acc_pct"], 89.5) and cmp3.loc["lrd", "drop_sd"] == 0.1
    assert math.isclose(cmp3.loc["combined", "train_speedup_pct"], 50.0) and cmp3.loc["original", "drop_pts"] == 0
    cmp4 = A.side_by_side(ours, paper.table4()).set_index("method")  # 'm' not in the paper: its first model
    assert cmp4.loc["original", "paper_acc_pct"] == 98.22 and (cmp4["paper_model"] == "vit_b_16").all()
    with pytest.raises(ValueError, match="cifar10_acc"):
        A.side_by_side(ours, paper.table4(), paper_acc="imagenet_acc")


def test_plot_accuracy_table_one_row_per_model():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrdnb.plots import plot_accuracy_table

    a = _table([0, 0.5, 1.0, 1.4, 2.4], [1, 1.05, 1.2, 1.25, 1.5])
    b = a.assign(model="n")
    for t in (a, b):
        t["train_speedup_rr"], t["train_speedup_rr_min"], t["train_speedup_rr_max"] = t["train_speedup"], 0.9, 1.6
    ours = pd.concat([a, b], ignore_index=True)
    rows = [{"model": t["model"].iloc[0], "method": m, "label": A.LABELS[m], "seed": s, "epochs_done": e,
             "test_acc": 0.9 - 0.01 * s} for t in (a, b) for m in A.METHODS for s in (0, 1) for e in (0, 1)]
    hist = pd.DataFrame(rows)
    per_seed = hist[hist["epochs_done"] == 1].rename(columns={"test_acc": "acc"})
    fig = plot_accuracy_table(ours, hist, A.side_by_side(ours, paper.table3(), paper_model="resnet50"), title="t",
                              per_seed=per_seed)
    assert len(fig.axes) == 6
    plt.close(fig)
    accs, lrs = [0.80, 0.85, 0.86, 0.84, 0.87, 0.871], [0.1, 0.05, 0.01, 0.02, 0.01, 0.001]  # a restart at epoch 3
    info = {"acc": 0.871, "n_train": 100, "plateau_pts": 0.1,
            "rows": [{"epoch": e, "test_acc": a, "lr": lr} for e, (a, lr) in enumerate(zip(accs, lrs))]}
    fig = plot_accuracy_table(ours, hist, per_seed=per_seed, references={"m": info, "n": info})
    assert len(fig.axes) == 8
    ref_ax = fig.axes[0]
    assert [round(x, 1) for x in ref_ax.lines[1].get_xdata()] == [3.5, 3.5]  # the warm restart, between epochs 3 and 4
    assert "87.10%" in ref_ax.get_title() and "+0.10 pts (plateau" in ref_ax.get_title()
    plt.close(fig)

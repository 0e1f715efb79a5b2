"""Timing: runners, the round-robin helper, sweeps and the on-disk timing cache.

Timing values are never compared against thresholds (MEASURING.md): tests check structure,
shapes, keys, which code paths run and what the cache returns.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lrdnb import pairs, steps, sweeps
from lrdnb.cache import TimingCache, as_cache, timing_key
from lrdnb.layers import Tucker2Conv2d
from lrdnb.plan import LayerSpec
from lrdnb.rankopt import rank_range
from lrdnb.sweeps import per_repeat, sweep
from lrdnb.timing import interleaved, make_runner, paired_ratios, time_callable

FAST = dict(device="cpu", min_run_time=1e-4, progress=False, threads=1)


def tiny_conv(**kw) -> LayerSpec:
    d = dict(name="c", kind="conv2d", weight_shape=[16, 16, 3, 3], bias=True, input_shape=[2, 16, 6, 6],
             output_shape=[2, 16, 6, 6], padding=[1, 1], method="tucker2", ranks=[8, 8])
    d.update(kw)
    return LayerSpec(**d)


def tiny_linear() -> LayerSpec:
    return LayerSpec(name="fc", kind="linear", weight_shape=[12, 20], bias=True, input_shape=[3, 20],
                     output_shape=[3, 12], method="svd", ranks=[5])


@pytest.mark.parametrize("pass_", ["forward", "train", "step"])
def test_runner_passes(pass_):
    torch.manual_seed(0)
    m = Tucker2Conv2d(8, 8, 3, (4, 4), padding=1)
    before = m.core.weight.detach().clone()
    run = make_runner(m, (2, 8, 5, 5), pass_, device="cpu")
    run()
    run()
    if pass_ == "forward":
        assert m.core.weight.grad is None and not m.training
    else:
        assert m.core.weight.grad is not None and m.training
    assert torch.equal(before, m.core.weight) == (pass_ != "step")  # only step updates weights


def test_runner_honours_frozen_factors():
    m = Tucker2Conv2d(8, 8, 3, (4, 4), padding=1)
    m.first.requires_grad_(False)
    m.last.requires_grad_(False)
    make_runner(m, (2, 8, 5, 5), "train", device="cpu")()
    assert m.first.weight.grad is None and m.last.weight.grad is None
    assert m.core.weight.grad is not None


def test_runner_errors():
    with pytest.raises(ValueError, match="unknown pass"):
        make_runner(nn.Linear(2, 2), (1, 2), "backward", device="cpu")
    m = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to differentiate|every parameter is frozen"):
        make_runner(m, (1, 2), "train", device="cpu", input_requires_grad=False)


@pytest.mark.parametrize("mode", ["blocked", "adaptive", "fixed"])
def test_time_callable(mode):
    r = time_callable(lambda: sum(range(100)), "cpu", min_run_time=1e-3, mode=mode, number=3, max_run_time=0.05)
    assert set(r) == {"median_s", "iqr_s", "min_s", "max_s", "n"}
    assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["n"] >= 1
    with pytest.raises(ValueError, match="valid"):
        time_callable(lambda: None, "cpu", mode="fast")


def test_interleaved_rotates_and_ratios():
    calls = []
    v = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    df = interleaved(v, rounds=3, device="cpu", min_run_time=1e-4, progress=False)
    assert len(df) == 9 and set(df["variant"]) == set("abc")
    # rotating order: each variant takes each position once in 3 rounds
    assert (df.groupby("variant")["position"].nunique() == 3).all()
    assert list(df[df["round"] == 1]["variant"]) == ["b", "c", "a"]
    pr = paired_ratios(df, "a").set_index("variant")
    assert pr.loc["a", "ratio"] == pytest.approx(1.0) and pr.loc["a", "speedup"] == pytest.approx(1.0)
    assert (pr["rounds"] == 3).all()
    assert (pr["ratio_min"] <= pr["ratio"]).all() and (pr["ratio"] <= pr["ratio_max"]).all()
    with pytest.raises(ValueError, match="reference"):
        paired_ratios(df, "z")


SWEEP_COLS = {"rank", "r2", "method", "pass", "median_s", "iqr_s", "min_s", "max_s", "n", "number", "norm_s",
              "norm_iqr_s", "ref_s", "times_s", "ratios", "cached", "device", "device_name", "torch", "threads",
              "dtype", "channels_last", "frozen", "batch", "input_shape", "weight_shape", "signature"}


def test_sweep_shapes_and_columns():
    df = sweep(tiny_conv(), ranks=[6, 4, 5], passes=("forward", "train"), repeats=2, reference_every=2, **FAST)
    assert SWEEP_COLS <= set(df.columns)
    assert len(df) == 2 * (3 + 1)  # 3 ranks + the original, per pass
    keep = df[df["method"] == "keep"]
    assert set(keep["rank"]) == {0} and set(keep["pass"]) == {"forward", "train"}
    dec = df[df["method"] == "tucker2"]
    assert sorted(set(dec["rank"])) == [4, 5, 6] and (dec["r2"] == dec["rank"]).all()
    assert (df["n"] == 2).all() and not df["cached"].any()
    assert (df["median_s"] > 0).all() and (df["norm_s"] > 0).all()
    assert df["input_shape"].iloc[0] == "2x16x6x6" and df["threads"].iloc[0] == 1
    assert per_repeat(dec).shape == (2, 6)


def test_sweep_default_range_beta_batch_and_svd():
    spec = tiny_conv(weight_shape=[16, 32, 3, 3], input_shape=[2, 32, 6, 6], ranks=[9, 4])  # beta = 4/9
    df = sweep(spec, passes=("train",), repeats=1, batch=3, **FAST)
    dec = df[df["method"] == "tucker2"]
    assert sorted(dec["rank"], reverse=True) == rank_range(spec, beta=4 / 9)
    assert (dec["r2"] == (dec["rank"] * 4 / 9).astype(int).clip(lower=1)).all()
    assert df["batch"].iloc[0] == 3 and "in=3x32x6x6" in df["signature"].iloc[0]
    lin = sweep(tiny_linear(), ranks=[3, 4], passes=("forward",), repeats=1, **FAST)
    assert set(lin["method"]) == {"svd", "keep"} and (lin[lin.method == "svd"]["r2"] == 0).all()


def test_sweep_frozen_and_errors():
    df = sweep(tiny_conv(), ranks=[4], passes=("step",), repeats=1, frozen=("first", "last"), **FAST)
    assert df["frozen"].iloc[0] == "first,last"
    with pytest.raises(ValueError, match="factor role"):
        sweep(tiny_conv(), ranks=[4], passes=("train",), repeats=1, frozen=("middle",), **FAST)
    with pytest.raises(ValueError, match="unknown pass"):
        sweep(tiny_conv(), ranks=[4], passes=("fwd",), **FAST)
    with pytest.raises(ValueError, match="order"):
        sweep(tiny_conv(), ranks=[4, 5], passes=("forward",), repeats=1, orders=("sideways",), **FAST)


def test_cache_hit_miss_and_partial(tmp_path, monkeypatch):
    cache = TimingCache(tmp_path)
    a = sweep(tiny_conv(), ranks=[4, 5], passes=("train",), repeats=2, cache=cache, **FAST)
    assert not a["cached"].any() and len(list(tmp_path.glob("timings_*.csv"))) == 1
    measured = []
    real = sweeps._measure

    def spy(spec, method, ranks, *args, **kw):
        measured.append(list(ranks))
        return real(spec, method, ranks, *args, **kw)

    monkeypatch.setattr(sweeps, "_measure", spy)
    b = sweep(tiny_conv(), ranks=[4, 5], passes=("train",), repeats=2, cache=cache, **FAST)
    assert measured == [] and b["cached"].all()  # hit: nothing re-timed
    pd.testing.assert_series_equal(a["median_s"], b["median_s"], check_exact=False, rtol=1e-5)
    c = sweep(tiny_conv(), ranks=[4, 5, 6], passes=("train",), repeats=2, cache=cache, **FAST)
    assert measured == [[6]]  # partial miss: only the new rank
    assert sorted(c[c.method == "tucker2"]["rank"]) == [4, 5, 6]
    sweep(tiny_conv(), ranks=[4], passes=("train",), repeats=3, cache=cache, **FAST)
    assert measured[-1] == [4]  # more repeats asked than cached: re-timed
    # other settings are other keys: a miss
    sweep(tiny_conv(), ranks=[4], passes=("forward",), repeats=1, cache=cache, **FAST)
    assert measured[-1] == [4]


def _row(rank=4):
    return {"method": "svd", "rank": rank, "r2": 0, "pass": "train", "median_s": 1e-3, "n": 3, "norm_s": 1e-3,
            "ref_s": 2e-3, "times_s": "0.001", "ratios": "0.5"}


def test_cache_keyed_by_device(tmp_path):
    cache = TimingCache(tmp_path)
    kcpu = timing_key("cpu:Xeon", torch.float32, "train", "sig")
    kgpu = timing_key("NVIDIA H100", torch.float32, "train", "sig")
    cache.add([_row()], {"train": kcpu})
    assert len(cache.lookup(kcpu)) == 1
    assert cache.lookup(kgpu) == []  # never a CPU entry for CUDA
    assert cache.path(kcpu) != cache.path(kgpu)
    # even a CPU file copied to where the CUDA entries live is not used
    cache.path(kgpu).write_text(cache.path(kcpu).read_text())
    with pytest.warns(UserWarning, match="measured elsewhere"):
        assert TimingCache(tmp_path).lookup(kgpu) == []
    # other torch version / dtype / threads are other keys
    assert cache.lookup({**kcpu, "torch": "0.0"}) == []
    assert cache.lookup(timing_key("cpu:Xeon", torch.float16, "train", "sig")) == []
    assert cache.lookup(timing_key("cpu:Xeon", torch.float32, "train", "sig", threads=99)) == []


def test_cache_held_block_flushes_and_writes_on_interrupt(tmp_path):
    cache = TimingCache(tmp_path)
    k = timing_key("cpu:Xeon", torch.float32, "train", "sig")
    with pytest.raises(KeyboardInterrupt):
        with cache.held():
            cache.add([_row(4)], {"train": k})
            assert not cache.path(k).exists() and len(cache.lookup(k)) == 1  # held, visible
            cache.flush()  # written now; the block goes on holding
            assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4]
            cache.add([_row(5)], {"train": k})
            assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4]
            raise KeyboardInterrupt
    assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4, 5]  # nothing measured is lost
    assert sorted(r["rank"] for r in TimingCache(tmp_path).lookup(k)) == [4, 5]
    cache.flush()  # outside a block: nothing to do
    cache.add([_row(6)], {"train": k})  # and writes go straight to disk again
    assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4, 5, 6]
    with cache.held(flush_every=0.0):  # every add past the interval writes (what optimize_ranks does every 5 s)
        cache.add([_row(7)], {"train": k})
        assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4, 5, 6, 7]
    with cache.held(flush_every=3600.0):
        cache.add([_row(8)], {"train": k})
        assert 8 not in set(pd.read_csv(cache.path(k))["rank"])
    assert 8 in set(pd.read_csv(cache.path(k))["rank"])


def test_cache_ignores_rows_of_an_earlier_timing_protocol(tmp_path):
    from lrdnb.cache import PROTOCOL

    cache = TimingCache(tmp_path)
    k = timing_key("cpu:Xeon", torch.float32, "train", "sig")
    assert k["protocol"] == PROTOCOL >= 2
    cache.add([_row(4)], {"train": k})
    # a file written before the protocol was recorded: its timings were taken another way
    legacy = pd.read_csv(cache.path(k)).drop(columns="protocol")
    legacy.to_csv(cache.path(k), index=False)
    with pytest.warns(UserWarning, match=r"1 rows were measured by timing protocol \['1'\].*re-timed"):
        assert TimingCache(tmp_path).lookup(k) == []
    fresh = TimingCache(tmp_path)
    with pytest.warns(UserWarning, match="timing protocol"):
        fresh.add([_row(5)], {"train": k})
    assert [r["rank"] for r in fresh.lookup(k)] == [5]  # only the new protocol's row
    on_disk = pd.read_csv(cache.path(k), dtype=str)
    assert sorted(zip(on_disk["protocol"], on_disk["rank"])) == [("1", "4"), (str(PROTOCOL), "5")]  # kept


def test_cache_corrupt_file_warns(tmp_path):
    cache = TimingCache(tmp_path)
    k = timing_key("cpu:Xeon", torch.float32, "train", "sig")
    cache.path(k).parent.mkdir(parents=True, exist_ok=True)
    cache.path(k).write_text("device_name,rank\n\x00garbage,notanumber\n")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.lookup(k) == []
    assert not cache.path(k).exists() and cache.path(k).with_suffix(".corrupt").exists()
    cache.add([_row(7)], {"train": k})  # works again afterwards
    assert [r["rank"] for r in cache.lookup(k)] == [7]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TimingCache(tmp_path).lookup(k)  # a good file reads silently


def test_as_cache(tmp_path):
    assert as_cache(None) is None and as_cache(False) is None
    assert as_cache(tmp_path).folder == tmp_path
    c = TimingCache(tmp_path)
    assert as_cache(c) is c
    with pytest.raises(ValueError, match="cache must be"):
        as_cache(3)


def test_sweep_reads_rows_types_from_cache(tmp_path):
    cache = TimingCache(tmp_path)
    sweep(tiny_conv(), ranks=[4, 5], passes=("train",), repeats=1, cache=cache, **FAST)
    df = sweep(tiny_conv(), ranks=[4, 5], passes=("train",), repeats=1, cache=TimingCache(tmp_path), **FAST)
    assert df["rank"].dtype.kind == "i" and df["median_s"].dtype.kind == "f"
    assert np.isfinite(per_repeat(df)).all()


def test_verify_steps_table_and_cache(tmp_path, monkeypatch):
    cache = TimingCache(tmp_path)
    v = steps.verify_steps(tiny_conv(), [4, 6], "train", rounds=3, device="cpu", threads=1, min_run_time=1e-4,
                            cache=cache)
    assert list(v["candidate"]) == [6, 4] and list(v["above"]) == [7, 5]
    assert (v["rounds"] == 3).all() and not v["cached"].any() and v["faster"].between(0, 1).all()
    assert (v["ratio_min"] <= v["ratio"]).all() and (v["ratio"] <= v["ratio_max"]).all()
    assert np.allclose(v["drop_rel"], 1 - v["ratio"])
    monkeypatch.setattr(pairs, "_round", lambda *a, **k: pytest.fail("re-timed a cached step"))
    again = steps.verify_steps(tiny_conv(), [4, 6], "train", rounds=3, device="cpu", threads=1, cache=cache)
    assert again["cached"].all() and np.allclose(again["ratio"], v["ratio"])
    assert np.allclose(again.set_index("candidate")["faster"], v.set_index("candidate")["faster"])
    # verification rows never leak into sweeps of the same signature
    s = sweep(tiny_conv(), ranks=[4], passes=("train",), repeats=1, cache=cache, **FAST)
    assert set(s["method"]) == {"tucker2", "keep"}


def test_runner_backpropagates_the_given_gradient_in_the_output_layout():
    torch.manual_seed(0)
    m = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    g = torch.randn(2, 6, 5, 5)  # NCHW-contiguous, the layer runs channels_last
    seen = []
    m.register_full_backward_hook(lambda mod, gin, gout: seen.append(gout[0]))
    run = make_runner(m, (2, 4, 5, 5), "train", device="cpu", channels_last=True, inputs=x, grad_output=g)
    run()
    run()
    # the gradient reaches the layer channels_last, as in a channels_last network, converted once
    assert all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in seen)
    assert seen[0].data_ptr() == seen[1].data_ptr()
    # and it is the given gradient: dL/db = sum of g over batch and pixels
    torch.testing.assert_close(m.bias.grad, g.sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    # a gradient already in the output's layout is used as is (one tensor for every runner of a sweep)
    g_cl = g.contiguous(memory_format=torch.channels_last)
    seen.clear()
    make_runner(m, (2, 4, 5, 5), "train", device="cpu", channels_last=True, inputs=x, grad_output=g_cl)()
    assert seen[0].data_ptr() == g_cl.data_ptr()
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 6, 4, 4\), the output \(2, 6, 5, 5\)"):
        make_runner(m, (2, 4, 5, 5), "train", device="cpu", grad_output=torch.zeros(2, 6, 4, 4))()


def test_time_callable_keeps_one_timer_per_callable_and_thread_count():
    def f():
        return sum(range(50))

    time_callable(f, "cpu", mode="fixed", number=2, threads=1)
    t1 = f.__dict__["_lrdnb_timer"]
    time_callable(f, "cpu", mode="fixed", number=3, threads=1)
    assert f.__dict__["_lrdnb_timer"] is t1  # re-used: building a Timer compiles its statement
    r = time_callable(f, "cpu", mode="fixed", number=2, threads=2)
    assert f.__dict__["_lrdnb_timer"][0] == 2 and f.__dict__["_lrdnb_timer"] is not t1
    assert r["n"] == 2 and r["median_s"] > 0
    # callables that cannot hold attributes still work
    for g in (int, object().__hash__):  # a class (read-only __dict__), a method-wrapper (none)
        assert time_callable(g, "cpu", mode="fixed", number=1)["n"] == 1

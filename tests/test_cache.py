"""Timing cache: where it lives, and that no damaged, foreign or unwritable file costs a search
its measurements (issue 18, item 4)."""
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lrdnb
import lrdnb.rankopt.cache as C
from lrdnb.rankopt.cache import TimingCache, as_cache, default_folder, timing_key

KEY = timing_key("cpu:test", torch.float32, "train", "conv2d|w=8x8x3x3")
OTHER = timing_key("cpu:other", torch.float32, "train", "conv2d|w=8x8x3x3")
ADVICE = "set LRDNB_CACHE to a writable folder or pass cache=None"


def _rows(*ranks):
    return [{"method": "svd", "rank": r, "pass": "train", "median_s": 1e-3 * r, "n": 3} for r in ranks]


def _filled(folder, *ranks, key=KEY):
    c = TimingCache(folder)
    c.add(_rows(*ranks), {"train": key})
    return c.path(key)


def _caught(fn):
    """``fn()``'s result and the messages of the warnings it gave."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(x.message) for x in w]


def _ranks(cache, key=KEY):
    return sorted(r["rank"] for r in cache.lookup(key))


# -- where it lives ------------------------------------------------------------------------------

def test_default_folder_is_per_user_never_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("LRDNB_CACHE", str(tmp_path / "env"))
    assert default_folder() == tmp_path / "env" and TimingCache().folder == tmp_path / "env"
    assert as_cache("default").folder == tmp_path / "env"
    monkeypatch.delenv("LRDNB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert TimingCache().folder == tmp_path / "xdg" / "lrdnb"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert TimingCache().folder == tmp_path / "home" / ".cache" / "lrdnb"
    package_root = Path(lrdnb.__file__).resolve().parent.parent
    assert package_root not in TimingCache().folder.resolve().parents
    assert TimingCache(tmp_path / "x").folder == tmp_path / "x"


def test_roundtrip(tmp_path):
    path = _filled(tmp_path, 4, 8)
    assert path.parent == tmp_path and path.read_text().endswith("\n")
    (again, msgs) = _caught(lambda: _ranks(TimingCache(tmp_path)))
    assert again == [4, 8] and msgs == []


# -- caches that cannot be written ---------------------------------------------------------------

def _search_like(cache):
    """What a rank search does: many adds inside held(flush_every=0) (a write per add)."""
    with cache.held(flush_every=0):
        for r in range(1, 6):
            cache.add(_rows(r), {"train": KEY})
    return _ranks(cache)


def test_unwritable_folder_keeps_rows_in_memory_and_warns_once(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache = TimingCache(blocker / "cache")  # the folder can never be created
    ranks, msgs = _caught(lambda: _search_like(cache))
    assert ranks == [1, 2, 3, 4, 5]
    assert len(msgs) == 1 and str(cache.path(KEY)) in msgs[0] and ADVICE in msgs[0]
    more, msgs = _caught(lambda: cache.add(_rows(9), {"train": KEY}))
    assert msgs == [] and 9 in _ranks(cache)


def test_permission_error_on_the_final_write_loses_nothing(tmp_path, monkeypatch):
    def denied(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(C, "atomic_write_text", denied)
    cache = TimingCache(tmp_path)
    ranks, msgs = _caught(lambda: _search_like(cache))
    assert ranks == [1, 2, 3, 4, 5]
    assert len(msgs) == 1 and "PermissionError" in msgs[0] and ADVICE in msgs[0]
    assert not cache.path(KEY).exists()


def test_read_only_file_is_read_never_replaced(tmp_path):
    path = _filled(tmp_path, 4, 8)
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    text, mtime = path.read_bytes(), path.stat().st_mtime_ns
    cache = TimingCache(tmp_path)
    assert _ranks(cache) == [4, 8]  # used
    ranks, msgs = _caught(lambda: _search_like(cache))
    assert ranks == [1, 2, 3, 4, 5, 8]
    assert len(msgs) == 1 and "read-only" in msgs[0] and ADVICE in msgs[0]
    assert path.read_bytes() == text and path.stat().st_mtime_ns == mtime  # never replaced
    _, msgs = _caught(cache.clear)
    assert path.exists() and "read-only" in msgs[0]


# -- damaged files -------------------------------------------------------------------------------

def test_partial_last_row_is_dropped_with_a_warning(tmp_path):
    path = _filled(tmp_path, 4, 8, 16)
    text = path.read_text()
    for cut in (3, len(text.splitlines()[-1]) // 2):  # inside the last value, inside the row
        path.write_text(text[: len(text) - 1 - cut])
        rows, msgs = _caught(lambda: TimingCache(tmp_path).lookup(KEY))
        assert sorted(r["rank"] for r in rows) == [4, 8]
        assert len(msgs) == 1 and str(path) in msgs[0] and "cut off mid-row" in msgs[0]
        assert all(np.isfinite(r["median_s"]) for r in rows)


def test_rows_with_missing_fields_are_dropped(tmp_path):
    path = _filled(tmp_path, 4, 8, 16)
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = ",".join(lines[1].split(",")[:5]) + "\n"  # a middle row with five fields
    lines[2] = lines[2].replace(",svd,8,", ",svd,eight,")  # a rank that is not a number
    path.write_text("".join(lines))
    rows, msgs = _caught(lambda: TimingCache(tmp_path).lookup(KEY))
    assert [r["rank"] for r in rows] == [16]
    assert len(msgs) == 1 and "2 rows with missing or malformed fields" in msgs[0]


@pytest.mark.parametrize("content,words", [
    (os.urandom(2048), "unreadable"),
    (b"\x00\x01\x02" * 100, "unreadable"),
    (b"a,b,c\n1,2,3\n", "missing columns"),
])
def test_unreadable_file_is_moved_aside(tmp_path, content, words):
    path = TimingCache(tmp_path).path(KEY)
    path.write_bytes(content)
    rows, msgs = _caught(lambda: TimingCache(tmp_path).lookup(KEY))
    assert rows == [] and len(msgs) == 1 and words in msgs[0] and "moved to" in msgs[0]
    assert path.with_suffix(".corrupt").read_bytes() == content and not path.exists()
    assert _ranks(TimingCache(tmp_path)) == [] and _filled(tmp_path, 4).exists()  # re-measured, written
    assert _ranks(TimingCache(tmp_path)) == [4]


def test_read_only_unreadable_file_stays(tmp_path):
    path = TimingCache(tmp_path).path(KEY)
    path.write_bytes(os.urandom(512))
    path.chmod(stat.S_IRUSR)
    cache = TimingCache(tmp_path)
    rows, msgs = _caught(lambda: cache.lookup(KEY))
    assert rows == [] and "left in place" in msgs[0] and path.exists()
    _, msgs = _caught(lambda: cache.add(_rows(4), {"train": KEY}))
    assert _ranks(cache) == [4] and ADVICE in msgs[0]


def test_empty_and_header_only_files(tmp_path):
    path = TimingCache(tmp_path).path(KEY)
    path.write_text("")
    rows, msgs = _caught(lambda: TimingCache(tmp_path).lookup(KEY))
    assert rows == [] and len(msgs) == 1 and "is empty" in msgs[0]
    full = _filled(tmp_path / "full", 4)
    path.write_text(full.read_text().splitlines(keepends=True)[0])
    rows, msgs = _caught(lambda: TimingCache(tmp_path).lookup(KEY))
    assert rows == [] and msgs == []
    cache = TimingCache(tmp_path)
    cache.add(_rows(4), {"train": KEY})
    assert _ranks(TimingCache(tmp_path)) == [4]


def test_duplicated_rows_keep_the_last(tmp_path):
    path = _filled(tmp_path, 4, 8)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + [lines[1].replace("0.004", "0.005")]))
    rows, msgs = _caught(lambda: TimingCache(tmp_path).lookup(KEY))
    assert sorted(r["rank"] for r in rows) == [4, 8] and len(msgs) == 1 and "1 duplicated rows" in msgs[0]
    assert next(r["median_s"] for r in rows if r["rank"] == 4) == 0.005


def test_a_row_timed_again_in_a_later_session_replaces_the_stored_one(tmp_path):
    path = _filled(tmp_path, 4, 8)
    later = TimingCache(tmp_path)  # reads the file: its key columns come back as the text they were written as
    with later.held(flush_every=0):
        later.lookup(KEY)
        later.add([{**_rows(4)[0], "median_s": 0.005}], {"train": KEY})
    assert len(path.read_text().splitlines()) == 3  # header + ranks 4 and 8, no duplicate
    rows, msgs = _caught(lambda: TimingCache(tmp_path).lookup(KEY))
    assert msgs == [] and next(r["median_s"] for r in rows if r["rank"] == 4) == 0.005


def test_rows_from_another_device_are_ignored(tmp_path):
    mine = TimingCache(tmp_path).path(KEY)
    shutil.copy(_filled(tmp_path / "elsewhere", 4, 8, key=OTHER), mine)  # a copied file
    rows, msgs = _caught(lambda: TimingCache(tmp_path).lookup(KEY))
    assert rows == [] and len(msgs) == 1 and "measured elsewhere" in msgs[0] and "cpu:other" in msgs[0]


@pytest.mark.parametrize("how", ["protocol 1", "no protocol column"])
def test_rows_of_an_old_protocol_are_kept_but_not_used(tmp_path, how):
    path = _filled(tmp_path, 4, 8)
    lines = path.read_text().splitlines(keepends=True)
    if how == "protocol 1":
        lines = [lines[0]] + [ln.replace(f",{C.PROTOCOL},svd,", ",1,svd,") for ln in lines[1:]]
    else:
        i = lines[0].split(",").index("protocol")
        lines = [",".join(x for j, x in enumerate(ln.split(",")) if j != i) for ln in lines]
    path.write_text("".join(lines))
    cache = TimingCache(tmp_path)
    rows, msgs = _caught(lambda: cache.lookup(KEY))
    assert rows == [] and len(msgs) == 1 and "protocol [1]" in msgs[0]
    cache.add(_rows(16), {"train": KEY})
    with pytest.warns(UserWarning, match="protocol"):
        assert _ranks(TimingCache(tmp_path)) == [16]
    assert len(path.read_text().splitlines()) == 1 + 3  # the old rows stay in the file


def _held_row(rank=4):
    return {"method": "svd", "rank": rank, "r2": 0, "pass": "train", "median_s": 1e-3, "n": 3, "norm_s": 1e-3,
            "ref_s": 2e-3, "times_s": "0.001", "ratios": "0.5"}


def test_cache_held_block_flushes_and_writes_on_interrupt(tmp_path):
    cache = TimingCache(tmp_path)
    k = timing_key("cpu:Xeon", torch.float32, "train", "sig")
    with pytest.raises(KeyboardInterrupt):
        with cache.held():
            cache.add([_held_row(4)], {"train": k})
            assert not cache.path(k).exists() and len(cache.lookup(k)) == 1  # held, visible
            cache.flush()  # written now; the block goes on holding
            assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4]
            cache.add([_held_row(5)], {"train": k})
            assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4]
            raise KeyboardInterrupt
    assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4, 5]  # nothing measured is lost
    assert sorted(r["rank"] for r in TimingCache(tmp_path).lookup(k)) == [4, 5]
    cache.flush()  # outside a block: nothing to do
    cache.add([_held_row(6)], {"train": k})  # and writes go straight to disk again
    assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4, 5, 6]
    with cache.held(flush_every=0.0):  # every add past the interval writes (what optimize_ranks does every 5 s)
        cache.add([_held_row(7)], {"train": k})
        assert sorted(pd.read_csv(cache.path(k))["rank"]) == [4, 5, 6, 7]
    with cache.held(flush_every=3600.0):
        cache.add([_held_row(8)], {"train": k})
        assert 8 not in set(pd.read_csv(cache.path(k))["rank"])
    assert 8 in set(pd.read_csv(cache.path(k))["rank"])


def test_as_cache(tmp_path):
    assert as_cache(None) is None and as_cache(False) is None
    assert as_cache(tmp_path).folder == tmp_path
    c = TimingCache(tmp_path)
    assert as_cache(c) is c
    with pytest.raises(ValueError, match="cache must be"):
        as_cache(3)



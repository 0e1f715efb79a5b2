"""On-disk timing cache: a layer signature is timed once per device, software and settings.

Step time depends only on shapes (DESIGN.md), so sweep results are keyed by

    (device_name, torch version, dtype, pass, layer signature (includes the input shape),
     channels_last, threads, frozen factor roles, timing protocol)

plus the ``(method, rank)`` of each row. ResNets repeat a handful of signatures dozens of times;
each is timed once, and a second run reads everything back instantly.

Files: one CSV per (device, torch, dtype, threads, channels_last) under the cache folder: the
``folder`` argument, else ``$LRDNB_CACHE``, else the per-user cache folder
(``$XDG_CACHE_HOME/lrdnb`` or ``~/.cache/lrdnb``; never inside the package or a repository).
Every row also carries its full key and is checked on read: a row from another device or torch
version (a copied file) is ignored with a warning, never used - a CPU timing is never used for
CUDA. Rows measured by an earlier timing protocol (:data:`PROTOCOL`: what a timed call does;
files written before it was recorded are protocol 1) are kept in the file but not used, with a
warning.

A cache never costs a search its measurements: a partial last row (a write cut off) and rows with
missing fields are dropped with a warning; an unreadable file is moved aside to ``*.corrupt``
with a warning and re-measured; a read-only file is read but never replaced; where a file cannot
be written the rows stay in memory for the session, with one warning. Writes are atomic
(:func:`lrdnb.results.atomic_write_text`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import torch

from ..results import atomic_write_text

__all__ = ["DEFAULT_FOLDER", "KEY_COLUMNS", "PROTOCOL", "TimingCache", "timing_key", "as_cache", "default_folder"]


def default_folder() -> Path:
    """``$LRDNB_CACHE``, else ``$XDG_CACHE_HOME/lrdnb``, else ``~/.cache/lrdnb``: timings belong
    to the machine and user that measured them, not to the package or a repository."""
    if os.environ.get("LRDNB_CACHE"):
        return Path(os.environ["LRDNB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lrdnb"


#: The default folder when this module was imported (:func:`default_folder` reads the
#: environment again each time a cache is made).
DEFAULT_FOLDER = default_folder()
#: What a timed layer call does and what the rows mean, versioned: rows of another protocol are
#: never used. 1: the train pass back-propagated a fresh NCHW gradient and computed an input
#: gradient for every layer; 2: the gradient in the output's layout, no input gradient for a layer
#: that reads the network's input; 3: paired checks store their per-round ratios (``ratios``)
#: under ``<method>-step`` / ``<method>-orig``, whole-model checks under ``model-check|...``.
PROTOCOL = 3
KEY_COLUMNS = ("device_name", "torch", "dtype", "pass", "signature", "channels_last", "threads", "frozen",
               "protocol")
_FILE_KEY = ("device_name", "torch", "dtype", "threads", "channels_last")
_ROW_ID = KEY_COLUMNS + ("method", "rank")
_INT = ("rank", "r2", "n", "number", "threads", "protocol")  # typed as the keys are, so a re-timed row replaces its old one
_FLOAT = ("median_s", "iqr_s", "min_s", "max_s", "norm_s", "norm_iqr_s", "ref_s")
_VALUE = ("method", "rank", "r2") + _FLOAT[:1] + ("iqr_s", "min_s", "max_s", "n", "number", "norm_s",
                                                  "norm_iqr_s", "ref_s", "times_s", "ratios")
_DEFAULTS = {"r2": 0, "number": 1, "times_s": "", "ratios": ""}


def _ident(rec: Mapping[str, Any]) -> tuple:
    return tuple(str(rec[k]) for k in KEY_COLUMNS)


def timing_key(
    device_name: str,
    dtype: torch.dtype | str,
    pass_: str,
    signature: str,
    channels_last: bool = False,
    threads: int | None = None,
    frozen: Iterable[str] = (),
) -> dict[str, Any]:
    """The cache key of one sweep curve (the torch version is added here)."""
    return {
        "device_name": str(device_name),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "pass": str(pass_),
        "signature": str(signature),
        "channels_last": bool(channels_last),
        "threads": int(threads or torch.get_num_threads()),
        "frozen": ",".join(frozen),
        "protocol": PROTOCOL,
    }


class TimingCache:
    """Timing rows on disk, one CSV per device/software/settings group.

    Args:
        folder: where the CSV files live (created on first write); default
            :func:`default_folder`.

    Example:
        >>> import tempfile
        >>> c = TimingCache(tempfile.mkdtemp())
        >>> k = timing_key("cpu:test", torch.float32, "train", "conv2d|w=8x8x3x3")
        >>> c.add([{"method": "svd", "rank": 4, "pass": "train", "median_s": 1e-3, "n": 3}], {"train": k})
        >>> [r["rank"] for r in c.lookup(k)]
        [4]
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder else default_folder()
        self._mem: dict[Path, tuple[float, pd.DataFrame, dict[tuple, list[dict]]]] = {}
        self._memory_only: dict[Path, str] = {}  # files that cannot be written (why): their rows live in _mem
        self._warned_write = False  # the can't-write warning is given once per cache
        self._held: dict[Path, list[dict]] | None = None  # rows not yet written, per file (inside held())
        self._flush_every: float | None = None  # held(flush_every=): seconds between writes
        self._flushed = 0.0  # when held rows were last written

    def __repr__(self) -> str:
        return f"TimingCache({str(self.folder)!r})"

    def path(self, key: Mapping[str, Any]) -> Path:
        """The CSV file holding ``key``'s rows."""
        ident = "|".join(str(key[k]) for k in _FILE_KEY)
        digest = hashlib.sha1(ident.encode()).hexdigest()[:10]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", str(key["device_name"]))[:40].strip("-")
        return self.folder / f"timings_{slug}_{digest}.csv"

    def _read(self, path: Path, key: Mapping[str, Any]) -> pd.DataFrame:
        if (self._held and path in self._held) or (path in self._memory_only and path in self._mem):
            return self._mem[path][1]
        if not path.exists():
            return _empty()
        mtime = path.stat().st_mtime
        hit = self._mem.get(path)
        if hit and hit[0] == mtime:
            return hit[1]
        self._mem.pop(path, None)
        try:
            df, notes = _parse(path.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - any unreadable file is set aside, never used
            self._set_aside(path, e)
            df, notes = _empty(), []
        if notes:
            warnings.warn(f"timing cache file {path}: {'; '.join(notes)}; missing timings will be re-measured",
                          stacklevel=3)
        df = _own_rows(df, key, path)
        index: dict[tuple, list[dict]] = {}
        for rec in df.to_dict("records"):
            index.setdefault(_ident(rec), []).append(rec)
        self._mem[path] = (mtime, df, index)
        return df

    def _set_aside(self, path: Path, error: Exception) -> None:
        """Move an unreadable file to ``*.corrupt`` (a read-only one is left as it is)."""
        if _read_only(path):
            where = "it is read-only, so it is left in place (never replaced)"
            self._memory_only[path] = "the file is read-only and unreadable: it is never replaced"
        else:
            bad = path.with_suffix(".corrupt")
            try:
                os.replace(path, bad)
                where = f"moved to {bad.name}"
            except OSError as e:
                where = f"it could not be moved aside ({e})"
                self._memory_only[path] = f"the unreadable file could not be moved aside ({e})"
        warnings.warn(f"timing cache file {path} is unreadable ({type(error).__name__}: {str(error)[:200]}); "
                      f"{where}; it is ignored and its layers will be re-timed", stacklevel=4)

    def lookup(self, key: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Rows stored under ``key`` (empty if none)."""
        path = self.path(key)
        self._read(path, key)
        hit = self._mem.get(path)
        return [dict(r) for r in hit[2].get(_ident(key), [])] if hit else []

    def add(self, rows: Iterable[Mapping[str, Any]], keys: Mapping[str, Mapping[str, Any]]) -> None:
        """Store sweep ``rows`` (each with a ``pass``) under ``keys[row['pass']]``; a row with the
        same key, method and rank replaces the old one."""
        by_path: dict[Path, list[dict]] = {}
        for r in rows:
            key = keys[r["pass"]]
            rec = {**{c: r.get(c, _DEFAULTS.get(c)) for c in _VALUE}, **key}
            if rec["rank"] is None or rec["n"] is None or rec["method"] is None:
                raise ValueError(f"timing rows need method, rank and n; got {dict(r)}")
            by_path.setdefault(self.path(key), []).append(rec)
        for path, recs in by_path.items():
            key = {k: recs[0][k] for k in KEY_COLUMNS}
            old = self._read(path, key)
            # keep what was stored in memory (no re-read of a growing file): update the index
            hit = self._mem.get(path)
            index = hit[2] if hit else {}  # lookup() hands out copies, so updating in place is safe
            for rec in recs:
                lst = index.setdefault(_ident(rec), [])
                lst[:] = [r for r in lst if (str(r["method"]), int(r["rank"])) != (str(rec["method"]), int(rec["rank"]))]
                lst.append(rec)
            if self._held is not None:  # the frame is built once, when the block ends
                self._held.setdefault(path, []).extend(recs)
                self._mem[path] = (hit[0] if hit else -1.0, old, index)
                if self._flush_every is not None and time.perf_counter() - self._flushed >= self._flush_every:
                    self.flush()
            else:
                both = _merge(old, recs)
                self._mem[path] = (self._write(path, both), both, index)

    def _write(self, path: Path, df: pd.DataFrame) -> float:
        """Write ``df`` to ``path`` and return the file's mtime; where it cannot be written (a
        read-only file, a folder that cannot be created or written) return -1: the rows stay in
        memory for this session and one warning says how to keep them."""
        if path not in self._memory_only and _read_only(path):
            self._memory_only[path] = "the file is read-only: it is read, never replaced"
        if path in self._memory_only:
            self._warn_unwritable(path, self._memory_only[path])
            return -1.0
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        try:
            atomic_write_text(path, buf.getvalue())
        except OSError as e:
            self._memory_only[path] = f"{type(e).__name__}: {e}"
            self._warn_unwritable(path, self._memory_only[path])
            return -1.0
        return path.stat().st_mtime

    def _warn_unwritable(self, path: Path, why: str) -> None:
        if not self._warned_write:  # once: a search adds rows many times
            self._warned_write = True
            warnings.warn(f"timing cache {path} cannot be written ({why}); its timings are kept in memory for "
                          "this session only. To keep them, set LRDNB_CACHE to a writable folder or pass "
                          "cache=None to time without a cache", stacklevel=4)

    @contextlib.contextmanager
    def held(self, flush_every: float | None = None):
        """Hold writes until the block ends: every :meth:`add` inside is visible to
        :meth:`lookup` at once and the files are written once, at the end (also on an error or
        interrupt, so nothing measured is lost) - and, with ``flush_every`` (seconds), also by the
        first :meth:`add` that many seconds after the last write (a search of many layers then
        loses at most that much work to a hard kill, and rewrites its file a few times, not once
        per layer).

        Example:
            >>> import tempfile
            >>> c = TimingCache(tempfile.mkdtemp())
            >>> k = timing_key("cpu:test", torch.float32, "train", "sig")
            >>> with c.held():
            ...     c.add([{"method": "svd", "rank": 4, "pass": "train", "median_s": 1e-3, "n": 1}], {"train": k})
            ...     (len(c.lookup(k)), c.path(k).exists())
            (1, False)
            >>> c.path(k).exists()
            True
        """
        if self._held is not None:  # nested: the outer block writes
            yield self
            return
        self._held, self._flush_every, self._flushed = {}, flush_every, time.perf_counter()
        try:
            yield self
        finally:
            self.flush()
            self._held = None

    def flush(self) -> None:
        """Write what a :meth:`held` block holds so far (the block goes on holding later rows)."""
        held, self._held = self._held, ({} if self._held is not None else None)
        self._flushed = time.perf_counter()
        for path, recs in (held or {}).items():
            _, old, index = self._mem[path]
            both = _merge(old, recs)
            self._mem[path] = (self._write(path, both), both, index)

    def clear(self) -> None:
        """Delete this cache's CSV files (read-only ones are left, with a warning)."""
        kept = []
        for p in self.folder.glob("timings_*.csv"):
            if _read_only(p):
                kept.append(p.name)
            else:
                p.unlink()
        if kept:
            warnings.warn(f"timing cache {self.folder}: read-only files left in place: {kept}", stacklevel=2)
        self._mem.clear()
        self._memory_only.clear()


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=list(_ROW_ID))


def _read_only(path: Path) -> bool:
    """An existing file nobody may write (by its mode bits, so also for root) or this process may not."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK)


def _parse(text: str) -> tuple[pd.DataFrame, list[str]]:
    """Rows of a cache file's text and notes on what was dropped: a partial last row (the writer
    always ends with a newline, so text after the last one is a cut-off row), rows with missing
    or malformed fields, duplicated rows (the last kept). Raises on a file that is not a cache
    table at all (no such columns, not CSV)."""
    notes = []
    if "\x00" in text:
        raise ValueError("binary content (NUL bytes), not CSV text")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        notes.append("its last row was cut off mid-row (an interrupted write) and is dropped")
    if not text.strip():
        return _empty(), notes or ["it is empty"]
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    if "protocol" not in df.columns and len(df.columns):  # written before protocols were recorded
        df["protocol"] = "1"
    missing = set(_ROW_ID) - set(df.columns)
    if missing:
        raise ValueError(f"missing columns {sorted(missing)}")
    bad = df[list(_ROW_ID)].isna().any(axis=1)  # a row with fewer fields than the header
    for c in _INT + _FLOAT:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
            if c in _INT or c == "median_s":
                bad |= df[c].isna()
    df["channels_last"] = df["channels_last"].map({"True": True, "False": False})
    bad |= df["channels_last"].isna()
    if bad.any():
        notes.append(f"{int(bad.sum())} rows with missing or malformed fields are dropped")
        df = df[~bad].copy()
    for c in _INT:
        if c in df:
            df[c] = df[c].astype(int)
    dup = df.duplicated(subset=list(_ROW_ID), keep="last")
    if dup.any():
        notes.append(f"{int(dup.sum())} duplicated rows (same key, method and rank) are dropped, the last kept")
        df = df[~dup]
    return df.reset_index(drop=True), notes


def _own_rows(df: pd.DataFrame, key: Mapping[str, Any], path: Path) -> pd.DataFrame:
    """``df`` without rows measured elsewhere (another device, torch, dtype, threads), with a
    warning; rows of another timing protocol stay (another checkout may use them), with a
    warning, and no lookup matches them."""
    foreign = pd.Series(False, index=df.index)
    for k in _FILE_KEY:
        foreign |= df[k].astype(str) != str(key[k])
    if foreign.any():
        seen = df.loc[foreign, ["device_name", "torch", "dtype", "threads"]].drop_duplicates().to_dict("records")
        warnings.warn(f"timing cache {path.name}: ignoring {int(foreign.sum())} rows measured elsewhere "
                      f"{seen[:3]} (this is {key['device_name']!r}, torch {key['torch']}); "
                      "timings are only valid on the device that measured them", stacklevel=4)
        df = df[~foreign].reset_index(drop=True)
    stale = df["protocol"].astype(str) != str(key.get("protocol", PROTOCOL))
    if stale.any():
        warnings.warn(f"timing cache {path.name}: {int(stale.sum())} rows were measured by timing protocol "
                      f"{sorted(set(df.loc[stale, 'protocol']))} (this code: {PROTOCOL}; see "
                      "lrdnb.rankopt.cache.PROTOCOL) and are not used; their layers will be re-timed", stacklevel=4)
    return df


def _merge(old: pd.DataFrame, recs: list[dict]) -> pd.DataFrame:
    """``old`` rows plus ``recs``; a new row replaces an old one with the same key, method and rank."""
    new = pd.DataFrame(recs)
    both = pd.concat([old, new], ignore_index=True) if not old.empty else new
    both = both.drop_duplicates(subset=list(_ROW_ID), keep="last")
    cols = list(KEY_COLUMNS) + [c for c in _VALUE if c in both.columns]
    return both[cols].reset_index(drop=True)


def as_cache(cache: Any) -> TimingCache | None:
    """``None``/``False`` -> no cache; ``"default"``/``True`` -> :func:`default_folder`
    (``$LRDNB_CACHE`` or the per-user cache folder); a path -> that folder; a :class:`TimingCache`
    as is."""
    if cache is None or cache is False:
        return None
    if isinstance(cache, TimingCache):
        return cache
    if cache is True or cache == "default":
        return TimingCache()
    if isinstance(cache, (str, Path)):
        return TimingCache(cache)
    raise ValueError(f"cache must be None, 'default', a folder path or a TimingCache, got {type(cache).__name__}")

"""Publishing a run as the committed reference, and archiving the reference it replaces.

The reference is one current file per artifact in ``data/`` and ``figures/``. A run (``out/<profile>/``,
written by ``python -m lrdnb reproduce``) becomes the reference only through :func:`publish`; every file
it replaces moves to ``data/archive/<artifact>/<date>_<commit>.<ext>`` with a row in
``data/archive/INDEX.csv`` (artifact, date, commit, device, note), so nothing measured is lost and
nothing is renamed by hand.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["INDEX_COLUMNS", "file_meta", "archive_key", "archive", "publish", "read_index"]

INDEX_COLUMNS = ("artifact", "date", "commit", "device", "note")
_RESULT_EXT = {"data": (".csv", ".json"), "figures": (".png",)}


def file_meta(path: str | Path) -> dict[str, Any]:
    """The provenance of a results file: its JSON twin's ``meta`` (csv/json) or the PNG's metadata."""
    path = Path(path)
    if path.suffix == ".png":
        try:
            from PIL import Image

            text = Image.open(path).text.get("Description")
        except (ImportError, OSError):
            text = None
        return json.loads(text) if text else {}
    twin = path.with_suffix(".json")
    return json.loads(twin.read_text()).get("meta", {}) if twin.exists() else {}


def archive_key(meta: dict[str, Any], commit: str | None = None) -> str:
    """``<YYYY-MM-DD>T<HHMM>_<sha>``: the measurement's UTC date and minute, and the commit that made it."""
    date = str(meta.get("date") or "undated")[:16].replace(":", "")
    return f"{date}_{commit or meta.get('commit') or 'nocommit'}"


def _last_commit(path: Path) -> str | None:
    """The commit that last changed ``path`` in its git checkout (for files whose provenance has none)."""
    import subprocess

    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def read_index(root: str | Path) -> list[dict[str, str]]:
    """The rows of ``data/archive/INDEX.csv`` (empty if there is none yet)."""
    path = Path(root) / "data" / "archive" / "INDEX.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def archive(path: str | Path, root: str | Path, note: str = "", commit: str | None = None,
            artifact: str | None = None, move=shutil.move) -> Path:
    """Move a reference file into ``data/archive/<artifact>/<date>_<commit><ext>`` and index it.

    Args:
        path: a file under ``root/data`` or ``root/figures`` (its stem is the artifact name).
        root: the repository root.
        note: why it was archived (default: the provenance's ``file_note``, if any).
        commit: the commit that measured it, where its provenance does not record one (default:
            the commit that last changed the file, if it is in a git checkout).
        artifact: the archive folder's name (default: the file's stem).
        move: ``shutil.move``, or e.g. a ``git mv`` wrapper.

    Returns:
        The archived file's path.
    """
    path, root = Path(path), Path(root)
    meta = file_meta(path)
    commit = commit or meta.get("commit") or _last_commit(path)
    key = archive_key(meta, commit)
    artifact = artifact or path.stem
    dest = root / "data" / "archive" / artifact / f"{key}{path.suffix}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    move(str(path), str(dest))
    row = {"artifact": artifact, "date": str(meta.get("date", "")), "commit": commit or meta.get("commit") or "",
           "device": meta.get("device_name", meta.get("device", "")), "note": note or meta.get("file_note", "")}
    index = root / "data" / "archive" / "INDEX.csv"
    rows = read_index(root)
    if not any(r["artifact"] == row["artifact"] and archive_key(r, r["commit"] or None) == key for r in rows):
        new = not index.exists()
        with open(index, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
            if new:
                w.writeheader()
            w.writerow(row)
    return dest


def _results(run_dir: Path) -> list[tuple[str, Path]]:
    """``(kind, file)`` for every result file of a run folder (not checkpoints, caches or notebooks)."""
    return [(kind, p) for kind, exts in _RESULT_EXT.items() if (run_dir / kind).is_dir()
            for p in sorted((run_dir / kind).iterdir()) if p.is_file() and p.suffix in exts and not p.name.startswith(".")]


def publish(run_dir: str | Path, root: str | Path, note: str = "", allow_smoke: bool = False) -> list[tuple[Path, Path | None]]:
    """Make a run's results the reference: archive each reference file it replaces, copy it in.

    Args:
        run_dir: a run folder with ``data/`` and ``figures/`` (e.g. ``out/cpu``).
        root: the repository root (the reference is ``root/data`` and ``root/figures``).
        note: recorded in ``INDEX.csv`` for every archived file (default: "superseded by the run of DATE").
        allow_smoke: also publish ``*_smoke`` results (refused by default: they are not measurements).

    Returns:
        ``(published file, archived previous file or None)`` per file.

    Raises:
        FileNotFoundError: the run folder holds no results.
        ValueError: smoke results without ``allow_smoke``.
    """
    run_dir, root = Path(run_dir), Path(root)
    files = _results(run_dir)
    if not files:
        raise FileNotFoundError(f"no results under {run_dir}/data or {run_dir}/figures")
    smoke = [p.name for _, p in files if p.stem.endswith("_smoke")]
    if smoke and not allow_smoke:
        raise ValueError(f"{len(smoke)} smoke results ({smoke[0]}, ...) are not a reference; run a real profile "
                         "(e.g. --profile cpu) or pass allow_smoke")
    done = []
    for kind, src in files:
        dest = root / kind / src.name
        old = None
        if dest.exists():
            new_date = str(file_meta(src).get("date", "?"))[:16]
            old = archive(dest, root, note=note or f"superseded by the run of {new_date}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        done.append((dest, old))
    return done

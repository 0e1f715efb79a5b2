"""The one results writer: a DataFrame to ``data/NAME.csv`` plus ``data/NAME.json`` (provenance).

Writes are atomic (temp file + rename), so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["atomic_write_text", "write_results", "read_results", "save_figure"]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_results(df: pd.DataFrame, name: str, meta: dict[str, Any], folder: str | Path = "data") -> tuple[Path, Path]:
    """Write ``folder/name.csv`` (the table) and ``folder/name.json`` (``meta`` + the table as records).

    ``meta`` should come from :func:`lrdnb.provenance.provenance`; the end of the run (date and
    load average, :func:`lrdnb.provenance.finish`) is added to it here unless already recorded.
    """
    from .provenance import finish

    if "end_date" not in meta:
        finish(meta)
    folder = Path(folder)
    csv = atomic_write_text(folder / f"{name}.csv", df.to_csv(index=False))
    doc = {"meta": meta, "columns": list(map(str, df.columns)), "rows": json.loads(df.to_json(orient="records"))}
    js = atomic_write_text(folder / f"{name}.json", json.dumps(doc, indent=1, default=str))
    return csv, js


def read_results(name: str, folder: str | Path = "data") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read back what :func:`write_results` wrote: ``(table, meta)``."""
    folder = Path(folder)
    doc = json.loads((folder / f"{name}.json").read_text())
    return pd.read_csv(folder / f"{name}.csv"), doc["meta"]


def save_figure(fig, name: str, meta: dict[str, Any] | None = None, folder: str | Path = "figures") -> Path:
    """Save a matplotlib figure as ``folder/name.png`` with provenance in the PNG metadata."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    md = {"Description": json.dumps(meta, default=str)} if meta else None
    tmp = folder / f".{name}.tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata=md)
    os.replace(tmp, path)
    return path

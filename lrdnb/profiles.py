"""Named parameter sets (``smoke`` / ``cpu`` / ``paper``) for the paper notebooks.

The one place presets live is ``notebooks/profiles.yaml``: ``{notebook_stem: {profile: {param: value}}}``.
A notebook's own parameters cell holds the ``cpu`` defaults; a profile overrides some of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["PROFILES", "PROFILES_FILE", "load_profiles", "profile_params"]

PROFILES = ("smoke", "cpu", "paper")
PROFILES_FILE = Path(__file__).resolve().parent.parent / "notebooks" / "profiles.yaml"


def load_profiles(path: str | Path = PROFILES_FILE) -> dict[str, dict[str, dict[str, Any]]]:
    """The whole presets file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no profiles file at {path}; it ships in the repository's notebooks/ folder")
    return yaml.safe_load(path.read_text()) or {}


def profile_params(notebook: str, profile: str, path: str | Path = PROFILES_FILE) -> dict[str, Any]:
    """Parameters that ``profile`` sets for ``notebook`` (its file stem); ``{}`` if none.

    Raises:
        ValueError: unknown profile name.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {list(PROFILES)}")
    stem = Path(notebook).stem
    return dict((load_profiles(path).get(stem) or {}).get(profile) or {})

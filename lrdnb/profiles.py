"""Named parameter sets (``smoke`` / ``cpu`` / ``paper``) for the paper notebooks, applied inside them.

The one place presets live is ``notebooks/profiles.yaml``: ``{notebook_stem: {profile: {param: value}}}``.
A notebook's parameters cell holds the ``cpu`` defaults and a ``profile`` parameter; its next cell
calls :func:`resolve`, which

1. applies the profile's values to every parameter that was *not* passed explicitly (papermill
   ``-p NAME VALUE``): papermill writes passed values into a cell it injects after the parameters
   cell, whose first line is ``# Parameters``; :func:`resolve` reads the names assigned there from
   the kernel's input history (``_ih``). Run by hand in Jupyter nothing is passed, so the profile
   named in the parameters cell applies in full;
2. sets ``tag`` to the profile's tag where it is ``None`` (its name; ``cpu`` for ``cpu-full``, see :data:`TAGS`);
3. resolves the output folders against the repository (never the caller's working directory):
   ``None`` -> ``out/<profile>/data``, ``out/<profile>/figures``, ``out/<profile>/checkpoints``;
   a relative path -> relative to the repository root.

So ``papermill notebooks/table1_throughput.ipynb o.ipynb -p profile smoke`` runs the smoke preset
from any directory and writes under ``out/smoke/``; the committed reference in ``data/`` and
``figures/`` changes only through ``python -m lrdnb publish``.
"""
from __future__ import annotations

import ast
import logging
import os
from pathlib import Path
from typing import Any, MutableMapping

import yaml

__all__ = ["PROFILES", "TAGS", "PROFILES_FILE", "OUTPUT_DIRS", "load_profiles", "profile_params", "repo_root",
           "out_dir", "reference_or", "passed_parameters", "resolve"]

PROFILES = ("smoke", "cpu", "cpu-full", "paper")
#: the output tag of a profile where it is not the profile's name: ``cpu-full`` is ``cpu`` with the
#: accuracy notebooks' full budgets, and its results are the committed ``*_cpu`` files.
TAGS = {"cpu-full": "cpu"}
PROFILES_FILE = Path(__file__).resolve().parent.parent / "notebooks" / "profiles.yaml"
#: output-folder parameters and the sub-folder of ``out/<profile>/`` each defaults to.
OUTPUT_DIRS = {"data_dir": "data", "figures_dir": "figures", "checkpoint_dir": "checkpoints"}


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


def repo_root() -> Path:
    """The repository holding the notebooks: ``$LRDNB_ROOT`` if set; else the folder above this
    package when it holds ``notebooks/`` (an editable install in a clone); else the current
    directory when it does (a clone, with lrdnb installed elsewhere); else the folder above the
    package (where ``reproduce`` then says that no notebooks were found)."""
    if os.environ.get("LRDNB_ROOT"):
        return Path(os.environ["LRDNB_ROOT"])
    above = Path(__file__).resolve().parent.parent
    for cand in (above, Path.cwd()):
        if (cand / "notebooks" / "profiles.yaml").exists():
            return cand
    return above


def out_dir(profile: str) -> Path:
    """Where a run of ``profile`` writes by default: ``<repository>/out/<profile>``."""
    return repo_root() / "out" / profile


def reference_or(folder: str | Path, name: str) -> str:
    """The committed ``data/`` folder if it holds ``name.csv`` (read it from there), else ``folder``."""
    ref = repo_root() / "data"
    return str(ref if (ref / f"{name}.csv").exists() else folder)


def passed_parameters(history: list[str] | None) -> set[str]:
    """Names assigned in the last papermill-injected parameters cell of an IPython input history
    (``_ih``), i.e. the parameters passed explicitly; an empty set when there is none."""
    for src in reversed(history or []):
        if src.split("\n", 1)[0].strip() == "# Parameters":
            try:
                tree = ast.parse(src)
            except SyntaxError:
                return set()
            return {t.id for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
    return set()


def _quiet_kernel() -> None:
    """Run-time settings of a notebook kernel: no torch message about a missing CUDA runtime (printed
    when torch.utils.benchmark imports torch.utils.cpp_extension on a machine without CUDA), and with
    ``LRDNB_PROGRESS=text`` (set by ``reproduce``) text progress bars instead of widgets, so their
    lines reach the terminal."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if os.environ.get("LRDNB_PROGRESS") == "text":
        import tqdm.auto
        import tqdm.std

        tqdm.auto.tqdm = tqdm.std.tqdm
        tqdm.auto.trange = tqdm.std.trange


def resolve(notebook: str, namespace: MutableMapping[str, Any], verbose: bool = True) -> dict[str, Any]:
    """Apply ``namespace["profile"]``'s preset to a notebook's parameters, in place (see module doc).

    Args:
        notebook: the notebook's file stem (its key in ``profiles.yaml``).
        namespace: the notebook's ``globals()``: its parameters, and ``_ih`` when run by IPython.
        verbose: print one line saying what was applied and where results go.

    Returns:
        The values set here (profile values, ``tag`` and output folders).

    Raises:
        ValueError: unknown profile, or a preset naming a parameter the notebook does not declare.
    """
    _quiet_kernel()
    profile = namespace.get("profile", "cpu")
    preset = profile_params(notebook, profile)
    unknown = sorted(k for k in preset if k not in namespace)
    if unknown:
        raise ValueError(f"profile {profile!r} of {notebook} sets {unknown}, which the notebook does not declare")
    passed = passed_parameters(namespace.get("_ih"))
    applied = {k: v for k, v in preset.items() if k not in passed}
    if namespace.get("tag", "") is None:
        applied["tag"] = TAGS.get(profile, profile)
    for name, sub in OUTPUT_DIRS.items():
        if name not in namespace:
            continue
        value = namespace[name]
        path = out_dir(profile) / sub if value is None else Path(value)
        applied[name] = str(path if path.is_absolute() else repo_root() / path)
    namespace.update(applied)
    if verbose:
        kept = sorted(passed & set(preset))
        where = namespace.get("data_dir") or namespace.get("figures_dir")
        print(f"profile {profile}: {len(preset) - len(kept)} preset value(s) applied"
              + (f", passed values kept for {kept}" if kept else "")
              + (f"; results -> {Path(where).parent}" if where else ""))
    return applied

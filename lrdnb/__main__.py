"""Command line: ``python -m lrdnb reproduce [--profile cpu|smoke|paper] [--only fig2,table1] [--force]``.

Runs the paper notebooks headless with papermill, in order, with a profile's parameters
(``notebooks/profiles.yaml``). Each executed notebook is written to ``OUT/<profile>/``; a
notebook that finished is not run again (interrupt and rerun freely) unless ``--force``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .profiles import PROFILES, profile_params
from .results import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"

#: short name -> notebook file, in the order ``reproduce`` runs them.
NOTEBOOKS = {
    "fig2": "fig2_step_time_vs_rank.ipynb",
    "table1": "table1_throughput.ipynb",
    "table2": "table2_decomposition_time.ipynb",
    "fig3": "fig3_sequential_vs_regular_freezing.ipynb",
    "table3": "table3_resnet_accuracy.ipynb",
    "table4": "table4_vit_accuracy.ipynb",
    "explore": "explore_rank_tradeoffs.ipynb",
}


def _select(only: str | None) -> list[str]:
    if not only:
        return list(NOTEBOOKS)
    names = [x.strip() for x in only.split(",") if x.strip()]
    bad = [n for n in names if n not in NOTEBOOKS]
    if bad:
        raise SystemExit(f"unknown notebook(s) {bad}; valid: {', '.join(NOTEBOOKS)}")
    return names


def _dirs(profile: str, out: Path) -> tuple[Path, Path]:
    """Where results go: the repository's data/ and figures/ for real profiles, OUT for smoke."""
    if profile == "smoke":
        return out / "data", out / "figures"
    return ROOT / "data", ROOT / "figures"


def reproduce(profile: str = "cpu", only: str | None = None, out: str | Path = "out", force: bool = False) -> list[dict]:
    """Run the selected notebooks; return one summary dict per notebook."""
    import papermill as pm

    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    out = Path(out).resolve() / profile
    out.mkdir(parents=True, exist_ok=True)
    data_dir, fig_dir = _dirs(profile, out.parent / profile)
    summary = []
    names = _select(only)
    for i, name in enumerate(names, 1):
        nb = NOTEBOOK_DIR / NOTEBOOKS[name]
        done = out / f"{nb.stem}.done.json"
        row = {"notebook": name, "file": str(out / nb.name)}
        if not nb.exists():
            print(f"[{i}/{len(names)}] {name}: notebook {nb} missing, skipped", flush=True)
            summary.append(row | {"status": "missing"})
            continue
        if done.exists() and not force:
            print(f"[{i}/{len(names)}] {name}: already done ({done.name}); --force to rerun", flush=True)
            summary.append(json.loads(done.read_text()) | {"status": "cached"})
            continue
        params = profile_params(nb, profile) | {
            "data_dir": str(data_dir), "figures_dir": str(fig_dir), "tag": profile,
        }
        print(f"[{i}/{len(names)}] {name}: running {nb.name} ({profile})", flush=True)
        t0 = time.perf_counter()
        before = {p: p.stat().st_mtime for d in (data_dir, fig_dir) if d.exists() for p in d.iterdir()}
        pm.execute_notebook(
            str(nb), str(out / nb.name), parameters=params, cwd=str(NOTEBOOK_DIR),
            kernel_name="python3", progress_bar=True,
        )
        wrote = sorted(
            str(p) for d in (data_dir, fig_dir) if d.exists() for p in d.iterdir()
            if p.is_file() and before.get(p) != p.stat().st_mtime
        )
        row |= {"status": "ran", "seconds": round(time.perf_counter() - t0, 1), "wrote": wrote}
        atomic_write_text(done, json.dumps(row, indent=1))
        summary.append(row)
    print("\nSummary:")
    for row in summary:
        secs = f" in {row['seconds']} s" if "seconds" in row else ""
        print(f"  {row['notebook']:8s} {row['status']}{secs} -> {row['file']}")
        for w in row.get("wrote", []):
            print(f"           wrote {w}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrdnb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("reproduce", help="run the paper notebooks headless (papermill)")
    rp.add_argument("--profile", default="cpu", choices=PROFILES)
    rp.add_argument("--only", default=None, help=f"comma list of: {', '.join(NOTEBOOKS)}")
    rp.add_argument("--out", default=str(ROOT / "out"), help="folder for executed notebooks")
    rp.add_argument("--force", action="store_true", help="rerun notebooks that already finished")
    args = parser.parse_args(argv)
    if args.cmd == "reproduce":
        reproduce(args.profile, args.only, args.out, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line of the reproduction.

``python -m lrdnb reproduce [--profile cpu|cpu-full|smoke|paper] [--only fig2,table1] [--out DIR] [--force] [--publish]``
    Runs the paper notebooks headless (papermill), in order, with a profile (``notebooks/profiles.yaml``).
    Results and figures land in ``out/<profile>/`` (``data/``, ``figures/``, executed notebooks), never on
    the committed reference; a notebook that finished is skipped on the next run (interrupt and rerun
    to resume) unless ``--force``. Ends with ours / the reference / the paper side by side.
``python -m lrdnb publish out/cpu``
    Makes a run the reference in ``data/`` + ``figures/``; the replaced files go to ``data/archive/``.
``python -m lrdnb results``
    Regenerates ``docs/results.md`` and the README's results block from the reference and the paper.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from .profiles import PROFILES, TAGS, out_dir, repo_root
from .reference import ARTIFACTS, comparison
from .results import atomic_write_text

ROOT = repo_root()
NOTEBOOK_DIR = ROOT / "notebooks"

#: short name -> notebook file, in the order ``reproduce`` runs them.
NOTEBOOKS = {name: f"{a.notebook}.ipynb" for name, a in ARTIFACTS.items()}
#: seconds without a line from the kernel before ``reproduce`` says which cell is running.
HEARTBEAT_S = 60.0
#: set in the notebooks' kernels: text progress bars (not widgets, see lrdnb.profiles), rarely redrawn.
KERNEL_ENV = {"LRDNB_PROGRESS": "text", "TQDM_MININTERVAL": "10"}


def _select(only: str | None) -> list[str]:
    if not only:
        return list(NOTEBOOKS)
    names = [x.strip() for x in only.split(",") if x.strip()]
    bad = [n for n in names if n not in NOTEBOOKS]
    if bad:
        raise SystemExit(f"unknown notebook(s) {bad}; valid: {', '.join(NOTEBOOKS)}")
    return names


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Progress:
    """Prints a kernel's output as prefixed lines, with at most one line per tqdm bar redraw every
    ``every`` seconds; :meth:`stream` gives papermill a file for ``stdout_file`` / ``stderr_file``."""

    def __init__(self, prefix: str, t0: float, every: float = 20.0):
        self.prefix, self.t0, self.every = prefix, t0, every
        self.last, self.last_bar = t0, 0.0
        self.lock = threading.Lock()

    def say(self, line: str) -> None:
        el = int(time.perf_counter() - self.t0)
        print(f"  [{self.prefix} {el // 60}:{el % 60:02d}] {line.rstrip()}", flush=True)
        self.last = time.perf_counter()

    def stream(self) -> "_Stream":
        return _Stream(self)


class _Stream:
    def __init__(self, progress: _Progress):
        self.p, self.buf = progress, ""

    def write(self, text: str) -> None:
        with self.p.lock:
            self.buf += _ANSI.sub("", text)
            *done, self.buf = self.buf.replace("\r\n", "\n").split("\n")
            for chunk in done:
                line = chunk.split("\r")[-1]
                if line.strip():
                    self.p.say(line)
            if "\r" in self.buf:  # a tqdm bar redrawn in place: show it now and then
                self.buf = self.buf.split("\r")[-1]
                if self.buf.strip() and time.perf_counter() - self.p.last_bar >= self.p.every:
                    self.p.last_bar = time.perf_counter()
                    self.p.say(self.buf)

    def flush(self) -> None:
        pass


def _running_cell(executed: Path) -> str:
    """``"cell 4/10: table, meta = throughput_table("`` from the notebook papermill saves while running."""
    try:
        cells = [c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code"]
    except (OSError, ValueError, KeyError):
        return "starting"
    for i, c in enumerate(cells, 1):
        if c.get("metadata", {}).get("papermill", {}).get("status") == "running":
            first = next((s.strip() for s in "".join(c["source"]).splitlines() if s.strip()), "")
            return f"cell {i}/{len(cells)}: {first[:60]}"
    return "between cells"


def _heartbeat(progress: _Progress, executed: Path, stop: threading.Event) -> None:
    while not stop.wait(min(5.0, HEARTBEAT_S / 2)):
        if time.perf_counter() - progress.last >= HEARTBEAT_S:
            progress.say(f"still running ({_running_cell(executed)})")


def _kernel_manager(log: Path):
    """A kernel manager that talks to the kernel over local IPC sockets (no 'running over TCP without
    encryption' warning), sends the kernel's own stderr (ZMQ / shutdown noise) to ``log`` and sets
    :data:`KERNEL_ENV` in the kernel's environment."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class _Quiet(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc" if os.name == "posix" else "tcp")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw["env"] = {**kw.get("env", os.environ), **KERNEL_ENV}
            with open(log, "a") as err:  # the child keeps its own copy of the descriptor
                kw.setdefault("stderr", err)
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return _Quiet


def _run_one(nb: Path, executed: Path, params: dict, prefix: str) -> None:
    import papermill as pm

    t0 = time.perf_counter()
    progress = _Progress(prefix, t0)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(progress, executed, stop), daemon=True)
    beat.start()
    try:
        pm.execute_notebook(str(nb), str(executed), parameters=params, cwd=str(NOTEBOOK_DIR), kernel_name="python3",
                            progress_bar=False, stdout_file=progress.stream(), stderr_file=progress.stream(),
                            kernel_manager_class=_kernel_manager(executed.with_suffix(".kernel.log")))
    finally:
        stop.set()


def reproduce(profile: str = "cpu", only: str | None = None, out: str | Path | None = None, force: bool = False,
              params: dict | None = None) -> list[dict]:
    """Run the selected notebooks into ``out`` (default ``out/<profile>``); return one summary per notebook.

    Args:
        params: extra parameters for every notebook that declares them (e.g. ``{"device": "cpu"}``).
    """
    import papermill as pm

    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    if not NOTEBOOK_DIR.is_dir():
        raise SystemExit(f"no notebooks at {NOTEBOOK_DIR}: run reproduce from a clone of the lrdnb repository "
                         "(cd into it), or set LRDNB_ROOT to the clone")
    out = Path(out).resolve() if out else out_dir(profile)
    out.mkdir(parents=True, exist_ok=True)
    given = {"profile": profile, "data_dir": str(out / "data"), "figures_dir": str(out / "figures"),
             "checkpoint_dir": str(out / "checkpoints"), **(params or {})}
    summary = []
    names = _select(only)
    print(f"reproduce --profile {profile}: {len(names)} notebook(s) -> {out}", flush=True)
    for i, name in enumerate(names, 1):
        nb = NOTEBOOK_DIR / NOTEBOOKS[name]
        executed = out / nb.name
        done = out / f"{nb.stem}.done.json"
        row = {"notebook": name, "file": str(executed)}
        if done.exists() and not force:
            print(f"[{i}/{len(names)}] {name}: already done ({done.name}); --force to rerun", flush=True)
            summary.append(json.loads(done.read_text()) | {"status": "cached"})
            continue
        done.unlink(missing_ok=True)
        declared = pm.inspect_notebook(str(nb))
        passed = {k: v for k, v in given.items() if k in declared}
        print(f"[{i}/{len(names)}] {name}: running {nb.name}", flush=True)
        t0 = time.perf_counter()
        try:
            _run_one(nb, executed, passed, name)
        except KeyboardInterrupt:
            raise _Interrupted(name, profile) from None
        except pm.PapermillExecutionError as e:
            if e.ename == "KeyboardInterrupt":
                raise _Interrupted(name, profile) from None
            print(f"[{i}/{len(names)}] {name}: FAILED in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                  f"  executed notebook with the traceback: {executed}", flush=True)
            summary.append(row | {"status": "failed", "error": f"{e.ename}: {e.evalue}"})
            continue
        row |= {"status": "ran", "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_text(done, json.dumps(row, indent=1))
        print(f"[{i}/{len(names)}] {name}: done in {row['seconds']:.0f} s", flush=True)
        summary.append(row)
    _report(summary, names, out, profile)
    return summary


class _Interrupted(Exception):
    def __init__(self, name: str, profile: str):
        super().__init__(f"interrupted during {name}; rerun `python -m lrdnb reproduce --profile {profile}` to resume "
                         "(finished notebooks are skipped)")


def _report(summary: list[dict], names: list[str], out: Path, profile: str) -> None:
    print("\nNotebooks:")
    for row in summary:
        secs = f" in {row['seconds']:.0f} s" if "seconds" in row else ""
        print(f"  {row['notebook']:8s} {row['status']}{secs} -> {row['file']}")
    print(f"\nOurs ({out}) beside the committed reference (data/) and the paper:\n")
    for name in names:
        print(comparison(name, (out / "data", TAGS.get(profile, profile)), (ROOT / "data", "cpu")) + "\n")
    if profile != "smoke":
        print(f"To make this run the reference: python -m lrdnb publish {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrdnb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("reproduce", help="run the paper notebooks headless into out/<profile>/")
    rp.add_argument("--profile", default="cpu", choices=PROFILES)
    rp.add_argument("--only", default=None, help=f"comma list of: {', '.join(NOTEBOOKS)}")
    rp.add_argument("--out", default=None, help="run folder (default: out/<profile>)")
    rp.add_argument("--force", action="store_true", help="rerun notebooks that already finished")
    rp.add_argument("--publish", action="store_true", help="then make the results the reference (see publish)")
    pb = sub.add_parser("publish", help="make a run folder's results the reference in data/ + figures/")
    pb.add_argument("run", help="run folder, e.g. out/cpu")
    pb.add_argument("--note", default="", help="recorded in data/archive/INDEX.csv for every replaced file")
    pb.add_argument("--allow-smoke", action="store_true", help="also publish smoke results (tests only)")
    rs = sub.add_parser("results", help="regenerate docs/results.md and the README's results block from data/")
    rs.add_argument("--output", default=None, help="where to write (default: docs/results.md)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "reproduce":
            summary = reproduce(args.profile, args.only, args.out, args.force)
            if args.publish and summary:
                if any(r["status"] == "failed" for r in summary):
                    print("not publishing: a notebook failed")
                    return 1
                _publish(Path(args.out).resolve() if args.out else out_dir(args.profile), "", False)
            return 1 if any(r["status"] == "failed" for r in summary) else 0
        if args.cmd == "publish":
            _publish(Path(args.run).resolve(), args.note, args.allow_smoke)
        if args.cmd == "results":
            from .results_page import update_readme, write

            print(f"wrote {write(ROOT, args.output)}")
            if args.output is None:
                update_readme(ROOT, ROOT / "README.md")
                print(f"updated the results block of {ROOT / 'README.md'}")
    except _Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def _publish(run: Path, note: str, allow_smoke: bool) -> None:
    from .publish import publish
    from .results_page import update_readme, write

    try:
        done = publish(run, ROOT, note=note, allow_smoke=allow_smoke)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"publish: {e}")
    for dest, old in done:
        print(f"published {dest.relative_to(ROOT)}" + (f" (previous -> {old.relative_to(ROOT)})" if old else ""))
    update_readme(ROOT, ROOT / "README.md")
    print(f"wrote {write(ROOT)} and the README's results block\n"
          "review and commit: git add data figures docs README.md && git commit")


if __name__ == "__main__":
    sys.exit(main())

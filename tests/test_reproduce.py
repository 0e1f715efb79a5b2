"""`python -m lrdnb reproduce` / `publish`: runs land in their own folder, a rerun resumes, --force
clears the done marker first, only declared parameters are passed; publishing archives the
reference it replaces. Provenance records the commit and the load average."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import lrdnb.__main__ as cli
from lrdnb import publish as P
from lrdnb.provenance import finish, git_commit, load_average, provenance
from lrdnb.results import write_results


def _tiny_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('profile: str = "cpu"  # preset\ndata_dir: str = ""  # results',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os\n"
            "marker = os.path.join(os.path.dirname(data_dir), 'tiny.done.json')\n"
            "assert not os.path.exists(marker), 'the done marker must be gone before a rerun'\n"
            "print(f'tiny running with profile={profile}', flush=True)"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(3)  # silent: reproduce says which cell runs"),
    ]
    nbformat.write(nb, path)


@pytest.mark.notebooks
def test_reproduce_runs_into_out_resumes_and_forces(tmp_path, monkeypatch, capsys):
    _tiny_notebook(tmp_path / "tiny.ipynb")
    monkeypatch.setattr(cli, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(cli, "NOTEBOOKS", {"explore": "tiny.ipynb"})
    monkeypatch.setattr(cli, "HEARTBEAT_S", 1.0)
    out = tmp_path / "run"
    rows = cli.reproduce("smoke", out=out)
    text = capsys.readouterr().out
    assert rows[0]["status"] == "ran" and (out / "tiny.done.json").exists() and (out / "tiny.ipynb").exists()
    assert "[explore 0:" in text and "tiny running with profile=smoke" in text  # the kernel's output, live
    assert "still running (cell 4/4: import time)" in text  # a heartbeat while the kernel is silent (4 with papermill's)
    assert "Rank trade-off explorer" in text  # the comparison at the end
    assert cli.reproduce("smoke", out=out)[0]["status"] == "cached"
    assert cli.reproduce("smoke", out=out, force=True)[0]["status"] == "ran"  # the notebook asserts the marker is gone
    executed = json.loads((out / "tiny.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert "figures_dir" not in "".join(injected[0]["source"])  # only declared parameters are passed


def _result(folder: Path, name: str, date: str, value: float, commit: str | None = None) -> None:
    import pandas as pd

    write_results(pd.DataFrame({"x": [value]}), name, {"date": date, "device_name": "cpu:test", "commit": commit,
                                                        "end_date": date}, folder)


def test_publish_archives_previous_reference(tmp_path):
    root, run = tmp_path / "repo", tmp_path / "out" / "cpu"
    _result(root / "data", "table9_cpu", "2026-01-01T10:00:00+00:00", 1.0, "abc1234")
    _result(run / "data", "table9_cpu", "2026-02-02T11:30:00+00:00", 2.0, "def5678")
    done = P.publish(run, root)
    assert {d.name for d, _ in done} == {"table9_cpu.csv", "table9_cpu.json"}
    assert (root / "data" / "table9_cpu.csv").read_text() == (run / "data" / "table9_cpu.csv").read_text()
    old = root / "data" / "archive" / "table9_cpu" / "2026-01-01T1000_abc1234.csv"
    assert old.exists() and "1.0" in old.read_text()
    rows = P.read_index(root)
    assert len(rows) == 1 and rows[0]["commit"] == "abc1234" and rows[0]["device"] == "cpu:test"
    assert "2026-02-02" in rows[0]["note"]
    _result(run / "data", "table9_smoke", "2026-02-02T11:30:00+00:00", 3.0)
    with pytest.raises(ValueError, match="smoke"):
        P.publish(run, root)


def test_provenance_records_commit_and_load():
    meta = provenance("cpu")
    assert set(meta) >= {"commit", "dirty", "load_start"}
    assert meta["commit"] is None or len(meta["commit"]) >= 7
    assert git_commit("/") == {"commit": None, "dirty": None}
    load = load_average()
    assert load is None or len(load) == 3
    assert {"end_date", "load_end"} <= set(finish(meta))


def test_provenance_keeps_the_start_of_a_run_and_names_a_commit_made_during_it(monkeypatch):
    import lrdnb.provenance as prov

    monkeypatch.setattr(prov, "git_commit", lambda path=None: {"commit": "aaaaaaa", "dirty": False})
    monkeypatch.setattr(prov, "load_average", lambda: [0.5, 0.5, 0.5])
    started = prov.run_start()
    monkeypatch.setattr(prov, "git_commit", lambda path=None: {"commit": "bbbbbbb", "dirty": False})
    monkeypatch.setattr(prov, "load_average", lambda: [2.0, 2.0, 2.0])
    meta = prov.provenance("cpu", started, seed=1)
    assert (meta["commit"], meta["commit_at_write"], meta["load_start"]) == ("aaaaaaa", "bbbbbbb", [0.5, 0.5, 0.5])
    assert meta["date"] == started["date"] and meta["params"] == {"seed": 1}
    assert "commit_at_write" not in prov.provenance("cpu") and prov.provenance("cpu")["load_start"] == [2.0, 2.0, 2.0]


def test_reproduce_outside_a_clone_says_where_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "NOTEBOOK_DIR", tmp_path / "notebooks")
    with pytest.raises(SystemExit, match="no notebooks at .*run reproduce from a clone.*LRDNB_ROOT"):
        cli.reproduce("smoke")

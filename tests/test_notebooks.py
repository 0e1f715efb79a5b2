"""Every paper notebook: one papermill `parameters` cell that declares `profile`, every key its
profiles set and every key `python -m lrdnb reproduce` passes; then a cell applying the profile
(lrdnb.profiles.resolve); last, a printed conclusion beside the paper's."""
from __future__ import annotations

import re

import pytest

from lrdnb.__main__ import NOTEBOOK_DIR, NOTEBOOKS
from lrdnb.profiles import PROFILES, load_profiles, passed_parameters, profile_params, resolve


def _cells(name):
    import nbformat

    return nbformat.read(NOTEBOOK_DIR / NOTEBOOKS[name], as_version=4).cells


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_parameters_cell(name):
    import papermill as pm

    nb_path = NOTEBOOK_DIR / NOTEBOOKS[name]
    cells = _cells(name)
    idx = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(idx) == 1
    src = "\n" + cells[idx[0]].source
    keys = {"profile", "data_dir"} | {k for p in PROFILES for k in profile_params(nb_path, p)}
    if name != "explore":  # the explorer writes data only
        keys |= {"figures_dir", "tag"}
    missing = sorted(k for k in keys if f"\n{k}:" not in src)
    assert not missing, f"{nb_path.name} parameters cell lacks {missing}"
    assert '\nprofile: str = "cpu"' in src and '\ndata_dir: Optional[str] = None' in src
    assert "../" not in src, "output folders resolve from the repository, not from the caller's directory"
    # papermill reads every parameter (else it warns 'Passed unknown parameter' on each run)
    declared = set(re.findall(r"^(\w+):", cells[idx[0]].source, flags=re.M))
    unread = sorted(declared - set(pm.inspect_notebook(str(nb_path))))
    assert not unread, f"papermill cannot read {unread} in {nb_path.name}'s parameters cell"
    assert f'resolve("{nb_path.stem}", globals())' in cells[idx[0] + 1].source
    assert "print(conclusion(" in cells[-1].source


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_no_issue_talk(name):
    assert not any("issue" in c.source.lower() for c in _cells(name))


def test_profiles_drop_deleted_search_options():
    text = str(load_profiles())
    assert "orders" not in text and "reference_every" not in text


def test_passed_parameters_reads_papermill_cell():
    history = ["", "x: int = 1", "# Parameters\nprofile = \"smoke\"\nbatch = 4\n", "resolve(...)"]
    assert passed_parameters(history) == {"profile", "batch"}
    assert passed_parameters(["x: int = 1", "# Parameters (cpu defaults)\nx = 2"]) == set()
    assert passed_parameters(None) == set()


def test_resolve_applies_profile_except_passed(tmp_path, monkeypatch):
    monkeypatch.setenv("LRDNB_ROOT", str(tmp_path))
    preset = profile_params("table2_decomposition_time", "smoke")
    ns = {"profile": "smoke", "models": ["resnet50"], "image_size": 64, "batch": 3, "weights": ["hosvd", "hooi"],
          "optimize_kwargs": {}, "progress": True, "data_dir": None, "figures_dir": "figs", "tag": None,
          "_ih": ["", "# Parameters\nprofile = \"smoke\"\nbatch = 3\n"]}
    resolve("table2_decomposition_time", ns, verbose=False)
    assert ns["batch"] == 3  # passed explicitly: kept
    assert ns["models"] == preset["models"] and ns["image_size"] == preset["image_size"]
    assert ns["tag"] == "smoke"
    assert ns["data_dir"] == str(tmp_path / "out" / "smoke" / "data")
    assert ns["figures_dir"] == str(tmp_path / "figs")  # relative: from the repository root
    with pytest.raises(ValueError, match="valid"):
        resolve("table2_decomposition_time", {"profile": "laptop"}, verbose=False)
    with pytest.raises(ValueError, match="does not declare"):
        resolve("table2_decomposition_time", {"profile": "smoke"}, verbose=False)


def test_reproduce_rejects_unknown_names():
    from lrdnb.__main__ import _select

    with pytest.raises(SystemExit, match="valid"):
        _select("fig9")
    assert _select("table1, fig2") == ["table1", "fig2"]
    assert _select(None) == list(NOTEBOOKS)

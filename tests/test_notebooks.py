"""Every paper notebook: exactly one papermill `parameters` cell that declares every key its
profiles set and every key `python -m lrdnb reproduce` passes."""
from __future__ import annotations

import pytest

from lrdnb.__main__ import NOTEBOOK_DIR, NOTEBOOKS
from lrdnb.profiles import PROFILES, profile_params


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_parameters_cell(name):
    import nbformat

    nb_path = NOTEBOOK_DIR / NOTEBOOKS[name]
    nb = nbformat.read(nb_path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    src = "\n" + tagged[0].source
    keys = {"data_dir"} | {k for p in PROFILES for k in profile_params(nb_path, p)}
    if name != "explore":  # the explorer writes data only
        keys |= {"figures_dir", "tag"}
    missing = sorted(k for k in keys if f"\n{k}:" not in src)
    assert not missing, f"{nb_path.name} parameters cell lacks {missing}"
    # papermill reads every parameter (else it warns 'Passed unknown parameter' on each run):
    # no `X | None` annotations, no '=' in the comments
    import re

    import papermill as pm

    declared = set(re.findall(r"^(\w+):", tagged[0].source, flags=re.M))
    unread = sorted(declared - set(pm.inspect_notebook(str(nb_path))))
    assert not unread, f"papermill cannot read {unread} in {nb_path.name}'s parameters cell"


def test_reproduce_rejects_unknown_names():
    from lrdnb.__main__ import _select

    with pytest.raises(SystemExit, match="valid"):
        _select("fig9")
    assert _select("table1, fig2") == ["table1", "fig2"]
    assert _select(None) == list(NOTEBOOKS)

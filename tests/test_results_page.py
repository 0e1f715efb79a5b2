"""docs/results.md is generated from data/ and lrdnb/paper.py and must not drift from them."""
from __future__ import annotations

from pathlib import Path

from lrdnb import reference
from lrdnb.results_page import write

ROOT = Path(__file__).resolve().parent.parent


def test_results_page_is_up_to_date(tmp_path):
    fresh = write(ROOT, tmp_path / "results.md").read_text()
    committed = (ROOT / "docs" / "results.md").read_text()
    assert fresh == committed, "docs/results.md is stale: run `python -m lrdnb results` and commit it"
    for a in ("Table 1", "Table 2", "Table 3", "Table 4", "Fig. 2", "Fig. 3"):
        assert f"## {a}" in fresh
    assert fresh.count("Source: `data/") >= 6


def test_one_current_file_per_artifact():
    data = ROOT / "data"
    assert not [p.name for p in data.iterdir() if "_run" in p.name], "superseded runs belong in data/archive/"
    for a in reference.ARTIFACTS.values():
        for name in a.files("cpu" if a.tagged else ""):
            kind = "figures" if name.endswith(".png") else "data"
            assert (ROOT / kind / name).exists(), name


def test_comparison_and_conclusion_from_reference():
    text = reference.comparison("table1", (ROOT / "data", "cpu"), (ROOT / "data", "cpu"))
    assert "Combined training speed-up (%)" in text and "46.0" in text  # the paper's ResNet-50 number
    line = reference.conclusion("table1", ROOT / "data", "cpu")
    assert line.startswith("Conclusion") and "\n" not in line and "vs the paper's" in line


def test_readme_results_block_is_up_to_date():
    from lrdnb.results_page import update_readme

    assert update_readme(ROOT) == (ROOT / "README.md").read_text(), \
        "the README's results block is stale: run `python -m lrdnb results` and commit it"
    assert "issue" not in (ROOT / "README.md").read_text().lower()

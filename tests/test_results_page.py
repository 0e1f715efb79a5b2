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


def test_fig3_sentence_says_when_no_schedule_reached_the_target():
    import pandas as pd

    from lrdnb.results_page import _fig3_sentence

    s3 = pd.DataFrame({"schedule": ["regular", "sequential"], "seeds": 3, "epochs": 12, "target_acc": 0.9013,
                       "reached": [0, 0], "epochs_to_target_mean": float("nan"),
                       "final_acc_mean": [0.8828, 0.8913]}).set_index("schedule")
    c = {"a_first": 0, "b_first": 0, "seeds": 3, "final_diff_pts": 0.85, "final_diff_ci95": 0.79}
    sweep = [{"gap_pts": 1.5, "reached_sequential": 0, "reached_regular": 0, "sequential_first": 0, "regular_first": 0},
             {"gap_pts": 2.5, "reached_sequential": 3, "reached_regular": 3, "sequential_first": 1, "regular_first": 0}]
    text = _fig3_sentence(s3, c, sweep)
    assert "neither schedule reached the target set before the run (90.13%) within 12 epochs" in text
    assert "nan" not in text and "sign test" not in text
    assert "at 2.5 points under the reference, sequential got there first in 1 of 3 seeds, regular in 0" in text
    assert "(difference +0.85 +- 0.79 points, 95% interval)" in text
    s3["reached"] = [1, 3]
    s3["epochs_to_target_mean"] = [9.0, 6.0]
    c |= {"a_first": 3, "b_first": 0, "p_sign_a_first": 0.125, "ratio_censored_mean": 0.6, "paper_ratio": 20 / 26}
    text = _fig3_sentence(s3, c, sweep)
    assert "reached by sequential freezing in 3 of 3 seeds (mean epoch 6.0), by regular in 1 of 3 seeds (mean epoch 9.0)" in text
    assert "sign test p = 0.12" in text and "0.60 with misses counted at the budget + 1 [0.77]" in text
    c |= {"ratio_seeds": 1, "ratio_mean": 0.67, "ratio_ci95": float("nan"), "ratio_beyond": False, "seeds_not_reached": 2}
    text = _fig3_sentence(s3, c, sweep)
    assert "0.67 (in the 1 seed both reached it), 0.60 with misses" in text and "nan" not in text
    c |= {"ratio_seeds": 3, "ratio_mean": 0.8, "ratio_ci95": 0.1, "ratio_beyond": True, "seeds_not_reached": 0}
    text = _fig3_sentence(s3, c, sweep)
    assert "0.80 +- 0.10 (95% interval over the 3 seeds both reached it: differs from 1) [0.77]" in text
    assert "with misses counted" not in text

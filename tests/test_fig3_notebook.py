"""The Fig. 3 notebook runs headless with the smoke profile and writes its results and figure."""
from __future__ import annotations

from pathlib import Path

import pytest

from lrdnb.data import FASHION_MNIST_DIR
from lrdnb.profiles import profile_params
from lrdnb.results import read_results

NB = Path(__file__).resolve().parent.parent / "notebooks" / "fig3_sequential_vs_regular_freezing.ipynb"


@pytest.mark.notebooks
@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's Fashion-MNIST")
def test_notebook_smoke(tmp_path):
    import papermill

    params = profile_params(NB, "smoke") | {
        "data_dir": str(tmp_path / "data"), "figures_dir": str(tmp_path / "figures"),
        "checkpoint_dir": str(tmp_path / "ck"), "device": "cpu", "tag": "smoke",
    }
    papermill.execute_notebook(str(NB), str(tmp_path / "out.ipynb"), parameters=params, kernel_name="python3",
                               cwd=str(NB.parent), progress_bar=False)
    df, meta = read_results("fig3_convergence_smoke", tmp_path / "data")
    assert set(df.schedule) == {"regular", "sequential"} and len(df) == 2 * params["epochs"]
    assert list(df[df.schedule == "sequential"].frozen) == ["svd:first tucker2:first+last", "svd:last tucker2:core"]
    assert meta["params"]["model"] == "resnet10_cpu" and 0 <= meta["results"]["decomposed_acc"] <= 1
    summary, _ = read_results("fig3_summary_smoke", tmp_path / "data")
    assert list(summary.paper_epochs_to_target) == [26, 20]
    assert (tmp_path / "figures" / "fig3_sequential_vs_regular_freezing_smoke.png").stat().st_size > 1000
    assert len(list((tmp_path / "ck").glob("fig3_*.pt"))) == 3  # reference + one per schedule

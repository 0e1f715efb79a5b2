"""The README's "Use it on your model" snippet runs as written (on a smaller model and input)."""
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import lrdnb

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_readme_usage_snippet_runs(tmp_path, monkeypatch):
    block = re.search(r"## Use it on your model\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    small_inputs = {"torchvision.models.resnet50()": "torchvision.models.resnet18(num_classes=10)",
                    "torch.randn(16, 3, 64, 64)": "torch.randn(2, 3, 32, 32)"}
    for a, b in small_inputs.items():
        assert a in block, f"the README snippet changed: {a!r} not found"
        block = block.replace(a, b)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LRDNB_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    ns = {"train_data": data, "test_data": data}
    exec(compile(block, str(README), "exec"), ns)
    plan, small = ns["plan"], ns["small"]
    assert "rank_optimization" in plan.meta and plan.summary()["params_ratio"] < 0.7
    back, p2 = lrdnb.load("small.pt", ns["torchvision"].models.resnet18(num_classes=10))
    assert p2.to_dict() == plan.to_dict()
    for (n, a), (_, b) in zip(small.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    assert small.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)

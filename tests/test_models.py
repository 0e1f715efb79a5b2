"""Models by name; pretrained weights only from local files."""
from __future__ import annotations

import pytest
import torch

from lrdnb.models import CPU_MODELS, MODELS, get_model, hub_weights_file

BIG = {"resnet101", "resnet152", "vit_l_16"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in MODELS])
def test_every_model_builds_and_runs_small_inputs(name):
    size = 32
    m = get_model(name, num_classes=7, image_size=size).eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, size, size)).shape == (1, 7)


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="resnet50.*vit_b_16"):
        get_model("resnet51")


def test_cpu_variants_are_what_the_docs_say():
    r = get_model("resnet10_cpu", num_classes=10)
    assert [len(getattr(r, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert 4.5e6 < sum(p.numel() for p in r.parameters()) < 5.5e6
    v = get_model("vit_tiny_cpu", num_classes=10, image_size=32)
    assert (v.patch_size, len(v.encoder.layers), v.hidden_dim) == (4, 4, 192)
    with pytest.raises(ValueError, match="no torchvision weights"):
        get_model("resnet10_cpu", pretrained=True)


def test_pretrained_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        get_model("resnet18", pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_model("resnet18", weights_path=tmp_path / "none.pth")


def test_pretrained_from_hub_cache_replaces_head(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    src = get_model("resnet18")
    path = hub_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(src.state_dict(), path)
    m = get_model("resnet18", num_classes=10, pretrained=True)
    assert torch.equal(m.conv1.weight, src.conv1.weight) and m.fc.out_features == 10
    same = get_model("resnet18", num_classes=1000, pretrained=True)
    assert torch.equal(same.fc.weight, src.fc.weight)


def test_vit_weights_path_at_another_image_size(tmp_path):
    src = get_model("vit_tiny_cpu", num_classes=10, image_size=32)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    m = get_model("vit_tiny_cpu", num_classes=3, weights_path=tmp_path / "w.pt", image_size=64)
    assert m.encoder.pos_embedding.shape[1] == 1 + (64 // 4) ** 2
    assert torch.equal(m.conv_proj.weight, src.conv_proj.weight) and m.heads.head.out_features == 3
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_cpu_models_listed():
    assert set(CPU_MODELS) <= set(MODELS)

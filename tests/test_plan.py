"""Plans: layer discovery, methods, modes, quantization, selectors, JSON, bad input."""
import json

import pytest
import torch
import torchvision
from torch import nn

import lrdnb
from lrdnb.plan import LayerSpec, Plan, cost


@pytest.fixture(scope="module")
def r50():
    return torchvision.models.resnet50().eval()


X64 = torch.zeros(1, 3, 64, 64)


@pytest.mark.parametrize("mode,n", [("vanilla", 53), ("mode1", 17), ("mode2", 51), ("mode3", 45),
                                    ("mode4", 49), ("mode5", 37)])
def test_modes_resnet50(r50, mode, n):
    p = lrdnb.plan(r50, X64, mode=mode)
    names = {s.name for s in p.decomposed}
    assert len(names) == n
    assert "conv1" not in names  # the stem is outside the 4 blocks
    assert "fc" in names
    if mode == "mode1":
        assert all(p[x].kernel == (3, 3) for x in names - {"fc"})
    if mode == "mode2":
        assert "layer2.0.downsample.0" in names and "layer3.0.downsample.0" not in names
    if mode == "mode3":
        assert "layer4.0.conv1" not in names and "layer4.0.conv2" in names and "layer3.0.conv1" in names
    if mode == "mode4":
        assert not any("downsample" in x for x in names)
    if mode == "mode5":
        assert all(p[x].kernel == (1, 1) for x in names - {"fc"})
    kept = [s for s in p if s.name not in names]
    assert all(s.method == "keep" and s.reason for s in kept)


def test_mode_on_non_resnet_explains():
    with pytest.raises(ValueError, match="ResNets"):
        lrdnb.plan(torchvision.models.vit_b_16(), torch.zeros(1, 3, 224, 224), mode="mode1")
    with pytest.raises(ValueError, match="valid"):
        lrdnb.plan(torchvision.models.resnet18(), X64, mode="mode9")


def test_include_exclude_filter(r50):
    p = lrdnb.plan(r50, X64, include=["layer4.*"], exclude=["*.downsample.*"])
    names = {s.name for s in p.decomposed}
    assert names and all(n.startswith("layer4.") and "downsample" not in n for n in names)
    p = lrdnb.plan(r50, X64, filter_fn=lambda m, n: isinstance(m, nn.Linear))
    assert [s.name for s in p.decomposed] == ["fc"]


def test_quantize_and_final_fc(r50):
    p = lrdnb.plan(r50, X64, ratio=2, quantize=16, final_fc_ratio=1.3)
    for s in p.decomposed:
        assert all(r % 16 == 0 for r in s.ranks), s
    assert p["layer4.0.conv2"].ranks == [304, 304]
    # fc at 1.3x: floor(2048*1000 / (1.3 * 3048)) = 516 -> floored to 512
    assert p["fc"].ranks == [512]
    assert "quantized" in p["fc"].reason
    assert p.meta["final_fc"] == "fc"


def test_grouped_and_no_reduction_kept():
    m = torchvision.models.mobilenet_v3_small().eval()
    p = lrdnb.plan(m, torch.zeros(1, 3, 64, 64))
    dw = [s for s in p if s.groups > 1]
    assert dw and all(s.method == "keep" and "groups" in s.reason for s in dw)
    # 16 -> 8 1x1 conv: SVD at 2x gives r = 16*8/(2*24) = 2, fine; a 2x2 linear cannot shrink
    tiny = nn.Sequential(nn.Linear(2, 2))
    q = lrdnb.plan(tiny, torch.zeros(1, 2))
    assert q["0"].method == "keep" and "no reduction" in q["0"].reason


def test_fixed_ranks_and_selectors():
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    x = torch.zeros(1, 3, 32, 32)
    p = lrdnb.plan(m, x, selector="fixed", ranks={"layer4.1.conv2": (128, 96), "fc": 64})
    assert [s.name for s in p.decomposed] == ["layer4.1.conv2", "fc"]
    assert p["layer4.1.conv2"].ranks == [128, 96] and p["fc"].ranks == [64]
    with pytest.raises(ValueError, match="not in the model"):
        lrdnb.plan(m, x, ranks={"nope": 3})
    with pytest.raises(ValueError, match="outside"):
        lrdnb.plan(m, x, selector="fixed", ranks={"fc": 10_000})
    with pytest.raises(ValueError, match="selector"):
        lrdnb.plan(m, x, selector="magic")
    with pytest.raises(ValueError, match="needs ranks"):
        lrdnb.plan(m, x, selector="fixed")
    e = lrdnb.plan(m, x, selector="energy", energy=0.5)
    # random weights look like noise to VBMF: some unfoldings get rank 0, clamped to 1 with a warning
    with pytest.warns(UserWarning, match="VBMF estimated rank 0"):
        v = lrdnb.plan(m, x, selector="vbmf", vbmf_weakening=0.5)
        # weakening 0.5 keeps more rank than plain VBMF
        v1 = lrdnb.plan(m, x, selector="vbmf", vbmf_weakening=1.0)
    for q in (e, v):
        assert q.decomposed and all(1 <= r for s in q.decomposed for r in s.ranks)
    assert sum(sum(s.ranks) for s in v.decomposed) >= sum(sum(s.ranks) for s in v1.decomposed)


def test_json_roundtrip_and_edit(tmp_path, r50):
    p = lrdnb.plan(r50, X64)
    path = tmp_path / "plan.json"
    p.to_json(path)
    q = Plan.from_json(path)
    assert q.to_dict() == p.to_dict()
    assert Plan.from_json(p.to_json()).to_dict() == p.to_dict()
    # hand edit: a rank in the JSON changes the model built from it
    d = json.loads(path.read_text())
    for layer in d["layers"]:
        if layer["name"] == "layer4.0.conv2":
            layer["ranks"] = [256, 256]
    edited = Plan.from_dict(d)
    m = lrdnb.apply(r50, edited, weights="none")
    assert m.layer4[0].conv2.ranks == (256, 256)
    df = p.to_frame()
    assert len(df) == 54 and {"name", "method", "ranks", "reason"} <= set(df.columns)
    with pytest.raises(ValueError, match="unknown LayerSpec fields"):
        LayerSpec.from_dict({**p["fc"].to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="not a plan"):
        Plan.from_dict({"x": 1})


def test_with_ranks_recomputes_cost(r50):
    p = lrdnb.plan(r50, X64)
    s = p["layer4.0.conv2"].with_ranks([256, 256])
    assert s.params_after == 512 * 256 * 2 + 256 * 256 * 9
    assert (s.params_after, s.flops_after) == cost(s, "tucker2", [256, 256])
    assert s.signature == p["layer4.0.conv2"].signature  # signature ignores ranks


def test_input_shapes_recorded(r50):
    p = lrdnb.plan(r50, torch.zeros(2, 3, 64, 64))
    assert p["conv1"].input_shape == [2, 3, 64, 64]
    assert p["layer4.0.conv2"].input_shape == [2, 512, 4, 4]
    assert p["layer4.0.conv2"].output_shape == [2, 512, 2, 2]
    assert p["fc"].input_shape == [2, 2048]


def test_layers_reading_the_network_input_train_without_its_gradient(r50):
    # a ResNet's conv1 (and a ViT's patch projection) reads the batch itself: training computes
    # no gradient for its input, so its timed train pass must not either (its own signature)
    p = lrdnb.plan(r50, X64)
    assert [s.name for s in p if not s.input_grad] == ["conv1"]
    # its train/step timings are a curve of their own, its forward timings are the signature's
    assert p["conv1"].timed_signature("train") == p["conv1"].signature + "|ig=0"
    assert p["conv1"].timed_signature("forward") == p["conv1"].signature
    assert p["layer1.0.conv1"].timed_signature("train") == p["layer1.0.conv1"].signature
    vit = lrdnb.plan(torchvision.models.VisionTransformer(32, 16, 1, 2, 32, 64), torch.zeros(1, 3, 32, 32))
    assert [s.name for s in vit if not s.input_grad] == ["conv_proj"]
    # plans written before the field existed load as "input gradient computed"
    d = p["conv1"].to_dict()
    del d["input_grad"]
    assert LayerSpec.from_dict(d).input_grad is True
    # the layer timing honours it: no input gradient in the runner of such a layer
    from lrdnb.rankopt.measure import make_runner, shape_module

    spec = p["conv1"]
    x = torch.randn(spec.input_shape)
    for method, ranks in (("keep", []), ("svd", [8])):
        make_runner(shape_module(spec, method, ranks), spec.input_shape, "train", "cpu",
                    input_requires_grad=spec.input_grad, inputs=x)()
    assert not x.requires_grad and x.grad is None


def test_no_candidates():
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        lrdnb.plan(nn.Sequential(nn.ReLU()), torch.zeros(1, 3))

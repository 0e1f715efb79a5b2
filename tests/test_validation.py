"""Bad input never corrupts a model silently (issue 18): hand-edited plans, impossible ranks,
plans for other models, non-checkpoint files, non-modules, extreme ratios, multi-input models.

Each bad input asserts the exception type and that its message names the layer / field / path,
or that nothing changed."""
import copy
import dataclasses
import importlib
import os
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lrdnb
from lrdnb.plan import Plan

D = importlib.import_module("lrdnb.decompose")  # the module (lrdnb.decompose is the function)


class Net(nn.Module):
    """Four candidate layers: a 3-channel stem (SVD), two 3x3 convs (Tucker2), a classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(F.relu(self.conv3(x)).mean((2, 3)))


X = torch.randn(2, 3, 16, 16)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def net_plan(net):
    p = lrdnb.plan(net, X)
    assert [s.method for s in p] == ["svd", "tucker2", "tucker2", "svd"]
    return p


def _edited(p: Plan, layer: str, **fields) -> Plan:
    """``p`` with fields of one entry replaced, bypassing every check (as a hand edit would)."""
    q = copy.deepcopy(p)
    q[layer] = dataclasses.replace(q[layer], **fields)
    return q


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before, types):
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert [type(m) for m in model.modules()] == types


# -- 1. the model is the source of truth ---------------------------------------------------------

@pytest.mark.parametrize("name,field,value,model_value", [
    ("conv3", "stride", [2, 2], [1, 1]),
    ("conv3", "padding", [0, 0], [1, 1]),
    ("conv3", "padding", "same", [1, 1]),
    ("conv3", "dilation", [2, 2], [1, 1]),
    ("conv3", "padding_mode", "reflect", "zeros"),
    ("conv2", "bias", True, False),
    ("conv3", "groups", 2, 1),
    ("conv3", "weight_shape", [64, 64, 5, 5], [64, 64, 3, 3]),
    ("conv3", "kind", "linear", "conv2d"),
    ("fc", "bias", False, True),
])
def test_apply_refuses_entry_that_differs_from_its_layer(net, net_plan, name, field, value, model_value):
    bad = _edited(net_plan, name, **{field: value})
    with pytest.raises(ValueError) as e:
        lrdnb.apply(net, bad)
    msg = str(e.value)
    assert repr(name) in msg and field in msg and repr(value) in msg and repr(model_value) in msg


def test_hand_edited_json_with_other_stride_fails_on_apply(net, net_plan):
    d = net_plan.to_dict()
    d["layers"][2]["stride"] = [2, 2]
    with pytest.raises(ValueError, match=r"'conv3': stride is \[2, 2\] in the plan but \[1, 1\] in the model"):
        lrdnb.apply(net, Plan.from_json(Plan.from_dict(d).to_json()))


BAD_RANKS = [  # (layer, method, ranks, words the message must hold)
    ("conv3", "tucker2", [0, 8], ">= 1"),
    ("conv3", "tucker2", [64, 64], "not fewer than the original"),  # full rank: a larger layer
    ("conv3", "tucker2", [65, 8], "above the full rank 64"),  # more than C
    ("conv3", "tucker2", [8, 70], "above the full rank 64"),  # more than S
    ("conv3", "tucker2", [8], "takes 2 ranks"),
    ("conv3", "svd", [8, 8], "takes 1 rank"),  # one would be ignored
    ("conv3", "tucker2", [], "takes 2 ranks"),
    ("conv3", "tucker2", [8.0, 8], "integers"),
    ("conv3", "tucker2", ["8", 8], "integers"),
    ("conv3", "tucker2", [True, 8], "integers"),
    ("conv3", "tucker2", "8", "list of integers"),
    ("conv3", "cp", [8, 8], "unknown method 'cp'; valid"),
    ("conv3", "keep", [8], "takes 0 ranks"),
    ("fc", "svd", [10], "not fewer than the original"),
    ("fc", "svd", [11], "above the full rank 10"),
    ("fc", "tucker2", [4, 4], "tucker2 needs a conv2d"),
    ("conv1", "svd", [28], "above the full rank 27"),  # min(C k k, S) = min(27, 32)
]


@pytest.mark.parametrize("name,method,ranks,words", BAD_RANKS)
def test_bad_ranks_refused_on_load_and_apply(net, net_plan, name, method, ranks, words):
    d = net_plan.to_dict()
    entry = next(x for x in d["layers"] if x["name"] == name)
    entry["method"], entry["ranks"] = method, ranks
    with pytest.raises(ValueError) as e:
        Plan.from_dict(d)
    assert f"plan entry {name!r}" in str(e.value) and words in str(e.value)
    with pytest.raises(ValueError) as e:  # an in-memory edit reaches apply: refused there
        lrdnb.apply(net, _edited(net_plan, name, method=method, ranks=ranks))
    assert f"plan entry {name!r}" in str(e.value) and words in str(e.value)


def test_bad_plan_json(net_plan):
    with pytest.raises(ValueError, match="unknown kind 'conv4d'; valid"):
        Plan.from_dict({"layers": [{**net_plan["conv3"].to_dict(), "kind": "conv4d"}]})
    with pytest.raises(ValueError, match="'conv3' appears twice"):
        Plan.from_dict({"layers": [net_plan["conv3"].to_dict()] * 2})
    with pytest.raises(ValueError, match="plan entry 'conv3'.*weight_shape"):
        Plan.from_dict({"layers": [{k: v for k, v in net_plan["conv3"].to_dict().items() if k != "weight_shape"}]})
    with pytest.raises(ValueError, match="not a plan"):
        Plan.from_dict({"layers": "conv3"})


def test_fixed_ranks_checked(net):
    with pytest.raises(ValueError, match="'conv3'.*integers"):
        lrdnb.plan(net, X, selector="fixed", ranks={"conv3": (8.5, 8)})
    with pytest.raises(ValueError, match="'conv3'.*not fewer"):
        lrdnb.plan(net, X, selector="fixed", ranks={"conv3": (64, 64)})
    with pytest.raises(ValueError, match="'fc'.*>= 1"):
        lrdnb.plan(net, X, selector="fixed", ranks={"fc": 0})


def test_build_factorized_refuses_bad_ranks(net_plan):
    for ranks in ([0, 4], [4], [4.0, 4], [4, 4, 4]):
        with pytest.raises(ValueError, match="'conv3': tucker2 needs 2 integer ranks"):
            lrdnb.layers.build_factorized(net_plan["conv3"], ranks=ranks)


# -- 2. atomic apply -----------------------------------------------------------------------------

def test_failing_late_entry_leaves_model_unchanged(net, net_plan):
    before, types = _state(net), [type(m) for m in net.modules()]
    bad = _edited(net_plan, "fc", ranks=[0])  # the last entry; three valid ones before it
    with pytest.raises(ValueError, match="'fc'"):
        lrdnb.apply(net, bad, inplace=True)
    _assert_unchanged(net, before, types)


def test_failure_while_building_leaves_model_unchanged(net, net_plan, monkeypatch):
    before, types = _state(net), [type(m) for m in net.modules()]
    fill, target = D._fill, net.fc

    def fail_on_last(new, old, weights):
        if old is target:
            raise RuntimeError("factorization failed")
        fill(new, old, weights)

    monkeypatch.setattr(D, "_fill", fail_on_last)
    with pytest.raises(RuntimeError, match="factorization failed"):
        lrdnb.apply(net, net_plan, inplace=True)
    _assert_unchanged(net, before, types)
    monkeypatch.setattr(D, "_fill", fill)
    out = lrdnb.apply(net, net_plan, inplace=True)  # and the same call then succeeds
    assert out is net and lrdnb.layers.is_factorized(net.fc)


# -- 3. plans for another model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def r18_plan():
    return lrdnb.plan(torchvision.models.resnet18(), torch.zeros(1, 3, 32, 32))


def test_plan_for_smaller_model_warns_with_unmatched_layers(r18_plan):
    r34 = torchvision.models.resnet34().eval()
    with pytest.warns(UserWarning, match=r"no entry for \d+ layers of this ResNet: \['layer1.2.conv1'"):
        out = lrdnb.apply(r34, r18_plan, weights="none")
    assert lrdnb.layers.is_factorized(out.layer1[0].conv1) and isinstance(out.layer1[2].conv1, nn.Conv2d)
    with pytest.raises(ValueError, match="layer1.2.conv1"):
        lrdnb.apply(r34, r18_plan, weights="none", strict=True)


def test_plan_for_other_model_names_the_layer(r18_plan):
    with pytest.raises(ValueError, match=r"'layer1.0.conv1': weight_shape is \[64, 64, 3, 3\] in the plan but "
                                         r"\[64, 64, 1, 1\] in the model"):
        lrdnb.apply(torchvision.models.resnet50(), r18_plan, weights="none")


def test_entry_that_is_not_a_submodule(net, net_plan):
    q = copy.deepcopy(net_plan)
    q.layers.append(dataclasses.replace(net_plan["fc"], name="head.fc"))
    with pytest.raises(ValueError, match=r"\['head.fc'\] \(1\) are not submodules of this Net"):
        lrdnb.apply(net, q)
    q = _edited(net_plan, "fc", name="conv1.weight")
    with pytest.raises(ValueError, match="conv1.weight"):
        lrdnb.apply(net, q)
    relu = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    p = lrdnb.plan(relu, torch.zeros(1, 4))
    q = Plan([dataclasses.replace(p["0"], name="1")], {})
    with pytest.raises(ValueError, match="'1' is a linear layer, but the model's '1' is a ReLU"):
        lrdnb.apply(relu, q, strict=False)


# -- 5. clear errors -----------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path, net, net_plan):
    path = tmp_path / "net.pt"
    lrdnb.save(path, lrdnb.apply(net, net_plan), net_plan)
    return path


def test_load_of_non_checkpoints(tmp_path, saved):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError) as e:
        lrdnb.load(junk, Net())
    assert f"{junk} is not an lrdnb checkpoint" in str(e.value) and "weights_only" not in str(e.value)
    assert e.value.__suppress_context__ and e.value.__cause__ is None
    rng = random.Random(0)
    for i in range(200):  # random bytes used to leak the unpickler's IndexError / KeyError now and then
        junk.write_bytes(rng.randbytes(rng.randrange(1, 512)))
        with pytest.raises(ValueError, match="not an lrdnb checkpoint"):
            lrdnb.load(junk, Net())
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(ValueError, match=f"{empty} is empty"):
        lrdnb.load(empty, Net())
    pickled = tmp_path / "pickled_module.pt"
    torch.save(Net(), pickled)  # a whole pickled model: not loadable with weights_only
    with pytest.raises(ValueError, match="not an lrdnb checkpoint") as e:
        lrdnb.load(pickled, Net())
    assert "weights_only" not in str(e.value)
    with pytest.raises(FileNotFoundError):
        lrdnb.load(tmp_path / "missing.pt", Net())
    with pytest.raises(TypeError, match="architecture.*got NoneType"):
        lrdnb.load(saved, None)
    with pytest.raises(TypeError, match="got str"):
        lrdnb.load(saved, "resnet18")
    m, p = lrdnb.load(saved, Net())  # the good file still loads
    assert lrdnb.layers.is_factorized(m.conv3)


@pytest.mark.parametrize("bad", ["resnet18", Net().state_dict(), None])
def test_non_modules_rejected(bad, net_plan):
    name = type(bad).__name__
    for call in (lambda: lrdnb.plan(bad, X), lambda: lrdnb.decompose(bad, X), lambda: lrdnb.apply(bad, net_plan)):
        with pytest.raises(TypeError, match=f"nn.Module as model, got {name}"):
            call()
    if isinstance(bad, dict):
        with pytest.raises(TypeError, match="state_dict"):
            lrdnb.plan(bad, X)


def test_extreme_ratio_warns_once(net):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = lrdnb.plan(net, X, ratio=1e9)
    msgs = [str(x.message) for x in w if "rank 1" in str(x.message)]
    assert len(msgs) == 1 and "4 of 4 decomposed layers" in msgs[0] and "smaller ratio" in msgs[0]
    assert all(set(s.ranks) == {1} for s in p.decomposed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrdnb.plan(net, X, ratio=2)  # an ordinary ratio: silent


class Mixed(nn.Module):
    """Conv1d, Conv3d and ConvTranspose2d beside a Conv2d."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3)
        self.c3 = nn.Conv3d(2, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.c2 = nn.Conv2d(8, 32, 3, padding=1)

    def forward(self, seq, vol, img):
        return self.c1(seq).sum() + self.c3(vol).sum() + self.c2(self.up(img)).sum()


def test_other_convolutions_listed_as_kept():
    torch.manual_seed(0)
    m = Mixed()
    args = (torch.randn(2, 4, 10), torch.randn(2, 2, 4, 4, 4), torch.randn(2, 16, 4, 4))
    p = lrdnb.plan(m, example_args=args)
    assert [s.name for s in p] == ["c1", "c3", "up", "c2"]
    assert p["c3"].method == "keep"
    assert p["c3"].reason == "Conv3d: not supported (only Linear and Conv2d are decomposed)"
    assert p["c1"].kind == "conv1d" and "Conv1d: not supported" in p["c1"].reason
    assert p["up"].kind == "convtranspose2d" and "ConvTranspose2d" in p["up"].reason
    assert p["c3"].params_before == sum(q.numel() for q in m.c3.parameters())
    assert p["up"].params_before == sum(q.numel() for q in m.up.parameters())
    assert p["c3"].flops_before == 2 * m.c3.weight.numel() * 4 * 4 * 4
    assert [s.name for s in p.decomposed] == ["c2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer is listed: no unmatched-layer warning
        out = lrdnb.apply(m, Plan.from_json(p.to_json()))
    assert lrdnb.layers.is_factorized(out.c2) and type(out.c3) is nn.Conv3d
    with pytest.raises(ValueError, match="'c3': a conv3d layer is only kept"):
        lrdnb.apply(m, _edited(p, "c3", method="svd", ranks=[2]))


# -- 6. multi-input models -----------------------------------------------------------------------

class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 64), nn.Linear(48, 64)

    def forward(self, x, y, scale=1.0):
        return (self.a(x) + self.b(y)) * scale


class TakesList(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)

    def forward(self, images):
        assert isinstance(images, list)
        return [self.conv(i[None]) for i in images]


def test_example_args_and_kwargs():
    m = TwoInputs()
    x, y = torch.randn(2, 32), torch.randn(2, 48)
    for kw in ({"example_args": (x, y)}, {"example_args": (x,), "example_kwargs": {"y": y, "scale": 2.0}},
               {"example": (x, y)}, {"example": {"x": x, "y": y}}):
        p = lrdnb.plan(m, **kw)
        assert p["a"].input_shape == [2, 32] and p["b"].input_shape == [2, 48], kw
    small, p = lrdnb.decompose(m, example_args=(x, y))
    assert small(x, y).shape == (2, 64)
    with pytest.raises(TypeError, match="not both"):
        lrdnb.plan(m, (x, y), example_args=(x, y))
    with pytest.raises(TypeError, match="needs an example call"):
        lrdnb.plan(m)
    with pytest.raises(TypeError, match=r"example_args must be a tuple.*example_args=\(\[img\],\)"):
        lrdnb.plan(m, example_args=[x, y])


def test_a_list_example_is_one_argument():
    m, imgs = TakesList(), [torch.randn(3, 8, 8), torch.randn(3, 8, 8)]
    for kw in ({"example": imgs}, {"example": (imgs,)}, {"example_args": (imgs,)}):
        assert lrdnb.plan(m, **kw)["conv"].input_shape == [1, 3, 8, 8]
    with pytest.raises(TypeError) as e:  # a tuple is unpacked: the model's own error, with a hint
        lrdnb.plan(m, tuple(imgs))
    assert any("example_args=([img],)" in n for n in getattr(e.value, "__notes__", []))


def test_plan_of_a_decomposed_model_refused(net, net_plan):
    small = lrdnb.apply(net, net_plan)
    with pytest.raises(ValueError, match="'conv1'.*already decomposed"):
        lrdnb.apply(small, net_plan)


def _detector():
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64)


def test_detection_model_end_to_end(tmp_path):
    torch.manual_seed(0)
    det, img = _detector().eval(), torch.rand(3, 64, 64)
    before = _state(det)
    small, p = lrdnb.decompose(det, example_args=([img],))
    assert len(p.decomposed) > 40 and p.summary()["params_ratio"] < 0.6
    assert all(torch.equal(v, before[k]) for k, v in det.state_dict().items())  # original untouched
    small.eval()
    with torch.no_grad():
        out = small([img])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    small.train()
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    losses = small([img], targets)
    sum(losses.values()).backward()
    torch.optim.SGD(small.parameters(), lr=1e-3).step()
    small.eval()
    lrdnb.save(tmp_path / "det.pt", small, p)
    loaded, p2 = lrdnb.load(tmp_path / "det.pt", _detector())
    assert p2.to_dict() == p.to_dict()
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in loaded.state_dict().items())
    loaded.eval()
    with torch.no_grad():
        again, out = loaded([img]), small([img])
    assert all(torch.equal(a[k], b[k]) for a, b in zip(again, out) for k in a)

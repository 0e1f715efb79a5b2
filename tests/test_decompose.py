"""Decomposition: oracle tests against the dense torch layers they came from."""
import copy

import pytest
import torch
import torchvision
from hypothesis import given, settings, strategies as st
from torch import nn

import lrdnb
from lrdnb.decompose import factorize
from lrdnb.factors import svd_error_curve, svd_factors, tucker2_error_curve, tucker2_factors
from lrdnb.layers import FactorizedConv2d, FactorizedLinear, Tucker2Conv2d, factor_roles


class Wrap(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _full_ranks(layer, method):
    """The largest ranks of ``method`` for ``layer`` (where the factorization is exact)."""
    w = layer.weight
    c, s = w.shape[1], w.shape[0]
    kk = w[0, 0].numel()
    return [min(c * kk, s)] if method == "svd" else [c, s]


conv_cfg = st.fixed_dictionaries({
    "c": st.integers(1, 12), "s": st.integers(1, 12),
    "k": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "padding": st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.just("same")),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "bias": st.booleans(),
    "padding_mode": st.sampled_from(["zeros", "reflect", "circular", "replicate"]),
})


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's own note
@given(cfg=conv_cfg, method=st.sampled_from(["svd", "tucker2"]), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_full_rank_reproduces_conv(cfg, method, seed):
    torch.manual_seed(seed)
    if cfg["padding"] == "same":
        cfg["stride"] = (1, 1)  # torch: 'same' needs stride 1
    conv = nn.Conv2d(cfg["c"], cfg["s"], cfg["k"], stride=cfg["stride"], padding=cfg["padding"],
                     dilation=cfg["dilation"], bias=cfg["bias"], padding_mode=cfg["padding_mode"]).double()
    x = torch.randn(2, cfg["c"], 11, 9, dtype=torch.float64)
    # full rank is refused by apply (the layer would grow) but is the exact oracle here
    out = factorize(conv, method, _full_ranks(conv, method))
    assert isinstance(out, FactorizedConv2d if method == "svd" else Tucker2Conv2d)
    assert out.first.weight.dtype == torch.float64
    torch.testing.assert_close(out(x), conv(x), rtol=1e-4, atol=1e-8)


@given(i=st.integers(1, 40), o=st.integers(1, 40), bias=st.booleans(), seed=st.integers(0, 999))
@settings(max_examples=30, deadline=None)
def test_full_rank_reproduces_linear(i, o, bias, seed):
    torch.manual_seed(seed)
    lin = nn.Linear(i, o, bias=bias)
    x = torch.randn(3, 5, i)
    out = factorize(lin, "svd", [min(i, o)])
    assert isinstance(out, FactorizedLinear)
    torch.testing.assert_close(out(x), lin(x), rtol=1e-4, atol=1e-5)


def test_svd_truncation_is_eckart_young():
    torch.manual_seed(0)
    w = torch.randn(40, 30, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    for r in (1, 5, 17, 30):
        first, last = svd_factors(w, r)
        err = torch.linalg.matrix_norm(w - last @ first)
        torch.testing.assert_close(err, s[r:].pow(2).sum().sqrt(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(svd_error_curve(w)[r], err / torch.linalg.matrix_norm(w))


def test_tucker2_error_table_matches_hosvd():
    torch.manual_seed(0)
    w = torch.randn(12, 10, 3, 3, dtype=torch.float64)
    table = tucker2_error_curve(w)
    assert table.shape == (11, 13)
    for r1, r2 in [(3, 4), (10, 12), (7, 2)]:
        u_in, core, u_out = tucker2_factors(w, (r1, r2))
        rec = torch.einsum("oikl,so,ci->sckl", core, u_out, u_in)
        rel = torch.linalg.vector_norm(w - rec) / torch.linalg.vector_norm(w)
        torch.testing.assert_close(table[r1, r2], rel, rtol=1e-8, atol=1e-10)
    assert table[10, 12] < 1e-6
    # error is monotone non-increasing in each rank
    assert (table[1:, 1:].diff(dim=0) <= 1e-12).all() and (table[1:, 1:].diff(dim=1) <= 1e-12).all()


def test_hooi_not_worse_than_hosvd():
    torch.manual_seed(1)
    w = torch.randn(32, 24, 3, 3)

    def err(method):
        u_in, core, u_out = tucker2_factors(w, (8, 10), method=method)
        return torch.linalg.vector_norm(w - torch.einsum("oikl,so,ci->sckl", core, u_out, u_in))

    assert err("hooi") <= err("hosvd") * (1 + 1e-5)
    with pytest.raises(ValueError, match="hosvd"):
        tucker2_factors(w, (8, 10), method="cp")


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


def test_resnet50_ratio2_halves_params(resnet50):
    x = torch.randn(1, 3, 64, 64)
    p = lrdnb.plan(resnet50, x, ratio=2)
    summ = p.summary()
    assert abs(summ["params_ratio"] - 0.5) <= 0.05
    assert summ["decomposed"] == summ["layers"] == 54
    assert p["layer4.0.conv2"].method == "tucker2" and p["layer4.0.conv2"].ranks == [309, 309]
    assert p["fc"].method == "svd" and p["fc"].ranks == [335]
    assert p["layer1.0.conv1"].method == "svd"


def test_apply_resnet50_counts_and_outputs(resnet50):
    x = torch.randn(2, 3, 64, 64)
    before = copy.deepcopy(resnet50.state_dict())
    model, p = lrdnb.decompose(resnet50, x, ratio=2)
    # original untouched
    for k, v in resnet50.state_dict().items():
        assert torch.equal(v, before[k])
    assert isinstance(resnet50.layer4[0].conv2, nn.Conv2d)
    n_after = sum(q.numel() for q in model.parameters())
    n_before = sum(q.numel() for q in resnet50.parameters())
    expected = n_before - p.summary()["params_before"] + p.summary()["params_after"]
    assert n_after == expected
    roles = factor_roles(model.layer4[0].conv2)
    assert list(roles) == ["first", "core", "last"]
    assert list(factor_roles(model.fc)) == ["first", "last"]
    with torch.no_grad():
        y, y0 = model(x), resnet50(x)
    assert y.shape == y0.shape
    assert torch.isfinite(y).all()


def test_flops_match_flop_counter(resnet50):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 64, 64)
    p = lrdnb.plan(resnet50, x, ratio=2)
    model = lrdnb.apply(resnet50, p, weights="none")
    for m, key in ((resnet50, "flops_before"), (model, "flops_after")):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(x)
        conv_linear = sum(v for op, v in fc.get_flop_counts()["Global"].items()
                          if "convolution" in str(op) or "addmm" in str(op) or "mm" in str(op))
        assert conv_linear == sum(getattr(s, key) for s in p)


def test_save_load_roundtrip(tmp_path, resnet50):
    x = torch.randn(2, 3, 64, 64)
    model, p = lrdnb.decompose(resnet50, x, ratio=3, quantize=16)
    lrdnb.save(tmp_path / "m.pt", model, p)
    loaded, p2 = lrdnb.load(tmp_path / "m.pt", torchvision.models.resnet50())
    assert p2.to_dict() == p.to_dict()
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # weights_only loading works on the raw file
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(obj) == {"format", "plan", "state_dict"}


def test_load_rejects_other_files(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an lrdnb checkpoint"):
        lrdnb.load(tmp_path / "x.pt", torchvision.models.resnet18())


def test_apply_rejects_plan_for_other_model():
    x = torch.randn(1, 3, 32, 32)
    p = lrdnb.plan(torchvision.models.resnet18(), x)
    with pytest.raises(ValueError, match="another model"):
        lrdnb.apply(torchvision.models.resnet50(), p)
    with pytest.raises(ValueError, match="weights"):
        lrdnb.apply(torchvision.models.resnet18(), p, weights="svd++")
    with pytest.raises(TypeError, match="Plan"):
        lrdnb.apply(torchvision.models.resnet18(), p.to_dict())


def test_dtype_and_inplace():
    torch.manual_seed(0)
    m = Wrap(nn.Conv2d(16, 32, 3, padding=1)).double()
    x = torch.randn(1, 16, 8, 8, dtype=torch.float64)
    p = lrdnb.plan(m, x)
    out = lrdnb.apply(m, p, inplace=True)
    assert out is m and isinstance(m.layer, Tucker2Conv2d)
    assert all(q.dtype == torch.float64 for q in m.parameters())


def test_vit_b_16_mlp_and_patch_embedding():
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16().eval()
    x = torch.randn(1, 3, 224, 224)
    p = lrdnb.plan(vit, x, ratio=2)
    assert p["conv_proj"].method == "svd"  # 3-channel 16x16 patch embedding: flattened SVD
    assert p["encoder.layers.encoder_layer_0.mlp.0"].method == "svd"
    assert p["encoder.layers.encoder_layer_11.mlp.3"].method == "svd"
    out_proj = p["encoder.layers.encoder_layer_0.self_attention.out_proj"]
    assert out_proj.method == "keep" and "MultiheadAttention" in out_proj.reason
    p2 = lrdnb.plan(vit, x, ratio=2, include=["conv_proj", "encoder.*.mlp.*"])
    assert len(p2.decomposed) == 1 + 24
    model = lrdnb.apply(vit, p2)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)

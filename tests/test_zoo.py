"""Model zoo: plan -> apply -> forward -> freezing + one train step -> save/load on torchvision
families that differ in structure (residual, dense, depthwise/SE, inverted residual, ConvNeXt,
RegNet, Swin and ViT attention, Inception, Fire, channel shuffle, segmentation heads).

Small inputs (32-64 px, batch 2), random weights (nothing downloads). Invariants checked on
every model: output shape equal to the original's, fewer parameters, the original untouched,
frozen factors unchanged by an optimizer step, a bit-identical reload.
"""
import copy
import warnings

import pytest
import torch
import torchvision.models as tvm
import torchvision.models.segmentation as seg

import lrdnb
from lrdnb.freezing import RegularFreezing
from lrdnb.layers import is_factorized

pytestmark = pytest.mark.slow

#: name -> (constructor with random weights, input size in pixels)
ZOO = {
    "resnet18": (lambda: tvm.resnet18(num_classes=10), 32),
    "densenet121": (lambda: tvm.densenet121(num_classes=10), 32),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=10), 32),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=10), 32),
    "convnext_tiny": (lambda: tvm.convnext_tiny(num_classes=10), 32),
    "regnet_x_400mf": (lambda: tvm.regnet_x_400mf(num_classes=10), 32),
    "swin_t": (lambda: tvm.swin_t(num_classes=10), 32),
    # vit_b_16's structure (patch conv, encoder blocks with MultiheadAttention and MLPs) at toy width
    "vit": (lambda: tvm.VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
                                          num_classes=10), 32),
    "googlenet": (lambda: tvm.googlenet(num_classes=10, aux_logits=False, init_weights=True), 32),
    "squeezenet1_0": (lambda: tvm.squeezenet1_0(num_classes=10), 64),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(num_classes=10), 32),
    "deeplabv3_mobilenet_v3_large": (lambda: seg.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4), 64),
}


def _out(y):
    """The tensor output of a classifier or a segmentation model (``{"out": ...}``)."""
    return y["out"] if isinstance(y, dict) else y


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def _frozen_step(model, x):
    """Freeze factors (regular freezing), take one SGD step; the frozen and trained tensors."""
    RegularFreezing().apply(model, epoch=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4)
    model.train()
    y = _out(model(x))
    target = torch.zeros((y.shape[0],) + y.shape[2:], dtype=torch.long)  # class 0 everywhere
    torch.nn.functional.cross_entropy(y, target).backward()
    # batch 2 at 1x1 spatial: BN over two values can blow gradients up (random weights); clip them
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return frozen, trained


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo(name, tmp_path):
    make, size = ZOO[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, size, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y0 = _out(model(x))

    p = lrdnb.plan(model, x)
    assert p.decomposed, name
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the plan lists no entry")
        small = lrdnb.apply(model, p)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # original untouched
    assert _n_params(small) < _n_params(model)
    small.eval()
    with torch.no_grad():
        assert _out(small(x)).shape == y0.shape

    frozen, trained = _frozen_step(small, x)
    assert frozen and all(torch.equal(small.get_parameter(n), v) for n, v in frozen.items())
    assert any(not torch.equal(small.get_parameter(n), v) for n, v in trained.items())
    assert all(not p_.requires_grad for n, m in small.named_modules() if is_factorized(m)
               for p_ in m.first.parameters())

    small.eval()
    with torch.no_grad():
        y = _out(small(x))
    assert torch.isfinite(y).all()
    lrdnb.save(tmp_path / "m.pt", small, p)
    loaded, p2 = lrdnb.load(tmp_path / "m.pt", make())
    assert p2.to_dict() == p.to_dict()
    state = small.state_dict()
    assert list(loaded.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(_out(loaded(x)), y)

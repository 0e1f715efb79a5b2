"""Models by name: the paper's torchvision ResNets and ViTs, plus small variants for CPU runs.

Paper models (Hajimolahoseini et al. 2023, Section 3): ResNet-50/101/152 and ViT-B/16,
ImageNet-pretrained, fine-tuned on ImageNet or CIFAR-10. ``pretrained=True`` loads weights only
from local files (the torch hub cache or ``weights_path``); nothing is ever downloaded here.

Small variants for CPU runs (no pretrained weights exist for them):

========================  ===================================================================
``resnet10_cpu``          torchvision ``ResNet(BasicBlock, [1, 1, 1, 1])``: ResNet-18 with one
                          block per stage instead of two. Same stem, widths (64..512) and layer
                          types (3x3 convs -> Tucker2, 1x1 downsample + fc -> SVD); ~4.9 M
                          parameters, ~0.9 GFLOPs at 224 px.
``vit_tiny_cpu``          torchvision ``VisionTransformer`` with patch 4, 4 encoder layers, 3
                          heads, hidden 192, MLP 768 (ViT-B/16: patch 16, 12 layers, 12 heads,
                          768, 3072). Default ``image_size`` 32 (64 tokens + class token).
========================  ===================================================================

Any model also runs at a small ``image_size`` (e.g. ResNet-50 at 32 px: the same network, a
1x1 feature map after ``layer4``); that is the main CPU scale-down, and the one the notebooks use.

Example:
    >>> m = get_model("resnet10_cpu", num_classes=10)
    >>> m(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

__all__ = ["MODELS", "CPU_MODELS", "get_model", "hub_weights_file", "replace_head"]


def _vit(name: str, image_size: int, num_classes: int) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, image_size=image_size, num_classes=num_classes)


def _tv(name: str, image_size: int, num_classes: int) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def _resnet10_cpu(image_size: int, num_classes: int) -> nn.Module:
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)


def _vit_tiny_cpu(image_size: int, num_classes: int) -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=image_size, patch_size=4, num_layers=4, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=num_classes
    )


#: name -> builder(image_size, num_classes). Paper models first, CPU variants last.
MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    **{n: partial(_tv, n) for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    **{n: partial(_vit, n) for n in ("vit_b_16", "vit_b_32", "vit_l_16")},
    "resnet10_cpu": _resnet10_cpu,
    "vit_tiny_cpu": _vit_tiny_cpu,
}
CPU_MODELS = ("resnet10_cpu", "vit_tiny_cpu")


def hub_weights_file(name: str) -> Path:
    """Where torchvision keeps ``name``'s default ImageNet weights in the torch hub cache."""
    if name in CPU_MODELS or name not in MODELS:
        raise ValueError(f"no torchvision weights for {name!r}; models with weights: {[n for n in MODELS if n not in CPU_MODELS]}")
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the classifier for a freshly initialised one with ``num_classes`` outputs (in place)."""
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif hasattr(model, "heads") and isinstance(getattr(model.heads, "head", None), nn.Linear):
        model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
    else:
        raise ValueError(f"do not know the classifier of {type(model).__name__}; expected .fc or .heads.head")
    return model


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state_dict (got {type(obj).__name__})")
    return obj


def get_model(
    name: str,
    num_classes: int = 1000,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    image_size: int = 224,
) -> nn.Module:
    """Build a model by name, optionally with local pretrained weights.

    Args:
        name: one of :data:`MODELS` (``resnet50``, ``resnet101``, ``resnet152``, ``vit_b_16``, ...,
            ``resnet10_cpu``, ``vit_tiny_cpu``).
        num_classes: outputs of the classifier. With pretrained weights for another number of
            classes the classifier is replaced by a fresh one (the fine-tuning recipe).
        pretrained: load torchvision's default ImageNet weights from the torch hub cache
            (:func:`hub_weights_file`); never downloads.
        weights_path: a state_dict file (or ``{"state_dict": ...}``) to load instead; implies pretrained.
        image_size: input side; ViTs are built for it (pretrained position embeddings are
            interpolated), ResNets accept any size >= 32.

    Raises:
        ValueError: unknown name, or pretrained weights asked for a CPU variant.
        FileNotFoundError: pretrained weights are not on this machine (says where to put them).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {list(MODELS)}")
    want = pretrained or weights_path is not None
    if not want:
        return MODELS[name](image_size, num_classes)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"weights_path {path} does not exist")
    else:
        path = hub_weights_file(name)
        if not path.exists():
            url = torchvision.models.get_model_weights(name).DEFAULT.url
            raise FileNotFoundError(
                f"pretrained weights for {name!r} not found at {path}. lrdnb never downloads; on a machine "
                f"with internet run `python -c \"import torchvision; torchvision.models.{name}(weights='DEFAULT')\"` "
                f"(or fetch {url} into {path.parent}), or pass weights_path=..."
            )
    state = _load_state(path)
    head_key = next((k for k in ("fc.weight", "heads.head.weight") if k in state), None)
    classes = int(state[head_key].shape[0]) if head_key else num_classes
    model = MODELS[name](image_size, classes)
    if name.startswith("vit") and "encoder.pos_embedding" in state:
        n_pos = state["encoder.pos_embedding"].shape[1]
        if n_pos != model.encoder.pos_embedding.shape[1]:
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(image_size, model.patch_size, dict(state))
    model.load_state_dict(state)
    if classes != num_classes:
        replace_head(model, num_classes)
    return model

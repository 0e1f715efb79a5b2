"""The published numbers of Hajimolahoseini et al. 2023 (sequential freezing and rank optimization).

Tables 1-4 transcribed exactly from the paper's text, as tidy DataFrames keyed like our results
(``model`` as in :data:`lrdnb.models.MODELS`, ``method`` as in
:data:`lrdnb.experiments.variants.METHODS`), so a notebook can put them next to ours:

* :func:`table1` - training / inference images/s and delta % (ResNet-50/101/152, V100, 2x).
* :func:`table2` - decomposition time in seconds (vanilla LRD, rank optimization, freezing).
* :func:`table3` - ImageNet / CIFAR-10 accuracy and training speed-up (ResNets, V100).
* :func:`table4` - ViT(-B/16) CIFAR-10 accuracy and training images/s (Ascend 910 NPU).
* :data:`FIG2` - the step of Fig. 2 (Tucker2 of a [512, 512, 3, 3] conv on a V100).
* :data:`FIG3` - Fig. 3's epochs to 95% and final accuracies (ResNet-50, CIFAR-10).

Every function returns a fresh copy; :data:`SOURCE` says where the numbers come from.

Example:
    >>> t1 = table1()
    >>> t1.query("model == 'resnet50' and method == 'combined'")["train_delta_pct"].item()
    45.95
"""
from __future__ import annotations

import pandas as pd

__all__ = ["SOURCE", "METHOD_LABELS", "MODEL_LABELS", "FIG2", "FIG3", "table1", "table2", "table3", "table4", "paper_tables"]

SOURCE = ("Hajimolahoseini, Ahmed, Liu (2023): Training acceleration of low-rank decomposed networks "
          "using sequential freezing and rank quantization; Tables 1-4")
#: our method keys -> the paper's row labels.
METHOD_LABELS = {"original": "Original", "lrd": "LRD", "rank_opt": "Rank Opt.", "freezing": "Freezing",
                 "combined": "Combined"}
MODEL_LABELS = {"resnet50": "ResNet-50", "resnet101": "ResNet-101", "resnet152": "ResNet-152",
                "vit_b_16": "ViT-B/16"}
_METHODS = tuple(METHOD_LABELS)

# Table 1 (V100, 2x compression): train fps, train delta %, infer fps, infer delta %.
_T1 = {
    "resnet50": [(346, 0.0, 1232, 0.0), (367, 6.07, 1316, 6.82), (432, 24.86, 1560, 26.62),
                 (431, 24.57, 1316, 6.82), (505, 45.95, 1560, 26.62)],
    "resnet101": [(207, 0.0, 713, 0.0), (227, 9.66, 788, 10.52), (282, 36.23, 982, 37.73),
                  (269, 29.95, 788, 10.52), (332, 60.39, 982, 37.73)],
    "resnet152": [(145, 0.0, 510, 0.0), (162, 11.73, 577, 13.14), (201, 38.62, 694, 36.08),
                  (191, 31.72, 577, 13.14), (232, 60.00, 694, 36.08)],
}
# Table 2 (NVIDIA GPUs): seconds for vanilla LRD, rank optimization, freezing.
_T2 = {"resnet50": (30, 264, 30), "resnet101": (164, 489, 164), "resnet152": (232, 716, 232)}
# Table 3 (V100): ImageNet top-1 %, CIFAR-10 %, training speed-up %.
_T3 = {
    "resnet50": [(76.13, 96.40, 0.0), (76.67, 96.01, 6.07), (76.51, 95.93, 24.86), (76.34, 95.14, 24.57),
                 (75.96, 94.28, 45.95)],
    "resnet101": [(77.37, 97.60, 0.0), (76.94, 97.54, 9.66), (76.88, 97.46, 36.23), (76.84, 97.37, 29.95),
                  (76.01, 96.65, 60.39)],
    "resnet152": [(78.31, 98.72, 0.0), (77.91, 98.64, 11.73), (77.87, 98.49, 38.62), (77.83, 98.12, 31.72),
                  (77.05, 97.29, 60.00)],
}
# Table 4 (Ascend 910, ViT with 12 transformer modules, CIFAR-10): accuracy %, train fps, speed-up %.
_T4 = [(98.22, 1232, 0.0), (98.12, 1377, 11.79), (98.08, 1607, 30.44), (97.87, 1561, 26.73), (97.24, 1745, 41.67)]

#: Fig. 2 (V100, ResNet-152's [512, 512, 3, 3] conv, Tucker2): the time drops 15% from rank 257 to 256
#: and hardly changes from 270 down to 242; Algorithm 1 picks 256.
FIG2 = {"weight_shape": [512, 512, 3, 3], "rank": 256, "step_from": 257, "step_to": 256, "step_pct": 15.0,
        "flat_from": 270, "flat_to": 242, "device": "NVIDIA V100"}
#: Fig. 3 (V100, ResNet-50, CIFAR-10, 30 epochs): epoch reaching 95% and final accuracy per schedule.
FIG3 = {"target_acc": 0.95, "epochs": 30, "device": "NVIDIA V100",
        "sequential": {"epochs_to_target": 20, "final_acc": 0.9546},
        "regular": {"epochs_to_target": 26, "final_acc": 0.9527}}


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df.insert(2, "label", df["method"].map(METHOD_LABELS))
    return df


def table1() -> pd.DataFrame:
    """Table 1: ``model, method, label, train_img_s, train_delta_pct, infer_img_s, infer_delta_pct, device``."""
    return _frame([{"model": m, "method": k, "train_img_s": float(r[0]), "train_delta_pct": r[1],
                    "infer_img_s": float(r[2]), "infer_delta_pct": r[3], "device": "NVIDIA V100"}
                   for m, rows in _T1.items() for k, r in zip(_METHODS, rows)])


def table2() -> pd.DataFrame:
    """Table 2: ``model, lrd_s, rank_opt_s, freezing_s, device`` (seconds to decompose)."""
    return pd.DataFrame([{"model": m, "lrd_s": float(a), "rank_opt_s": float(b), "freezing_s": float(c),
                          "device": "NVIDIA GPU"} for m, (a, b, c) in _T2.items()])


def table3() -> pd.DataFrame:
    """Table 3: ``model, method, label, imagenet_acc, cifar10_acc, train_speedup_pct, device``."""
    return _frame([{"model": m, "method": k, "imagenet_acc": r[0], "cifar10_acc": r[1],
                    "train_speedup_pct": r[2], "device": "NVIDIA V100"}
                   for m, rows in _T3.items() for k, r in zip(_METHODS, rows)])


def table4() -> pd.DataFrame:
    """Table 4: ``model (vit_b_16), method, label, cifar10_acc, train_img_s, train_speedup_pct, device``.

    The paper's ViT has 12 transformer modules (ViT-B/16 in torchvision terms); its "Org" row is
    ``original`` here.
    """
    return _frame([{"model": "vit_b_16", "method": k, "cifar10_acc": r[0], "train_img_s": float(r[1]),
                    "train_speedup_pct": r[2], "device": "Huawei Ascend 910"} for k, r in zip(_METHODS, _T4)])


def paper_tables() -> dict[str, pd.DataFrame]:
    """All four tables by name (``table1`` .. ``table4``)."""
    return {"table1": table1(), "table2": table2(), "table3": table3(), "table4": table4()}

"""A stand-in ``torchvision`` for importing the reference's automatic mask generator in tests.

``sam2.automatic_mask_generator`` imports torchvision's ``batched_nms`` / ``box_area`` and
``sam2.utils.transforms`` its ``ToTensor`` / ``Resize`` / ``Normalize``; torchvision is not a dependency (and
PyPI's compiled ops do not load with our CPU torch). These stand-ins compute what torchvision computes for
the reference's calls: CPU NMS (stable sort by decreasing score, suppress IoU > threshold; written here as a
plain loop, independently of napari_sam2's own NMS), uint8 HWC -> float CHW / 255, antialiased bilinear
resize of a tensor, and mean / std normalisation.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    b = boxes.tolist()
    area = [float(np.float32((x1 - x0) * (y1 - y0))) for x0, y0, x1, y1 in b]
    suppressed = [False] * len(b)
    keep = []
    for n, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[n + 1:]:
            if suppressed[j]:
                continue
            w = max(0.0, float(np.float32(min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))))
            h = max(0.0, float(np.float32(min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))))
            inter = np.float32(w * h)
            union = np.float32(np.float32(area[i] + area[j]) - inter)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.float32(inter / union)
            if float(iou) > iou_threshold:
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    assert bool((idxs == idxs[0]).all()) if len(idxs) else True, "the stand-in handles one category only"
    return nms(boxes.float(), scores, iou_threshold)


class ToTensor:
    def __call__(self, pic: np.ndarray) -> torch.Tensor:
        assert pic.dtype == np.uint8 and pic.ndim == 3
        return torch.from_numpy(pic.transpose(2, 0, 1)).contiguous().float().div(255)


class Resize(nn.Module):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(s) for s in size]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return F.interpolate(img.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False,
                             antialias=True).squeeze(0)


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=img.dtype, device=img.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=img.dtype, device=img.device).view(-1, 1, 1)
        return (img - mean) / std


@contextmanager
def reference_generator_module() -> Iterator[types.ModuleType]:
    """``sam2.automatic_mask_generator`` imported with the stand-in torchvision; afterwards the stand-in and
    the reference modules imported with it are removed from ``sys.modules`` again."""
    pytest.importorskip("sam2.build_sam", reason="reference sam2==1.1.0 not installed")
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    transforms = types.ModuleType("torchvision.transforms")
    boxes.batched_nms, boxes.box_area, boxes.nms = batched_nms, box_area, nms
    ops.boxes, ops.batched_nms, ops.box_area, ops.nms = boxes, batched_nms, box_area, nms
    transforms.ToTensor, transforms.Resize, transforms.Normalize = ToTensor, Resize, Normalize
    tv.ops, tv.transforms = ops, transforms
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        for name, module in (("torchvision", tv), ("torchvision.ops", ops), ("torchvision.ops.boxes", boxes),
                             ("torchvision.transforms", transforms)):
            patch.setitem(sys.modules, name, module)
        import sam2.automatic_mask_generator as amg

        try:
            yield amg
        finally:
            for name in set(sys.modules) - before:
                if name.startswith("sam2"):
                    del sys.modules[name]

"""Where a tracking session keeps what it remembers between frames: results, spatial memories, pointers.

Three kinds of tensors, with different sizes and lifetimes:

* **results** (low-res logits and object scores, 257 KiB per object and frame at image size 1024) are kept
  for every frame of the movie and read back on the host to write labels: they live on the host.
* **spatial memories** (512 KiB each at image size 1024, bf16) are bounded: the prompted frames plus the
  few tracked frames that memory attention reads next (see :mod:`~napari_sam2.engine.memory_bank`).
* **object pointers** (1 KiB per object and frame) are read 16 at a time on every frame.

Memory attention reads memories and pointers on every frame, so on an accelerator they stay on the device
while their bound fits the session's device budget (by default a quarter of the GPU's memory); past it
they go to page-locked ("pinned") host memory, from which the per-frame copy to the GPU is a fast
asynchronous DMA instead of a staged copy from pageable memory. Results go to ordinary host memory, one copy
per batch. An explicit ``storage_device`` keeps everything there, as before. The decision is taken each time prompts are committed (a propagation starts),
from the bound for the objects and frames then known: tensors already stored stay where they are.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..model.memory_selection import NUM_MASKMEM
from .object_state import TrackedObject

HOST = torch.device("cpu")
DEVICE_BUDGET_FRACTION = 0.25  # of an accelerator's total memory, for memories and pointers


class Storage:
    """Places a session's results, memories and pointers (see the module docstring).

    ``device`` is where the model runs; ``storage_device`` None means "decide" (accelerator while the
    bound fits ``budget_bytes``, else pinned host), a device means "everything there". ``bf16_on_device``
    says whether the device can hold bfloat16 tensors (not MPS before macOS 14): memories are rounded to
    bf16 as the reference does, on the device where it can, else after moving to the host.
    """

    def __init__(self, device: torch.device, storage_device: torch.device | None, bf16_on_device: bool = True,
                 budget_bytes: int | None = None) -> None:
        if storage_device is not None and storage_device.type == "mps" and not bf16_on_device:
            raise ValueError("this Mac cannot hold bfloat16 tensors on the GPU (MPS needs macOS 14 for that): "
                             "use storage_device='cpu' or leave it unset")
        self.device = device
        self.explicit = storage_device
        self.bf16_on_device = bf16_on_device
        self.budget_bytes = default_budget(device) if budget_bytes is None else int(budget_bytes)
        self.results_device = storage_device if storage_device is not None else HOST
        self.memory_device = storage_device if storage_device is not None else self._preferred_memory_device()

    # ------------------------------------------------------------------ decisions
    def _preferred_memory_device(self) -> torch.device:
        on_accelerator = self.device.type != "cpu" and self.bf16_on_device
        return self.device if on_accelerator and self.budget_bytes > 0 else HOST

    def plan(self, objects: Iterable[TrackedObject], num_frames: int, memory_bytes: int,
             pointer_bytes: int) -> torch.device:
        """Choose where new memories and pointers go, from their bound for ``objects`` over ``num_frames``
        frames; returns that device. Only when the placement is automatic."""
        if self.explicit is None:
            needed = memory_bound(objects, num_frames, memory_bytes, pointer_bytes)
            preferred = self._preferred_memory_device()
            self.memory_device = preferred if needed <= self.budget_bytes else HOST
        return self.memory_device

    @property
    def pins(self) -> bool:
        """Whether host copies are page-locked (only worth it, and only possible, with a CUDA device)."""
        return self.device.type == "cuda"

    # ------------------------------------------------------------------ placing tensors
    # Each takes a batch (B, ...) and returns B tensors of one row each, every one owning its storage, so that
    # one object's memory can be dropped on its own.
    def results(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Result rows (logits, object scores) as kept: float32 on the results device. One copy for the batch;
        never pinned (results are kept for every frame and read on the host, not uploaded)."""
        placed = batch.float().to(self.results_device)
        return [placed[i:i + 1].clone() for i in range(placed.shape[0])]

    def pointers(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Object pointer rows as kept: float32 where memories go."""
        return self._rows(batch.float(), self.memory_device)

    def memories(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Spatial memory rows as kept: rounded to bfloat16 (part of SAM 2's numerics), where memories go."""
        if batch.device.type == "cpu" or self.bf16_on_device:
            return self._rows(batch.to(torch.bfloat16), self.memory_device)
        return [row.to(torch.bfloat16) for row in self._rows(batch, HOST)]

    def _rows(self, batch: torch.Tensor, where: torch.device) -> list[torch.Tensor]:
        if where.type == "cpu" and self.pins and batch.device.type != "cpu":
            # One page-locked buffer per row (a clone would not be page-locked), filled from the device.
            return [torch.empty((1, *batch.shape[1:]), dtype=batch.dtype, pin_memory=True).copy_(batch[i:i + 1])
                    for i in range(batch.shape[0])]
        placed = batch.to(where)
        return [placed[i:i + 1].clone() for i in range(placed.shape[0])]

    def describe(self) -> str:
        """One line for logs and benchmarks, e.g. "memories and pointers on cuda:0, results on cpu"."""
        memory = f"pinned {self.memory_device}" if self.memory_device.type == "cpu" and self.pins \
            else str(self.memory_device)
        return f"memories and pointers on {memory}, results on {self.results_device}"


def memory_bound(objects: Iterable[TrackedObject], num_frames: int, memory_bytes: int, pointer_bytes: int) -> int:
    """Most bytes the memories and pointers of ``objects`` can take: each prompted frame's memory plus the
    tracked memories kept near the current frame and the run's start (2 x NUM_MASKMEM), and one pointer
    per frame of the movie."""
    total = 0
    for obj in objects:
        prompted = len(obj.cond.keys() | obj.pending.keys())
        total += (prompted + 2 * NUM_MASKMEM) * memory_bytes + num_frames * pointer_bytes
    return total


def default_budget(device: torch.device) -> int:
    """Bytes of an accelerator's memory that memories and pointers may take (0 on the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * DEVICE_BUDGET_FRACTION)
    if device.type == "mps":
        recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
        return int(recommended() * DEVICE_BUDGET_FRACTION) if recommended is not None else 2 ** 31
    return 0

"""Where a session keeps results, memories and pointers (engine/storage.py)."""

from __future__ import annotations

import pytest
import torch
from session_support import cells_movie

from napari_sam2 import TrackingSession
from napari_sam2.engine.object_state import FrameResult, TrackedObject
from napari_sam2.engine.storage import HOST, Storage, memory_bound

MEMORY, POINTER = 64 * 8 * 8 * 2, 1024  # bytes at image size 128


def objects_with_prompts(*prompted_frames: int) -> list[TrackedObject]:
    result = FrameResult(torch.zeros(1, 1, 2, 2), torch.zeros(1, 256), torch.zeros(1, 1), True)
    objects = []
    for obj_id, frames in enumerate(prompted_frames, start=1):
        obj = TrackedObject(obj_id)
        obj.cond.update({t: result for t in range(frames)})
        objects.append(obj)
    return objects


def test_memory_bound_counts_prompted_frames_kept_memories_and_every_frames_pointer():
    objects = objects_with_prompts(1, 3)
    objects[0].pending[5] = objects[0].cond[0]
    # (1 + 1 pending + 14) + (3 + 14) memories, and 10 pointers per object.
    assert memory_bound(objects, 10, MEMORY, POINTER) == (16 + 17) * MEMORY + 2 * 10 * POINTER


def test_memories_stay_on_the_accelerator_while_their_bound_fits_the_budget():
    cuda = torch.device("cuda")  # only decisions here: no CUDA tensor is made
    fits = memory_bound(objects_with_prompts(1, 1), 100, MEMORY, POINTER)
    storage = Storage(cuda, None, budget_bytes=fits)
    assert storage.memory_device == cuda and storage.results_device == HOST
    assert storage.plan(objects_with_prompts(1, 1), 100, MEMORY, POINTER) == cuda
    assert storage.plan(objects_with_prompts(1, 1, 1), 100, MEMORY, POINTER) == HOST  # one object too many
    assert storage.plan(objects_with_prompts(1), 100, MEMORY, POINTER) == cuda  # and back once it fits
    assert storage.pins and "pinned cpu" in Storage(cuda, None, budget_bytes=0).describe()


def test_an_explicit_storage_device_keeps_everything_there():
    storage = Storage(torch.device("cuda"), HOST, budget_bytes=10 ** 12)
    assert storage.plan(objects_with_prompts(1), 10, MEMORY, POINTER) == HOST
    assert storage.results_device == HOST


def test_mps_without_bf16_keeps_memories_on_the_host():
    storage = Storage(torch.device("mps"), None, bf16_on_device=False, budget_bytes=10 ** 12)
    assert storage.memory_device == HOST
    assert storage.plan(objects_with_prompts(1), 10, MEMORY, POINTER) == HOST
    with pytest.raises(ValueError, match="macOS 14.*storage_device='cpu'"):
        Storage(torch.device("mps"), torch.device("mps"), bf16_on_device=False)


def test_on_the_cpu_everything_is_on_the_host_and_memories_are_bf16(model):
    session = TrackingSession(model, cells_movie(3), contrast_limits=(0, 4000))
    assert session.storage.memory_device == HOST and not session.storage.pins
    session.add_points(0, 1, [(30, 25)], [1])
    list(session.propagate())
    obj = session._objects[1]
    for result in [*obj.cond.values(), *obj.tracked.values()]:
        assert result.raw_logits.device == result.obj_ptr.device == HOST
        assert result.raw_logits.dtype == result.obj_ptr.dtype == torch.float32
    assert all(r.maskmem is None or r.maskmem.dtype == torch.bfloat16 for r in obj.tracked.values())


@pytest.mark.cuda
def test_cuda_memories_on_the_gpu_or_in_pinned_host_memory(model):
    movie = cells_movie(4)
    outputs = {}
    for budget in (None, 0):
        session = TrackingSession(model, movie, contrast_limits=(0, 4000), device="cuda", precision="fp32")
        if budget is not None:
            session.storage.budget_bytes = budget
        session.add_points(0, 1, [(30, 25)], [1])
        outputs[budget] = [logits for _, _, logits in session.propagate()]
        obj = session._objects[1]
        memories = [r.maskmem for r in obj.tracked.values() if r.maskmem is not None]
        assert all(r.raw_logits.device == HOST for r in obj.tracked.values())
        if budget is None:
            assert all(m.device.type == "cuda" for m in memories)
        else:
            assert all(m.device == HOST and m.is_pinned() for m in memories)
            assert all(r.obj_ptr.is_pinned() for r in obj.tracked.values())
    for on_gpu, pinned in zip(outputs[None], outputs[0], strict=True):
        assert (on_gpu == pinned).all()

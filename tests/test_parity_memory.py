"""Parity of our memory encoder and memory attention with Meta's reference (random weights, CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_same_computation
from reference_support import max_abs_diff, reference_with_random_weights

from napari_sam2.model import memory_attention
from napari_sam2.model.memory_attention import MemoryAttention, RoPEAttention
from napari_sam2.model.memory_encoder import MemoryEncoder
from napari_sam2.model.memory_padding import MemoryCapacity, pad_memory
from napari_sam2.model.rope import rotate_pairs

CONFIG = "sam2.1_hiera_t"
TOL = 1e-4
_REFERENCES: dict[int, tuple] = {}


def reference(image_size: int):
    """(reference predictor, random state dict) for one image size, built once per test session."""
    if image_size not in _REFERENCES:
        _REFERENCES[image_size] = reference_with_random_weights(CONFIG, image_size=image_size, seed=0)
    return _REFERENCES[image_size]


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix.`` with the prefix stripped."""
    start = prefix + "."
    return {k[len(start):]: v for k, v in state_dict.items() if k.startswith(start)}


def ours(module_cls: type[torch.nn.Module], prefix: str, state_dict: dict[str, torch.Tensor]):
    module = module_cls()
    module.load_state_dict(sub_state_dict(state_dict, prefix), strict=True)
    return module.eval()


@pytest.mark.reference
@pytest.mark.parametrize("prefix, module_cls", [("memory_encoder", MemoryEncoder),
                                                ("memory_attention", MemoryAttention)])
def test_state_dict_keys_and_shapes(prefix, module_cls):
    ref, _ = reference(1024)
    expected = {k: tuple(v.shape) for k, v in getattr(ref, prefix).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in module_cls().state_dict().items()}
    assert got == expected


@pytest.mark.reference
@pytest.mark.parametrize("image_size", [1024, 256])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("skip_mask_sigmoid", [False, True])
@torch.no_grad()
def test_memory_encoder_parity(image_size, batch, skip_mask_sigmoid):
    ref, sd = reference(image_size)
    model = ours(MemoryEncoder, "memory_encoder", sd)
    feat_size = image_size // 16
    gen = torch.Generator().manual_seed(1000 * batch + image_size)
    pix_feat = torch.randn(batch, 256, feat_size, feat_size, generator=gen)
    logits = 4.0 * torch.randn(batch, 1, image_size, image_size, generator=gen)
    # What the model feeds with skip_mask_sigmoid: binarised mask scaled to +-10.
    masks = (logits > 0).float() * 20.0 - 10.0 if skip_mask_sigmoid else logits

    expected = ref.memory_encoder(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
    got = model(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)

    assert got["vision_features"].shape == (batch, 64, feat_size, feat_size)
    assert len(got["vision_pos_enc"]) == 1
    feat_diff = max_abs_diff(got["vision_features"], expected["vision_features"])
    pos_diff = max_abs_diff(got["vision_pos_enc"][0], expected["vision_pos_enc"][0])
    print(f"memory encoder {image_size=} {batch=} {skip_mask_sigmoid=}: "
          f"features {feat_diff:.2e}, pos {pos_diff:.2e}")
    assert feat_diff <= TOL
    assert pos_diff <= TOL


def memory_inputs(grid: int, batch: int, num_frames: int, num_pointers: int, gen: torch.Generator):
    """Sequence-first inputs as the model builds them; spatial memories are bf16-rounded like stored ones."""
    hw = grid * grid
    curr = torch.randn(hw, batch, 256, generator=gen)
    curr_pos = torch.randn(hw, batch, 256, generator=gen)
    spatial = torch.randn(num_frames * hw, batch, 64, generator=gen).to(torch.bfloat16).float()
    pointers = torch.randn(4 * num_pointers, batch, 64, generator=gen)
    memory = torch.cat([spatial, pointers])
    memory_pos = torch.randn(memory.shape, generator=gen)
    return curr, curr_pos, memory, memory_pos, 4 * num_pointers


# Every case at the 16 x 16 grid (256 px images); at 64 x 64 only the richest one with batch 1, since a
# 4096 x 12304 attention in 4 layers costs ~7 s per model on 2 CPU cores.
ATTENTION_CASES = [
    pytest.param(16, 1, 1, 0, id="grid16-1frame-noptr-b1"),
    pytest.param(16, 2, 1, 0, id="grid16-1frame-noptr-b2"),
    pytest.param(16, 1, 3, 4, id="grid16-3frames-4ptr-b1"),
    pytest.param(16, 2, 3, 4, id="grid16-3frames-4ptr-b2"),
    pytest.param(64, 1, 3, 4, id="grid64-3frames-4ptr-b1"),
]


@pytest.mark.reference
@pytest.mark.parametrize("grid, batch, num_frames, num_pointers", ATTENTION_CASES)
@torch.no_grad()
def test_memory_attention_parity(grid, batch, num_frames, num_pointers):
    image_size = 16 * grid
    ref, sd = reference(image_size)
    model = ours(MemoryAttention, "memory_attention", sd)
    gen = torch.Generator().manual_seed(grid + 10 * num_frames)
    curr, curr_pos, memory, memory_pos, num_ptr_tokens = memory_inputs(grid, batch, num_frames,
                                                                        num_pointers, gen)

    expected = ref.memory_attention(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                                    num_obj_ptr_tokens=num_ptr_tokens)
    got = model(curr, memory, curr_pos=curr_pos, memory_pos=memory_pos, num_obj_ptr_tokens=num_ptr_tokens)

    assert got.shape == (grid * grid, batch, 256)
    diff = max_abs_diff(got, expected)
    print(f"memory attention {grid=} {batch=} {num_frames=} {num_pointers=}: {diff:.2e}")
    assert diff <= TOL


@torch.no_grad()
def test_memory_attention_accepts_bf16_memory():
    """bf16 memory gives the same result as its fp32 upcast (the reference would raise in plain fp32)."""
    torch.manual_seed(0)
    model = MemoryAttention().eval()
    gen = torch.Generator().manual_seed(7)
    curr, curr_pos, memory, memory_pos, _ = memory_inputs(8, 1, 2, 0, gen)
    upcast = model(curr, memory, curr_pos=curr_pos, memory_pos=memory_pos)
    stored = model(curr, memory.to(torch.bfloat16), curr_pos=curr_pos, memory_pos=memory_pos)
    assert stored.dtype == torch.float32
    assert torch.equal(stored, upcast)


@torch.no_grad()
def test_rope_pointer_tokens_are_not_rotated():
    """Pointer tokens carry no position: permuting them (with their values) must not change the output."""
    torch.manual_seed(0)
    model = MemoryAttention(num_layers=1).eval()
    gen = torch.Generator().manual_seed(3)
    curr, curr_pos, memory, memory_pos, n_ptr = memory_inputs(8, 1, 2, 3, gen)
    spatial = memory.shape[0] - n_ptr
    perm = torch.cat([torch.arange(spatial), spatial + torch.randperm(n_ptr, generator=gen)])
    a = model(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=n_ptr)
    b = model(curr, memory[perm], curr_pos, memory_pos[perm], num_obj_ptr_tokens=n_ptr)
    assert_same_computation(a, b, what="pointer tokens permuted")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_complex_rope_rotation_equals_the_real_form(dtype):
    """On the CPU the RoPE tables carry a complex form and keys rotate as one complex product; it must give
    the real cos/sin form's numbers (used on MPS and under torch.compile), for 7 memory frames of keys, each
    frame rotated like a single grid by the one grid-sized table."""
    attention = RoPEAttention(256, rope_k_repeat=True, feat_sizes=(8, 8), kv_in_dim=64)
    cos, sin, cis = attention.rope_table(64, torch.device("cpu"))
    assert cis is not None and cis.dtype == torch.complex64 and cis.shape == (64, 128)
    keys = torch.randn(2, 1, 7 * 64, 256, generator=torch.Generator().manual_seed(5)).to(dtype)
    complex_form = rotate_pairs(keys, cos, sin, cis)
    real_form = rotate_pairs(keys, cos, sin)
    assert complex_form.dtype == dtype and complex_form.shape == keys.shape
    assert_same_computation(complex_form, real_form, what=f"{dtype} keys, complex vs real RoPE")
    assert not torch.equal(complex_form, keys)  # it did rotate
    for frame in range(7):
        grid = slice(frame * 64, (frame + 1) * 64)
        assert torch.equal(rotate_pairs(keys[..., grid, :], cos, sin), real_form[..., grid, :])


@pytest.mark.parametrize("query_chunk, key_chunk", [(256, 1024), (100, 300)], ids=["default-blocks", "ragged-blocks"])
@torch.no_grad()
def test_cpu_value_folding_matches_plain_attention(monkeypatch, query_chunk, key_chunk):
    """The CPU path (weight the 64-channel memory block by block with a running softmax, then project)
    equals attention over projected values; with ragged blocks the 784 keys (pointers last) span three
    key blocks and the 256 queries three query blocks."""
    monkeypatch.setattr(memory_attention, "_QUERY_CHUNK", query_chunk)
    monkeypatch.setattr(memory_attention, "_KEY_CHUNK", key_chunk)
    torch.manual_seed(0)
    model = MemoryAttention().eval()
    gen = torch.Generator().manual_seed(11)
    curr, curr_pos, memory, memory_pos, n_ptr = memory_inputs(16, 2, 3, 4, gen)
    assert model.layers[0].cross_attn_image._folds_values(curr, memory)  # the CPU default
    folded = model(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=n_ptr)
    monkeypatch.setattr(RoPEAttention, "_folds_values", lambda self, q, v: False)
    plain = model(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=n_ptr)
    assert_same_computation(folded, plain, what="folded vs plain attention")
    assert max_abs_diff(folded[:, 0], folded[:, 1]) > 1e-2  # two different objects: a real comparison


@pytest.mark.parametrize("fold", [True, False], ids=["cpu-folded", "sdpa"])
@torch.no_grad()
def test_one_frame_shared_by_a_batch_of_objects(monkeypatch, fold):
    """curr with batch 1 against a memory of batch 3 equals curr repeated 3 times."""
    monkeypatch.setattr(RoPEAttention, "_folds_values", lambda self, q, v: fold and v.shape[-1] < self.head_dim)
    torch.manual_seed(0)
    model = MemoryAttention().eval()
    gen = torch.Generator().manual_seed(5)
    curr, curr_pos, memory, memory_pos, n_ptr = memory_inputs(16, 3, 2, 2, gen)
    shared = model(curr[:, :1], memory, curr_pos[:, :1], memory_pos, num_obj_ptr_tokens=n_ptr)
    repeated = model(curr[:, :1].expand(-1, 3, -1), memory, curr_pos[:, :1].expand(-1, 3, -1), memory_pos,
                     num_obj_ptr_tokens=n_ptr)
    assert shared.shape == repeated.shape == (256, 3, 256)
    assert_same_computation(shared, repeated, what="one shared frame vs the frame repeated")
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(curr[:, :2], memory, curr_pos[:, :2], memory_pos, num_obj_ptr_tokens=n_ptr)


@pytest.mark.parametrize("tokens", [256, 300])
@torch.no_grad()
def test_cpu_feed_forward_in_blocks_equals_whole(monkeypatch, tokens):
    """The CPU feed-forward network taken block by block (here 100 tokens) equals it over all tokens."""
    monkeypatch.setattr(memory_attention, "_FFN_CHUNK", 100)
    torch.manual_seed(0)
    layer = MemoryAttention(num_layers=1).eval().layers[0]
    x = torch.randn(2, tokens, 256)
    whole = layer.linear2(torch.relu(layer.linear1(x)))
    blocked = layer.feed_forward(x)
    assert blocked.shape == whole.shape
    assert_same_computation(blocked, whole, what="feed-forward in blocks vs whole")


def padded_inputs(memory, memory_pos, num_frames: int, n_ptr: int, capacity: MemoryCapacity | None = None,
                  gen: torch.Generator | None = None):
    """(memory, memory_pos, num_obj_ptr_tokens, memory_mask) laid out at the compiled model's fixed size
    (default capacity: 7 frames, 16 pointers); with ``gen`` the padding is random instead of zeros, so only the
    mask can keep it out."""
    padded = pad_memory(memory, memory_pos, num_frames, n_ptr, capacity or MemoryCapacity())
    if gen is not None:
        pad = ~padded.mask
        padded.memory[pad] = torch.randn(padded.memory[pad].shape, generator=gen)
        padded.memory_pos[pad] = torch.randn(padded.memory_pos[pad].shape, generator=gen)
    return padded.memory, padded.memory_pos, padded.num_pointer_tokens, padded.mask


def no_cpu_kernel(*args, **kwargs):
    raise AssertionError("the hand-written CPU kernel ran instead of the SDPA folded path")


@pytest.mark.reference
@pytest.mark.parametrize("grid, batch, num_frames, num_pointers", ATTENTION_CASES[:4])
@pytest.mark.parametrize("padding", [False, True], ids=["unpadded", "padded-masked"])
@torch.no_grad()
def test_sdpa_value_folding_parity(monkeypatch, grid, batch, num_frames, num_pointers, padding):
    """The generic folded path (SDPA on the 64-channel values, then the value projection: what CUDA, MPS and
    torch.compile run), forced on the CPU, against the reference on the unpadded memory; padded to the compiled
    model's fixed capacity (random padding, masked out) too."""
    ref, sd = reference(16 * grid)
    model = ours(MemoryAttention, "memory_attention", sd)
    model.value_folding = "sdpa"
    monkeypatch.setattr(RoPEAttention, "_attend_then_project_values", no_cpu_kernel)
    gen = torch.Generator().manual_seed(grid + 10 * num_frames)
    curr, curr_pos, memory, memory_pos, n_ptr = memory_inputs(grid, batch, num_frames, num_pointers, gen)

    expected = ref.memory_attention(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                                    num_obj_ptr_tokens=n_ptr)
    mask = None
    if padding:
        memory, memory_pos, n_ptr, mask = padded_inputs(memory, memory_pos, num_frames, n_ptr, gen=gen)
    got = model(curr, memory, curr_pos=curr_pos, memory_pos=memory_pos, num_obj_ptr_tokens=n_ptr,
                memory_mask=mask)

    diff = max_abs_diff(got, expected)
    print(f"SDPA-folded memory attention {grid=} {batch=} {num_frames=} {num_pointers=} {padding=}: {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("value_folding", ["auto", "sdpa", "off"])
@pytest.mark.parametrize("shared_frame", [False, True], ids=["frame-per-object", "shared-frame"])
@torch.no_grad()
def test_padded_masked_memory_equals_the_unpadded_one(value_folding, shared_frame):
    """Memory padded to a (grown) capacity with random padding and a key mask gives the unpadded memory's
    output: the masked keys get exactly zero weight, spatial slots keep their RoPE positions and the pointer
    slots stay the unrotated tail. In every value-folding mode, for one frame per object and for one frame
    shared by the objects (on the CPU: objects one by one)."""
    torch.manual_seed(0)
    model = MemoryAttention().eval()
    model.value_folding = value_folding
    gen = torch.Generator().manual_seed(17)
    curr, curr_pos, memory, memory_pos, n_ptr = memory_inputs(16, 2, 3, 5, gen)
    if shared_frame:
        curr, curr_pos = curr[:, :1], curr_pos[:, :1]
    plain = model(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=n_ptr)
    capacity = MemoryCapacity().fit(9, 18)
    assert capacity == MemoryCapacity(11, 20)
    padded_memory, padded_pos, padded_ptr, mask = padded_inputs(memory, memory_pos, 3, n_ptr, capacity, gen)
    assert padded_memory.shape[0] == 11 * 256 + 20 * 4 and int(mask.sum()) == memory.shape[0]
    padded = model(curr, padded_memory, curr_pos, padded_pos, num_obj_ptr_tokens=padded_ptr, memory_mask=mask)
    assert_same_computation(padded, plain, what=f"padded vs unpadded memory, value_folding={value_folding}")
    assert max_abs_diff(plain[:, 0], plain[:, 1]) > 1e-2  # two different objects: a real comparison


def test_value_folding_switch():
    """The switch sets every layer's cross-attention and refuses unknown modes."""
    model = MemoryAttention()
    assert model.value_folding == "auto"
    model.value_folding = "off"
    assert {layer.cross_attn_image.value_folding for layer in model.layers} == {"off"}
    with pytest.raises(ValueError, match="value_folding must be one of"):
        model.value_folding = "always"
    with pytest.raises(ValueError, match="value_folding must be one of"):
        RoPEAttention(value_folding="never")

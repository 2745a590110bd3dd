"""The SAM 2 video model: image encoder, SAM heads, memory encoder and memory attention wired together.

:class:`SAM2Model` owns every weight of an official checkpoint under exactly the reference's state-dict
keys, and exposes the per-frame operations a tracker needs: encode an image, segment a frame from
prompts (optionally conditioned on memories), encode a prediction into memory. Which frames are
remembered is decided by :mod:`napari_sam2.model.memory_selection`; where results are stored is the
tracking engine's business.

Tensor conventions inside the model follow the reference: images are (B, 3, S, S) with S the model's
``image_size``; prompt point coordinates are (x, y) in that S x S image space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, get_1d_sine_pe
from .compiled import CompiledWithFallback
from .configs import ModelConfig
from .image_encoder import build_image_encoder
from .interrupt import checkpoint
from .mask_decoder import MaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .memory_padding import POINTER_TOKENS, MemoryCapacity, pad_memory
from .memory_selection import MAX_OBJECT_POINTERS, NUM_MASKMEM
from .prompt_encoder import PromptEncoder
from .resize import resize_bilinear
from .two_way_transformer import TwoWayTransformer

NO_OBJECT_SCORE = -1024.0  # logit written into every pixel of a mask whose object is judged absent
HIDDEN_DIM = 256
MEMORY_DIM = 64
BACKBONE_STRIDE = 16
MEM_ENC_SIGMOID_SCALE = 20.0
MEM_ENC_SIGMOID_BIAS = -10.0
MASK_INPUT_LOGIT = 10.0  # mask prompts become +-10 logits
COMPILED_MODULES = ("image_encoder", "memory_attention")  # what use_compiled compiles


@dataclass
class ImageFeatures:
    """Backbone features of one or more frames, ready for the SAM heads and the memory modules.

    ``feat`` is the (B, 256, h, w) stride-16 map, ``pos`` its (1, 256, h, w) sine encoding (identical for
    every frame), ``high_res`` the projected stride-4 and stride-8 maps used by the mask decoder.
    """

    feat: torch.Tensor
    pos: torch.Tensor
    high_res: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.feat, *self.high_res])


@dataclass
class HeadOutput:
    """What the SAM heads produce for a batch of B prompts / objects on one frame.

    ``low_res_masks`` (B, 1, S/4, S/4) and ``high_res_masks`` (B, 1, S, S) are logits of the chosen mask,
    ``obj_ptr`` (B, 256) the object pointer, ``object_score`` (B, 1) the object-presence logit.
    """

    low_res_masks: torch.Tensor
    high_res_masks: torch.Tensor
    ious: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor


@dataclass
class MemoryItem:
    """One remembered frame as memory attention reads it: spatial memory (B, 64, h, w) and its slot.

    ``t_pos`` is 0 for conditioning frames and 1..6 for recent frames (6 = the previous frame).
    """

    features: torch.Tensor
    t_pos: int


class SAM2Model(nn.Module):
    """SAM 2 / SAM 2.1 with the official checkpoint layout (load with ``strict=True``)."""

    def __init__(self, config: ModelConfig, image_size: int = 1024) -> None:
        super().__init__()
        if image_size % 32 or image_size < 64:
            raise ValueError(f"image_size must be a multiple of 32 and at least 64, got {image_size}")
        self.config = config
        self.image_size = image_size
        self.source: str | None = None  # model name or checkpoint path, set by napari_sam2.load_model
        self.embedding_size = image_size // BACKBONE_STRIDE
        h = config.hiera
        self.image_encoder = build_image_encoder(
            h.embed_dim, h.num_heads, h.stages, h.global_att_blocks, h.window_spec,
            h.window_pos_embed_bkg_spatial_size, h.backbone_channel_list)
        # A learned 4x4 stride-4 conv that turns an S x S mask into the S/4 x S/4 mask prompt.
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention(d_model=HIDDEN_DIM, num_layers=4)
        self.memory_encoder = MemoryEncoder(out_dim=MEMORY_DIM, in_dim=HIDDEN_DIM)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(NUM_MASKMEM, 1, 1, MEMORY_DIM))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, HIDDEN_DIM))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, HIDDEN_DIM))  # unused at inference; kept for the checkpoint
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, HIDDEN_DIM))
        if config.is_v21:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, MEMORY_DIM))
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=HIDDEN_DIM, image_embedding_size=(self.embedding_size, self.embedding_size),
            input_image_size=(image_size, image_size), mask_in_chans=16)
        self.sam_mask_decoder = MaskDecoder(
            transformer_dim=HIDDEN_DIM,
            transformer=TwoWayTransformer(depth=2, embedding_dim=HIDDEN_DIM, mlp_dim=2048, num_heads=8),
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256)
        self.obj_ptr_proj = MLP(HIDDEN_DIM, HIDDEN_DIM, HIDDEN_DIM, 3)
        if config.is_v21:
            self.obj_ptr_tpos_proj = nn.Linear(HIDDEN_DIM, MEMORY_DIM)
        # Optional compiled versions of the two hot modules (see use_compiled); a plain dict, so that the
        # state dict keeps exactly the checkpoint's keys.
        self._compiled: dict[str, Callable] = {}
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr,
                  getattr(self, "no_obj_embed_spatial", None)):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.no_obj_ptr.device

    def use_compiled(self, enabled: bool = True, **compile_options: Any) -> None:
        """Run the image encoder and memory attention (almost all of the time) through ``torch.compile``.

        ``compile_options`` go to ``torch.compile``. Compilation happens on first use; if it fails, one
        warning is logged and the module runs uncompiled (see :class:`CompiledWithFallback`). Calling it
        again with the same options, or with none, keeps the compiled modules and their graphs: a new
        session of the same model (``compile_model=True``) does not recompile.

        Memory attention then gets its memory padded to a fixed capacity (see :mod:`.memory_padding`),
        and its batch (objects) dimension marked dynamic, so that one movie costs two graphs: one for a
        single object and one for any larger batch. More conditioning frames than the capacity holds (7
        spatial memories, 16 pointers) grow it: the first growth costs one more graph per batch kind, later
        ones none (the sizes have turned dynamic). Read the counts with :meth:`compile_counts`. An input
        that is an inference tensor one time and a normal tensor another also has graphs of its own.
        """
        current = [self._compiled.get(name) for name in COMPILED_MODULES]
        if enabled and all(isinstance(r, CompiledWithFallback) and (not compile_options or r.options == compile_options)
                           for r in current):
            return
        self._compiled.clear()
        self._memory_capacity = MemoryCapacity()
        if enabled:
            for name in COMPILED_MODULES:
                self._compiled[name] = CompiledWithFallback(getattr(self, name), **compile_options)

    def compile_counts(self) -> dict[str, int]:
        """Graphs compiled so far per compiled module ({} when not compiled): after a warm-up run, a
        count that still grows means recompiles."""
        return {name: r.compiles for name, r in self._compiled.items() if isinstance(r, CompiledWithFallback)}

    def fold_values(self, enabled: bool = True) -> None:
        """Let memory attention weight its 64-channel memory values before projecting them (the default), or
        project them first as the reference does: ``memory_attention.value_folding`` "auto" or "off" (see
        :mod:`.memory_attention`; for a compiled model the switch costs one recompile)."""
        self.memory_attention.value_folding = "auto" if enabled else "off"

    def _run(self, name: str) -> Callable:
        """The submodule ``name``, compiled if :meth:`use_compiled` asked for it."""
        return self._compiled.get(name) or getattr(self, name)

    # ------------------------------------------------------------------ image
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Backbone features of preprocessed images (B, 3, S, S)."""
        out = self._run("image_encoder")(images)
        fpn = out["backbone_fpn"]
        checkpoint()
        # The mask decoder's high-res projections depend only on the image, so they are applied once
        # here rather than on every click.
        high_res = [self.sam_mask_decoder.conv_s0(fpn[0]), self.sam_mask_decoder.conv_s1(fpn[1])]
        return ImageFeatures(feat=fpn[-1], pos=out["vision_pos_enc"][-1][:1], high_res=high_res)

    # ------------------------------------------------------------------ SAM heads
    def predict_masks(
        self,
        feat: torch.Tensor,
        high_res: list[torch.Tensor],
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> HeadOutput:
        """Run the prompt encoder and mask decoder on (memory-conditioned) features (B, 256, h, w).

        ``point_coords`` (B, N, 2) are (x, y) in model image space, ``point_labels`` (B, N) int;
        ``mask_input`` (B, 1, *, *) logits are resized to the S/4 mask-prompt size when needed.
        """
        batch = feat.shape[0]
        if point_coords is None:  # a lone "not a point" keeps the decoder's token layout
            point_coords = torch.zeros(batch, 1, 2, device=feat.device)
            point_labels = -torch.ones(batch, 1, dtype=torch.int32, device=feat.device)
        if mask_input is not None and mask_input.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
            mask_input = resize_bilinear(mask_input.float(), self.sam_prompt_encoder.mask_input_size, antialias=True)
        sparse, dense = self.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None,
                                                masks=mask_input)
        masks, ious, tokens, object_score = self.sam_mask_decoder(
            image_embeddings=feat, image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask, repeat_image=False, high_res_features=high_res)
        appearing = object_score > 0
        # The presence decision is hard: an absent object gets a constant "nothing here" mask.
        masks = torch.where(appearing[:, None, None], masks, NO_OBJECT_SCORE).float()
        token = tokens[:, 0]
        if multimask:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(batch, device=feat.device)
            masks = masks[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
        high = F.interpolate(masks, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)
        obj_ptr = self._mix_no_object_pointer(self.obj_ptr_proj(token), appearing.float())
        return HeadOutput(masks, high, ious, obj_ptr, object_score)

    def predict_mask_candidates(
        self,
        feat: torch.Tensor,
        high_res: list[torch.Tensor],
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every mask the decoder proposes for B prompts on one frame, as SAM 2's image predictor returns them.

        ``feat`` (1 or B, 256, h, w) and ``high_res`` as for :meth:`predict_masks` (a single frame's features
        serve all B prompts); ``point_coords`` (B, N, 2) are (x, y) in model image space, ``point_labels`` (B, N).
        Returns low-resolution logits (B, M, S/4, S/4), predicted IoUs (B, M) and object-score logits (B, 1),
        M = 3 with ``multimask`` (else 1). Unlike :meth:`predict_masks` nothing is selected and the object
        score is not applied to the masks: the reference's automatic mask generator ignores it.
        """
        if mask_input is not None and mask_input.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
            mask_input = resize_bilinear(mask_input.float(), self.sam_prompt_encoder.mask_input_size, antialias=True)
        sparse, dense = self.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=mask_input)
        masks, ious, _, object_score = self.sam_mask_decoder(
            image_embeddings=feat, image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask, repeat_image=feat.shape[0] != sparse.shape[0], high_res_features=high_res)
        return masks, ious, object_score

    def mask_as_output(self, feat: torch.Tensor, high_res: list[torch.Tensor], mask: torch.Tensor) -> HeadOutput:
        """Take a binary mask prompt (B, 1, S, S) as the prediction itself (a "ground-truth" frame).

        The mask becomes +-10 logits; the object pointer still comes from the SAM heads, run on the
        raw (not memory-conditioned) features with the mask as dense prompt.
        """
        mask = mask.float()
        high = mask * (2 * MASK_INPUT_LOGIT) - MASK_INPUT_LOGIT
        low = resize_bilinear(high, (high.shape[-2] // 4, high.shape[-1] // 4), antialias=True)
        ious = mask.new_ones(mask.shape[0], 1)
        heads = self.predict_masks(feat, high_res, mask_input=self.mask_downsample(mask))
        present = torch.any(mask.flatten(1) > 0.0, dim=1)[:, None].float()
        object_score = present * (2 * MASK_INPUT_LOGIT) - MASK_INPUT_LOGIT
        # predict_masks already mixed with the decoder's own presence guess; the mask decides instead.
        obj_ptr = self._mix_no_object_pointer(heads.obj_ptr, present)
        return HeadOutput(low, high, ious, obj_ptr, object_score)

    def _mix_no_object_pointer(self, obj_ptr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return present * obj_ptr + (1 - present) * self.no_obj_ptr

    # ------------------------------------------------------------------ memory
    def condition_on_memory(
        self,
        image: ImageFeatures,
        memories: list[MemoryItem],
        pointers: list[tuple[int, torch.Tensor]],
        num_frames: int,
    ) -> torch.Tensor:
        """Fuse the current frame's features with remembered frames and object pointers.

        With no memories (an initial conditioning frame) the learned no-memory embedding is added
        instead. ``memories`` and ``pointers`` (temporal distance, (B, 256) pointer) hold B objects
        that share one frame and one memory layout: the frame's features (batch 1) are conditioned on
        each object's memories in one batched pass. Returns (B, 256, h, w).
        """
        feat = image.feat
        _, channels, height, width = feat.shape
        if not memories:
            return feat + self.no_mem_embed.view(1, channels, 1, 1)
        batch = max(feat.shape[0], memories[0].features.shape[0])
        dtype = feat.dtype
        spatial_pos = self.memory_encoder.position_encoding.encode(height, width, feat.device).to(dtype)
        spatial_pos = spatial_pos.flatten(2).permute(2, 0, 1)  # (hw, 1, 64)
        tokens, token_pos = [], []
        for item in memories:
            # Stored memories are bf16 (as in the reference); attention runs in the compute dtype.
            tokens.append(item.features.to(device=feat.device, dtype=dtype).flatten(2).permute(2, 0, 1))
            tpos = self.maskmem_tpos_enc[NUM_MASKMEM - item.t_pos - 1]
            token_pos.append((spatial_pos + tpos).expand(-1, batch, -1))
        num_pointer_tokens = 0
        if pointers:
            distances = torch.tensor([d for d, _ in pointers], device=feat.device)
            # Stacked where the pointers are, then moved in one copy: (P, B, 256).
            ptrs = torch.stack([p for _, p in pointers], dim=0).to(device=feat.device, dtype=dtype)
            ptr_pos = self._pointer_position_encoding(distances, num_frames, batch, dtype)
            split = HIDDEN_DIM // MEMORY_DIM  # each pointer becomes 4 tokens of 64 channels
            ptrs = ptrs.reshape(-1, batch, split, MEMORY_DIM).permute(0, 2, 1, 3).flatten(0, 1)
            tokens.append(ptrs)
            token_pos.append(ptr_pos.repeat_interleave(split, dim=0))
            num_pointer_tokens = ptrs.shape[0]
        curr = feat.flatten(2).permute(2, 0, 1)
        curr_pos = image.pos.to(dtype).flatten(2).permute(2, 0, 1).expand(-1, feat.shape[0], -1)
        fused = self._attend_memory(curr, curr_pos, torch.cat(tokens, dim=0), torch.cat(token_pos, dim=0),
                                    len(memories), num_pointer_tokens)
        return fused.permute(1, 2, 0).reshape(batch, channels, height, width)

    def _attend_memory(self, curr: torch.Tensor, curr_pos: torch.Tensor, memory: torch.Tensor,
                       memory_pos: torch.Tensor, num_spatial: int, num_pointer_tokens: int) -> torch.Tensor:
        """Memory attention on sequence-first inputs (``num_spatial`` spatial memories, then pointer tokens).

        Compiled, it gets the memory padded to the model's capacity (grown if needed, see
        :mod:`.memory_padding`) and the objects dimension marked dynamic: the graph then stays the same from
        frame to frame and from batch to batch (beyond one object), instead of recompiling for every size.
        Should compiling fail, the eager module runs on the unpadded memory (as it does from then on).
        """
        def eager() -> torch.Tensor:
            return self.memory_attention(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                                         num_obj_ptr_tokens=num_pointer_tokens)

        runner = self._compiled.get("memory_attention")
        if not (isinstance(runner, CompiledWithFallback) and runner.active):
            return eager()
        self._memory_capacity = self._memory_capacity.fit(num_spatial, num_pointer_tokens // POINTER_TOKENS)
        padded = pad_memory(memory, memory_pos, num_spatial, num_pointer_tokens, self._memory_capacity)
        for tensor in (curr, curr_pos, padded.memory, padded.memory_pos):
            if tensor.shape[1] > 1:  # a batch of 1 stays specialised: its own graph
                torch._dynamo.maybe_mark_dynamic(tensor, 1)
        return runner.call_or(eager, curr=curr, memory=padded.memory, curr_pos=curr_pos,
                              memory_pos=padded.memory_pos, num_obj_ptr_tokens=padded.num_pointer_tokens,
                              memory_mask=padded.mask)

    def _pointer_position_encoding(self, distances: torch.Tensor, num_frames: int, batch: int,
                                   dtype: torch.dtype) -> torch.Tensor:
        """(P, B, 64) temporal encoding of object pointers: sine of the normalised distance (SAM 2.1), or zeros (SAM 2)."""
        if not self.config.is_v21:
            return torch.zeros(len(distances), batch, MEMORY_DIM, device=distances.device, dtype=dtype)
        max_distance = max(min(num_frames, MAX_OBJECT_POINTERS) - 1, 1)
        pe = get_1d_sine_pe(distances / max_distance, dim=HIDDEN_DIM)
        return self.obj_ptr_tpos_proj(pe.to(dtype)).unsqueeze(1).expand(-1, batch, MEMORY_DIM)

    def encode_memory(self, feat: torch.Tensor, high_res_masks: torch.Tensor, object_score: torch.Tensor,
                      binarize: bool) -> torch.Tensor:
        """Spatial memory (B, 64, h, w) of a frame from its raw features and predicted mask logits (B, 1, S, S).

        Masks from clicked frames are binarised; tracked frames use sigmoid probabilities.
        """
        mask = (high_res_masks > 0).to(feat.dtype) if binarize else torch.sigmoid(high_res_masks)
        mask = mask * MEM_ENC_SIGMOID_SCALE + MEM_ENC_SIGMOID_BIAS
        features = self.memory_encoder(feat, mask, skip_mask_sigmoid=True)["vision_features"]
        if self.config.is_v21:
            absent = 1 - (object_score > 0).to(features.dtype)
            features = features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return features

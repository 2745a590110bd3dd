"""SAM 2 mask decoder: prompt tokens + image embedding -> mask logits, IoU estimates, object score.

Learned output tokens (object score, IoU, 4 mask tokens) are prepended to the prompt tokens and run
through the two-way transformer together with the image embedding. The image tokens are then
upsampled 4x (mixing in the backbone's high-resolution features), and each mask token, passed through
its own small MLP ("hypernetwork"), becomes a per-pixel linear classifier over the upsampled features.
Parameter names follow the SAM 2 checkpoint (``sam_mask_decoder.*``).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP, LayerNorm2d
from .two_way_transformer import image_tokens

# Intra-op threads for a single prompt on the CPU (a click); see single_prompt_cpu_threads.
SINGLE_PROMPT_CPU_THREADS = 1


@contextmanager
def single_prompt_cpu_threads(batch: int, device: torch.device) -> Iterator[None]:
    """Run a single prompt's heads on the CPU with ``SINGLE_PROMPT_CPU_THREADS`` intra-op threads.

    The heads of one prompt are ~150 ops on 64x64..256x256 maps, each too small to gain much from
    being split across cores, and every split waits for all cores at its end: on a machine that is busy
    elsewhere (the napari GUI, another process) each such wait can take a scheduler slice, and a click
    took 0.5-1.5 s with two threads against 0.15-0.25 s with one on this project's loaded 2-core VM.
    Batches (several objects while propagating) keep the caller's setting. The setting is restored on
    exit; while it holds, only the calling thread's OpenMP / MKL count changes (threads already running
    keep theirs, a thread that first uses torch meanwhile starts with one).
    """
    before = torch.get_num_threads()
    if device.type != "cpu" or batch != 1 or before <= SINGLE_PROMPT_CPU_THREADS:
        yield
        return
    torch.set_num_threads(SINGLE_PROMPT_CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _FrameMemo:
    """Results computed from a few tensors, kept while those exact tensors live and are unchanged.

    An entry is found again only for the very same tensor objects (held by weak reference: once one of
    them is freed, e.g. when the feature cache evicts a frame, its entry can no longer match and goes at
    the next lookup) with the same in-place version counters. Inference-mode tensors have no version
    counter; they are taken as immutable, as the session's cached image features are. Nothing is kept
    while autograd records (a kept result would detach the graph), and at most ``capacity`` entries are
    (the most recently used). Safe to use from several threads.
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, ...], tuple[list[weakref.ref], tuple, Any]] = OrderedDict()
        self._freed: list[tuple[int, ...]] = []  # keys whose tensors died (appended by weakref callbacks)
        self._lock = threading.Lock()

    def get(self, depends_on: list[Tensor], compute: Callable[[], Any]) -> Any:
        """``compute()``, or its kept result for these ``depends_on`` tensors."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in depends_on):
            return compute()
        key = tuple(id(t) for t in depends_on)
        versions = tuple(None if t.is_inference() else t._version for t in depends_on)
        with self._lock:
            self._drop_freed()
            entry = self._entries.get(key)
            if entry is not None and entry[1] == versions and all(r() is t for r, t in zip(entry[0], depends_on)):
                self._entries.move_to_end(key)
                return entry[2]
        result = compute()
        # A callback only records the key: it may run inside any allocation, even one made here.
        refs = [weakref.ref(t, lambda _, key=key: self._freed.append(key)) for t in depends_on]
        with self._lock:
            self._entries[key] = (refs, versions, result)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return result

    def _drop_freed(self) -> None:
        while self._freed:
            key = self._freed.pop()
            entry = self._entries.get(key)
            if entry is not None and any(r() is None for r in entry[0]):
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            self._drop_freed()
            return len(self._entries)

    def __deepcopy__(self, memo: dict) -> _FrameMemo:
        return _FrameMemo(self.capacity)  # a copied model starts empty (weak references do not copy)

    def __getstate__(self) -> dict:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])


class MaskDecoder(nn.Module):
    """Predict masks for a batch of prompts.

    Token 0 of the mask tokens gives the single-mask output, tokens 1..3 the three multimask outputs.
    Defaults are the SAM 2 settings; the upscaling activation is fixed to GELU, the only one SAM 2 uses.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
    ) -> None:
        super().__init__()
        dim = transformer_dim
        self.transformer_dim = dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1

        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        # 64² -> 128² (dim/4 channels) -> 256² (dim/8 channels). Indices 2 and 4 are the activations.
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            # Projections of the stride-4 / stride-8 backbone features. SAM 2 applies them once per
            # frame in the image pipeline, so forward() receives already projected features.
            self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
                                       sigmoid_output=iou_prediction_use_sigmoid)
        if pred_obj_scores:
            self.pred_obj_score_head = MLP(dim, dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(dim, 1)

        self._blocks_memo = _FrameMemo()
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decode masks.

        Args:
            image_embeddings: (B_img, C, h, w) image features.
            image_pe: (1, C, h, w) from ``PromptEncoder.get_dense_pe()``.
            sparse_prompt_embeddings: (B, N, C) prompt tokens.
            dense_prompt_embeddings: (B, C, h, w) mask-prompt embedding.
            multimask_output: return the 3 multimask outputs instead of the single mask.
            repeat_image: repeat each image embedding for the B prompts (B_img == 1 in practice);
                otherwise B_img must equal B.
            high_res_features: [stride-4 (B, C/8, 4h, 4w), stride-8 (B, C/4, 2h, 2w)] projected features.

        Returns:
            masks (B, M, 4h, 4w) logits, iou_pred (B, M), sam_tokens_out (B, M', C) for the object
            pointer, object_score_logits (B, 1); M = 3 with multimask output, else 1.
        """
        with single_prompt_cpu_threads(sparse_prompt_embeddings.shape[0], sparse_prompt_embeddings.device):
            masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                repeat_image, high_res_features)

            if multimask_output:
                masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
            elif self.dynamic_multimask_via_stability and not self.training:
                masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
            else:
                masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]

        # The object pointer comes from the single-mask token unless multimask tokens are requested;
        # in particular the stability fallback above does not change the token.
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        repeat_image: bool,
        high_res_features: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All mask outputs before selection: masks (B, 4, H, W), iou (B, 4), mask tokens (B, 4, C), score (B, 1)."""
        fixed = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            fixed.insert(0, self.obj_score_token.weight)
        first_mask = len(fixed) - 1  # index of the first mask token in the token sequence
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat(fixed, dim=0).unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        if not repeat_image and image_embeddings.shape[0] != batch:
            raise ValueError(f"{image_embeddings.shape[0]} image embeddings for {batch} prompts")
        if image_pe.shape[0] != 1:
            raise ValueError("image_pe must have batch size 1 (use PromptEncoder.get_dense_pe())")
        # Broadcasting the (1, C, h, w) image over the prompts gives the values of the reference's
        # repeat_interleave without its copy; the transformer works on contiguous (B, h*w, C) tokens.
        b, c, h, w = dense_prompt_embeddings.shape
        src = image_tokens(image_embeddings + dense_prompt_embeddings)
        pos_src = image_tokens(image_pe)  # get_dense_pe() is channels-last: a view, no copy

        hs, src = self.transformer.forward_tokens(src, pos_src, tokens)
        iou_token_out = hs[:, first_mask - 1]
        mask_tokens_out = hs[:, first_mask:first_mask + self.num_mask_tokens]

        hyper_in = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)
        masks = self._masks(src, (h, w), high_res_features, hyper_in)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:  # "object present" with probability sigmoid(10) ~ 1
            object_score_logits = iou_pred.new_full((iou_pred.shape[0], 1), 10.0)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _masks(self, tokens: Tensor, grid: tuple[int, int], high_res_features: list[Tensor] | None,
               hyper_in: Tensor) -> Tensor:
        """Mask logits (B, M, 4h, 4w): image tokens (B, h*w, C) upscaled 4x, times each of the M per-mask
        classifiers ``hyper_in`` (B, M, C/8)."""
        if not self.use_high_res_features:
            upscaled = self.output_upscaling(tokens.transpose(1, 2).unflatten(2, grid))
            return (hyper_in @ upscaled.flatten(2)).unflatten(2, upscaled.shape[-2:])
        if high_res_features is None:
            raise ValueError("this decoder needs high_res_features")
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        addend1, addend0 = self.high_res_blocks(high_res_features)
        batch = tokens.shape[0]
        # Rows (i, j) of the h x w grid, columns (dy, dx, c) of each pixel's 2x2 output block: the
        # transposed convolution as one product, added onto the (bias-shifted) stride-8 features.
        x = torch.baddbmm(addend1, tokens, _block_weight(deconv1).expand(batch, -1, -1))
        x = act1(F.layer_norm(x.view(batch, -1, deconv1.out_channels), (deconv1.out_channels,),
                              norm1.weight, norm1.bias, norm1.eps))  # LayerNorm2d over c: rows (i, j, dy, dx)
        x = act2(torch.baddbmm(addend0, x, _block_weight(deconv2).expand(batch, -1, -1)))
        # x: rows (i, j, dy1, dx1), columns (dy2, dx2, c) -> per-pixel features in blocked pixel order.
        blocked = hyper_in @ x.view(batch, -1, deconv2.out_channels).transpose(1, 2)
        return _from_blocks(blocked.view(batch, -1, *grid, 2, 2, 2, 2), levels=2)

    def high_res_blocks(self, high_res_features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The stride-8 and stride-4 features in the row / column order of the upscaling's two products,
        each deconvolution's bias added: (B, h*w, 4*C/4) and (B, 4*h*w, 4*C/8), contiguous.

        Rearranging them is a strided pass over 3M values, as slow as the rest of the upscaling, and they
        belong to a frame: every click on it, and every object on it while propagating, uses the same. So
        the result is kept for the last few feature tensors (see :class:`_FrameMemo`); calling this ahead
        of a click (when a frame is encoded or precomputed) takes the rearrangement off the click.
        """
        deconv1, _, _, deconv2, _ = self.output_upscaling
        depends_on = [*high_res_features, deconv1.bias, deconv2.bias]
        return self._blocks_memo.get(depends_on, lambda: self._rearrange_high_res(high_res_features))

    def _rearrange_high_res(self, high_res_features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """:meth:`high_res_blocks`, computed."""
        feat_s0, feat_s1 = high_res_features
        deconv1, _, _, deconv2, _ = self.output_upscaling
        grid = (feat_s1.shape[-2] // 2, feat_s1.shape[-1] // 2)
        blocks1 = _to_blocks(feat_s1, grid, levels=1) + deconv1.bias
        blocks0 = _to_blocks(feat_s0, grid, levels=2) + deconv2.bias
        return blocks1.reshape(feat_s1.shape[0], grid[0] * grid[1], -1), \
            blocks0.reshape(feat_s0.shape[0], 4 * grid[0] * grid[1], -1)

    def _stability_scores(self, mask_logits: Tensor) -> Tensor:
        """IoU between the masks thresholded at +delta and at -delta (1 where the latter is empty)."""
        flat = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inner = (flat > delta).sum(dim=-1).float()
        outer = (flat > -delta).sum(dim=-1).float()
        return torch.where(outer > 0, inner / outer, 1.0)

    def _dynamic_multimask_via_stability(self, all_masks: Tensor, all_ious: Tensor) -> tuple[Tensor, Tensor]:
        """Single-mask output that falls back to the best-IoU multimask output when mask 0 is unstable."""
        multi_ious = all_ious[:, 1:]
        best = multi_ious.argmax(dim=-1)
        rows = torch.arange(all_masks.shape[0], device=all_masks.device)
        best_masks = all_masks[:, 1:][rows, best].unsqueeze(1)
        best_ious = multi_ious[rows, best].unsqueeze(1)

        single_masks, single_ious = all_masks[:, 0:1], all_ious[:, 0:1]
        stable = self._stability_scores(single_masks) >= self.dynamic_multimask_stability_thresh  # (B, 1)
        masks = torch.where(stable[..., None, None], single_masks, best_masks)
        ious = torch.where(stable, single_ious, best_ious)
        return masks, ious


def _block_weight(deconv: nn.ConvTranspose2d) -> Tensor:
    """A 2x2, stride-2 transposed convolution's weight as a (C_in, 4*C_out) matrix, columns (dy, dx, c_out)."""
    return deconv.weight.permute(0, 2, 3, 1).reshape(deconv.in_channels, -1)


def _to_blocks(x: Tensor, grid: tuple[int, int], levels: int) -> Tensor:
    """(B, C, 2^L h, 2^L w) map -> strided view (B, h, w, dy1, dx1, ..., dyL, dxL, C).

    Pixel (row, col) = (2^L i + sum_k 2^(L-k) dy_k, 2^L j + sum_k 2^(L-k) dx_k): the order in which L
    stride-2 upscalings of the h x w grid produce their pixels.
    """
    b, c = x.shape[:2]
    h, w = grid
    view = x.reshape(b, c, h, *[2] * levels, w, *[2] * levels)  # (b, c, i, dy1..dyL, j, dx1..dxL)
    order = [0, 2, 3 + levels]
    for k in range(levels):
        order += [3 + k, 4 + levels + k]
    return view.permute(*order, 1)


def _from_blocks(x: Tensor, levels: int) -> Tensor:
    """(B, C, h, w, dy1, dx1, ..., dyL, dxL) blocked pixels -> contiguous (B, C, 2^L h, 2^L w)."""
    b, c, h, w = x.shape[:4]
    rows = [4 + 2 * k for k in range(levels)]
    cols = [5 + 2 * k for k in range(levels)]
    side = 2 ** levels
    return x.permute(0, 1, 2, *rows, 3, *cols).reshape(b, c, side * h, side * w)

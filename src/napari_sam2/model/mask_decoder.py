"""SAM 2 mask decoder: prompt tokens + image embedding -> mask logits, IoU estimates, object score.

Learned output tokens (object score, IoU, 4 mask tokens) are prepended to the prompt tokens and run
through the two-way transformer together with the image embedding. The image tokens are then
upsampled 4x (mixing in the backbone's high-resolution features), and each mask token, passed through
its own small MLP ("hypernetwork"), becomes a per-pixel linear classifier over the upsampled features.
Parameter names follow the SAM 2 checkpoint (``sam_mask_decoder.*``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import MLP, LayerNorm2d
from .two_way_transformer import image_tokens


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

        upscaled = self._upscale(src, (h, w), high_res_features)
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:  # "object present" with probability sigmoid(10) ~ 1
            object_score_logits = iou_pred.new_full((iou_pred.shape[0], 1), 10.0)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _upscale(self, tokens: Tensor, grid: tuple[int, int], high_res_features: list[Tensor] | None) -> Tensor:
        """Image tokens (B, h*w, C) -> (B, C/8, 4h, 4w), adding the high-res features after each transposed conv."""
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        if not self.use_high_res_features:
            return act2(deconv2(act1(norm1(deconv1(tokens.transpose(1, 2).unflatten(2, grid))))))
        if high_res_features is None:
            raise ValueError("this decoder needs high_res_features")
        feat_s0, feat_s1 = high_res_features
        x = act1(norm1(_stride2_deconv_plus(deconv1, tokens.transpose(1, 2), grid, feat_s1)))
        return act2(_stride2_deconv_plus(deconv2, x.flatten(2), (2 * grid[0], 2 * grid[1]), feat_s0))

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


def _stride2_deconv_plus(deconv: nn.ConvTranspose2d, x: Tensor, grid: tuple[int, int], addend: Tensor) -> Tensor:
    """``deconv(x) + addend`` for a 2x2, stride-2 transposed convolution, as one matrix product.

    Such a convolution maps every input pixel to its own 2x2 output block, so it is a (C_out*4, C_in)
    matrix times the (C_in, h*w) pixels; the product's rows are ordered (c_out, dy, dx), and the
    pixel shuffle into (C_out, 2h, 2w) happens inside the addition of ``addend``, as a strided view, so
    no separate pass over the output is needed. On the CPU this is 3-4x faster than the convolution
    routine for these shapes; the sums are the same, up to float32 rounding.

    Args:
        x: (B, C_in, h*w) input pixels (any strides).
        grid: (h, w).
        addend: (B or 1, C_out, 2h, 2w), added to the convolution's output.
    """
    c_in, c_out = deconv.weight.shape[:2]
    h, w = grid
    weight = deconv.weight.reshape(c_in, c_out * 4).t()
    bias = deconv.bias.repeat_interleave(4)[:, None]
    blocks = torch.baddbmm(bias, weight.expand(x.shape[0], -1, -1), x)  # (B, C_out*4, h*w)
    shuffled = blocks.view(-1, c_out, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C_out, h, 2, w, 2)
    out = addend.view(addend.shape[0], c_out, h, 2, w, 2) + shuffled
    return out.reshape(out.shape[0], c_out, 2 * h, 2 * w)

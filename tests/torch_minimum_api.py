"""The torch API surface the engine may rely on at the minimum torch it declares, written down by hand.

Only one torch (the newest) can be installed on the project's machines, and torch's older sources were not at
hand, so these lists are not generated from torch 2.4 itself. ``AT_MINIMUM`` holds names that are certainly in
torch 2.4 (all of them but a few date from torch 1.x or 2.0). ``NEWER`` holds names and call forms added after
torch 2.1, each with the release that added it, as remembered from the release notes; where unsure, the later
of two candidate releases is written (the safe side: it asks for a guard; torch.OutOfMemoryError, see its note,
is the one exception). A name in neither list fails
tests/test_torch_api_surface.py until someone checks when it appeared and adds it here.
"""

from __future__ import annotations

MINIMUM = (2, 4)

AT_MINIMUM = frozenset({
    # torch: tensors, dtypes, creation and math
    "torch.Tensor", "torch.Size", "torch.dtype", "torch.device", "torch.Generator",
    "torch.bool", "torch.uint8", "torch.int16", "torch.int32", "torch.int64", "torch.long",
    "torch.float", "torch.half", "torch.float16", "torch.bfloat16", "torch.float32", "torch.float64",
    "torch.tensor", "torch.as_tensor", "torch.from_numpy", "torch.empty", "torch.zeros", "torch.ones",
    "torch.full", "torch.empty_like", "torch.zeros_like", "torch.ones_like", "torch.full_like", "torch.arange",
    "torch.linspace", "torch.meshgrid", "torch.randn", "torch.manual_seed",
    "torch.cat", "torch.stack", "torch.where", "torch.broadcast_tensors", "torch.flatten",
    "torch.any", "torch.argmax", "torch.max", "torch.min", "torch.maximum", "torch.minimum", "torch.sum",
    "torch.mean", "torch.cumsum", "torch.topk", "torch.sort", "torch.unique", "torch.bincount",
    "torch.abs", "torch.exp", "torch.log", "torch.sqrt", "torch.sigmoid", "torch.softmax", "torch.clamp",
    "torch.div", "torch.matmul", "torch.bmm", "torch.baddbmm", "torch.einsum", "torch.outer",
    "torch.isfinite", "torch.isnan", "torch.complex", "torch.view_as_complex", "torch.view_as_real",
    # torch: modes, threads, autocast, compile, files, build information
    "torch.no_grad", "torch.inference_mode", "torch.set_grad_enabled", "torch.is_grad_enabled",
    "torch.is_inference_mode_enabled", "torch.get_num_threads", "torch.set_num_threads",
    "torch.get_num_interop_threads", "torch.set_num_interop_threads", "torch.get_default_dtype",
    "torch.set_float32_matmul_precision", "torch.autocast", "torch.amp.autocast", "torch.is_autocast_enabled",
    "torch.is_autocast_cpu_enabled", "torch.get_autocast_cpu_dtype", "torch.compile", "torch.compiler",
    "torch.load", "torch.save", "torch.__version__", "torch.__file__", "torch.__config__.parallel_info",
    "torch.version.cuda",
    # private names the compile wrapper uses (present, with these constructor arguments, since torch 2.0)
    "torch._TorchCompileWrapper", "torch._TorchCompileInductorWrapper", "torch._dynamo.is_compiling",
    "torch._dynamo.maybe_mark_dynamic", "torch._dynamo.exc.TorchDynamoException", "torch.fx.GraphModule",
    # devices
    "torch.cuda.is_available", "torch.cuda.device_count", "torch.cuda.current_device",
    "torch.cuda.get_device_name", "torch.cuda.get_device_capability", "torch.cuda.get_device_properties",
    "torch.cuda.is_bf16_supported", "torch.cuda.synchronize", "torch.cuda.empty_cache", "torch.cuda.mem_get_info",
    "torch.cuda.memory_allocated", "torch.cuda.max_memory_allocated", "torch.cuda.reset_peak_memory_stats",
    "torch.cuda.OutOfMemoryError", "torch.cuda.Stream", "torch.cuda.Event", "torch.cuda.stream",
    "torch.backends", "torch.backends.mps", "torch.backends.mps.is_available", "torch.backends.mps.is_built",
    "torch.backends.mps.is_macos13_or_newer", "torch.backends.cudnn.benchmark",
    "torch.backends.cuda.matmul.allow_tf32", "torch.backends.cudnn.allow_tf32",
    "torch.mps", "torch.mps.synchronize", "torch.mps.empty_cache", "torch.mps.current_allocated_memory",
    # torch.nn
    "torch.nn.Module", "torch.nn.ModuleList", "torch.nn.Sequential", "torch.nn.Parameter", "torch.nn.Identity",
    "torch.nn.Linear", "torch.nn.Conv2d", "torch.nn.ConvTranspose2d", "torch.nn.Embedding", "torch.nn.LayerNorm",
    "torch.nn.BatchNorm2d", "torch.nn.Dropout", "torch.nn.GELU", "torch.nn.ReLU", "torch.nn.SiLU",
    "torch.nn.Sigmoid", "torch.nn.MultiheadAttention",
    "torch.nn.init.trunc_normal_", "torch.nn.init.zeros_", "torch.nn.init.normal_", "torch.nn.init.constant_",
    "torch.nn.init.xavier_uniform_",
    "torch.nn.functional.interpolate", "torch.nn.functional.layer_norm", "torch.nn.functional.max_pool2d",
    "torch.nn.functional.avg_pool2d", "torch.nn.functional.adaptive_avg_pool2d", "torch.nn.functional.pad",
    "torch.nn.functional.relu", "torch.nn.functional.gelu", "torch.nn.functional.sigmoid",
    "torch.nn.functional.softmax", "torch.nn.functional.linear", "torch.nn.functional.conv2d",
    "torch.nn.functional.grid_sample", "torch.nn.functional.dropout", "torch.nn.functional.normalize",
    "torch.nn.functional.one_hot", "torch.nn.functional.scaled_dot_product_attention",  # 2.0
})

NEWER = {  # name or call form -> the torch release that added it
    "torch.load(mmap=)": "2.1",
    "torch.uint16": "2.3",  # unsigned 16-bit tensors (torch.from_numpy of a uint16 array needs it too)
    "torch.compiler.is_compiling": "2.3",
    "torch.compiler.is_dynamo_compiling": "2.3",
    "torch.nn.attention.sdpa_kernel": "2.3",
    "torch.nn.attention.SDPBackend": "2.3",
    "torch.amp.GradScaler": "2.3",
    "torch.is_autocast_enabled(*)": "2.4",  # with a device type
    "torch.get_autocast_dtype": "2.4",
    "torch.set_autocast_dtype": "2.4",
    "torch.amp.is_autocast_available": "2.4",
    "torch.get_device_module": "2.4",
    "torch.OutOfMemoryError": "2.4",  # believed 2.4, not checked; were it 2.5, model/compiled.py would need a guard
    "torch.nn.RMSNorm": "2.4",
    "torch.nn.functional.rms_norm": "2.4",
    "torch.serialization.add_safe_globals": "2.4",
    "torch.library.custom_op": "2.4",
    "torch.backends.mps.is_macos_or_newer": "2.5",  # unsure when it came; guard it
    "torch.cuda.is_bf16_supported(including_emulation=)": "2.5",
    "torch.nn.functional.scaled_dot_product_attention(enable_gqa=)": "2.5",
    "torch.nn.attention.flex_attention.flex_attention": "2.5",
    "torch.nn.attention.flex_attention.create_block_mask": "2.5",
    "torch.compiler.set_stance": "2.6",
    "torch.accelerator": "2.6",
    "torch.accelerator.is_available": "2.6",
    "torch.accelerator.current_accelerator": "2.6",
    "torch.accelerator.device_count": "2.6",
}


def release(version: str) -> tuple[int, ...]:
    """``"2.4"`` as ``(2, 4)``."""
    return tuple(int(part) for part in version.split("."))

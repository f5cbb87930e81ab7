"""Shared by the benchmarks: model sizes, builders, timing, peak memory, the machine's matmul peak.

Peak memory on the CPU is the growth of the process's peak resident set during one call
(``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs`` after
``malloc_trim`` has returned freed memory; Linux with glibc only), so two
implementations can be measured in one process, one call after the other; on CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the call.
"""

from __future__ import annotations

import copy
import ctypes
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from llava_lite.config import LlavaConfig
from llava_lite.modeling import LlavaModel

SIZES: dict[str, dict[str, Any]] = {
    # CLIP-like tower at 224 px / 16 px patches (196 image tokens) + a small Llama.
    "small": {
        "vision": {
            "hidden_size": 192,
            "intermediate_size": 768,
            "num_hidden_layers": 4,
            "num_attention_heads": 3,
        },
        "llm": {
            "hidden_size": 256,
            "intermediate_size": 688,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        "image_size": 224,
        "patch_size": 16,
        "vocab_size": None,  # the 2,000-entry offline tokenizer
    },
    # Matmuls dominate: a wider, deeper Llama (~45M parameters) over the same 196 image tokens.
    "medium": {
        "vision": {
            "hidden_size": 384,
            "intermediate_size": 1536,
            "num_hidden_layers": 4,
            "num_attention_heads": 6,
        },
        "llm": {
            "hidden_size": 768,
            "intermediate_size": 2048,
            "num_hidden_layers": 6,
            "num_attention_heads": 12,
        },
        "image_size": 224,
        "patch_size": 16,
        "vocab_size": None,
    },
    # ViT-B/16-ish tower at 336 px / 14 px (576 image tokens) + a ~0.5B-parameter Llama (GPU).
    "large": {
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        "llm": {
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
        },
        "image_size": 336,
        "patch_size": 14,
        "vocab_size": 32000,
    },
    # 7B-class width (Llama-2-7B / Vicuna-7B layer shapes, 32K vocabulary) but 4 layers (GPU check).
    "7b_wide": {
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        "llm": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 4,
            "num_attention_heads": 32,
        },
        "image_size": 336,
        "patch_size": 14,
        "vocab_size": 32000,
    },
}
# The small model with a Llama/Vicuna-sized 32K vocabulary: the LM head is most of the work.
SIZES["vocab32k"] = {**copy.deepcopy(SIZES["small"]), "vocab_size": 32000}


def build(size: str, dtype: str = "float32", attn: str | None = None, **spec_overrides: Any) -> LlavaModel:
    """A random LlavaModel of ``SIZES[size]`` (no downloads), seeded, in train mode; the override
    ``pinpoints=((height, width), ...)`` makes it AnyRes (LLaVA-NeXT tiling) over those canvases,
    and ``onevision=True`` reads it the LLaVA-OneVision way (``anyres_max_9``, several images as
    base views, video)."""
    spec = {**SIZES[size], **spec_overrides}
    pinpoints = spec.get("pinpoints")
    anyres: dict[str, Any] = (
        {"image_aspect": "anyres", "anyres": {"grid_pinpoints": [list(p) for p in pinpoints]}}
        if pinpoints
        else {}
    )
    if spec.get("onevision"):  # LLaVA-OneVision: anyres_max_9, several images as base views, video
        anyres["anyres"].update(max_tiles=9, multi_image="base")
        anyres["video_token"] = "<video>"
    arch = {**spec["llm"], "max_position_embeddings": 8192}
    if spec["vocab_size"]:
        arch["vocab_size"] = spec["vocab_size"]
    cfg = LlavaConfig.from_dict(
        {
            "vision": {
                "arch": {**spec["vision"], "image_size": spec["image_size"], "patch_size": spec["patch_size"]}
            },
            "projector": {"type": "mlp2x_gelu"},
            "llm": {
                "model_type": "llama",
                "arch": arch,
                "dtype": dtype,
                "attn_implementation": attn,
                "tiny_tokenizer": {"vocab_size": 2000},
            },
            "model_max_length": 8192,
            **anyres,
        }
    )
    torch.manual_seed(0)
    return LlavaModel(cfg).train()


def interleaved(fns: dict[str, Callable[[], object]], device: str, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, after one warm-up call each; the calls alternate
    (a, b, a, b, ...) so every function sees the same machine load."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024  # type: ignore[union-attr]


def peak_memory(fn: Callable[[], object], device: str) -> int:
    """Bytes the process's peak memory grows by during one call of ``fn``."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so the peak is this call's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak resident set := current
    base = _status_bytes("VmRSS")
    fn()
    return _status_bytes("VmHWM") - base


def matmul_peak_flops(
    device: str, dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 1.0
) -> float:
    """Measured matmul FLOP/s of this machine (square ``n`` x ``n`` matmuls for about ``seconds``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - start)


def machine() -> dict[str, Any]:
    """What the figures depend on: threads, device, versions."""
    import transformers

    return {
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }

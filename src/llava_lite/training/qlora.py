"""QLoRA's two ends: the export merge and the 4-bit base inside Lightning checkpoints.

The LLM is loaded in 4 bits (``model.llm.quantization``, bitsandbytes) and trains through LoRA
(``training.freeze.apply_lora``). Export dequantises the base and merges the adapters into it
(:func:`merged_llm`), so the saved model is full precision and computes what the trained one did.
Checkpoints hold the frozen 4-bit base with its quantisation constants, which bitsandbytes writes
but cannot load into a built layer; :func:`load_quant_state` rebuilds the 4-bit weights from them.
"""

from __future__ import annotations

import torch
from torch import nn

from llava_lite.modeling.llm import is_quantized


def merged_llm(llm: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The LLM as a plain full-precision transformers model, for export: LoRA merged, 4-bit dequantised.

    A 4-bit (QLoRA) base is dequantised and each adapter merged into it in float32, then cast to
    ``dtype``: the merged model computes what the trained 4-bit model with adapters computed.
    peft's ``merge_and_unload`` would quantise the merged weights to 4 bits again, a second
    rounding the trained model never saw; merging into the original (unquantised) checkpoint
    instead would give a base the adapters were not trained on.
    """
    if not is_quantized(llm):
        return llm.merge_and_unload() if hasattr(llm, "merge_and_unload") else llm
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight

    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    lora_layers = [(name, m) for name, m in base.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in lora_layers:
        inner = layer.get_base_layer()
        if isinstance(inner, bnb.nn.Linear4bit):
            weight = dequantize_bnb_weight(inner.weight, state=inner.weight.quant_state).float()  # [out, in]
        else:
            weight = inner.weight.detach().float()  # [out, in]
        bias = None if inner.bias is None else inner.bias.detach().float()  # [out]
        variants, biased = getattr(layer, "lora_variant", {}), getattr(layer, "lora_bias", {})
        for adapter in layer.active_adapters:
            if adapter not in layer.lora_A:
                continue
            if adapter in variants:  # DoRA and other variants merge their own way
                weight = variants[adapter].merge_safe(layer, adapter, weight)
            else:
                weight = weight + layer.get_delta_weight(adapter).float()
            if biased.get(adapter, False):
                extra = layer.lora_B[adapter].bias.detach().float()  # [out]
                bias = extra if bias is None else bias + extra
        linear = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        linear.requires_grad_(False)
        base.set_submodule(name, linear)
    if any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules()):  # layers LoRA did not target
        base.dequantize(dtype=dtype)  # transformers' own; also drops the quantisation config
    else:
        base.hf_quantizer.remove_quantization_config(base)
    return base.to(dtype)  # prepare_model_for_kbit_training upcast the rest to float32


def load_quant_state(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> int:
    """Rebuild ``module``'s 4-bit weights from a checkpoint's ``state_dict``, so it loads strictly.

    bitsandbytes saves each 4-bit weight's quantisation constants (``weight.absmax``,
    ``weight.quant_map``, ``weight.nested_*``, ``weight.quant_state.*``) beside the packed weight,
    but a built ``Linear4bit`` cannot load them. Each such weight is rebuilt from the checkpoint's
    packed data and constants (``Params4bit.from_prequantized``, what transformers does for a
    saved 4-bit model) and the constants leave ``state_dict``; the packed weight stays for
    ``load_state_dict``. Returns how many weights were rebuilt.
    """
    from bitsandbytes.nn import Params4bit

    rebuilt = 0
    for name, param in list(module.named_parameters()):
        if not isinstance(param, Params4bit):
            continue
        prefix = name + "."
        stats = {
            key[len(prefix) :]: state_dict.pop(key) for key in list(state_dict) if key.startswith(prefix)
        }
        if not stats or name not in state_dict:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        weight = Params4bit.from_prequantized(
            data=state_dict[name],
            quantized_stats=stats,
            requires_grad=False,
            device=param.device,
            module=owner,
        )
        setattr(owner, attr, weight)
        rebuilt += 1
    return rebuilt

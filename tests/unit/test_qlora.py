"""QLoRA's model side on a CPU: 4-bit NF4 linear layers, what trains, one clear error per bad setting.

bitsandbytes' CPU backend runs NF4 forward and backward here (dequantise, then a float32 matmul),
so these run in the suite; where it does not, they skip with the backend's own error.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from llava_lite.config import LlavaConfig, LLMConfig
from llava_lite.modeling.llm import is_quantized
from llava_lite.training import LlavaLitModule

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'llava_lite[qlora]'")
pytest.importorskip("peft", reason="QLoRA needs peft: pip install 'llava_lite[qlora]'")


def _cpu_4bit_backward() -> str | None:
    """None if a 4-bit NF4 layer runs forward and backward on this CPU, else why not."""
    try:
        layer = bnb.nn.Linear4bit(8, 8, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
        x = torch.randn(2, 8, requires_grad=True)
        layer(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    except Exception as err:  # the backend's own words are the skip reason
        return f"bitsandbytes {bnb.__version__} cannot run 4-bit NF4 forward + backward on this CPU: {err!r}"
    return None


_NO_CPU_BACKEND = _cpu_4bit_backward()
pytestmark = pytest.mark.skipif(_NO_CPU_BACKEND is not None, reason=str(_NO_CPU_BACKEND))

QUANTIZATION = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"}


def _tiny(quantization: dict[str, Any] | None = QUANTIZATION) -> dict[str, Any]:
    model = LlavaConfig.from_name("tiny").to_dict()
    model["llm"]["quantization"] = quantization
    return model


def _qlora_module(**kwargs: Any) -> LlavaLitModule:
    torch.manual_seed(0)
    return LlavaLitModule(model=_tiny(), stage="finetune", lora=LORA, **kwargs)


def test_llm_linear_layers_are_4bit_nf4_and_only_adapters_and_projector_train() -> None:
    module = _qlora_module()
    llm = module.model.llm
    assert is_quantized(llm)
    # every linear layer of the decoder except LoRA's own is 4-bit
    base_linears = {
        name: m
        for name, m in llm.get_decoder().named_modules()
        if isinstance(m, torch.nn.Linear) and ".lora_" not in name
    }
    four_bit = [m for m in base_linears.values() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == len(base_linears) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    for layer in four_bit:
        assert isinstance(layer.weight, bnb.nn.Params4bit) and layer.weight.dtype == torch.uint8
        state = layer.weight.quant_state
        assert state.quant_type == "nf4" and state.nested  # double quantisation: the scales are 8-bit too
        assert layer.compute_dtype == torch.float32
    # the LM head and embeddings stay full precision (and frozen), as transformers leaves them
    assert type(llm.get_output_embeddings()) is torch.nn.Linear
    assert llm.get_input_embeddings().weight.dtype == torch.float32
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("model.projector.") for n in trainable)
    assert any(".lora_A." in n for n in trainable) and any(".lora_B." in n for n in trainable)
    projector = list(module.model.projector.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in projector)
    assert not any(p.requires_grad for p in module.model.vision_tower.parameters())
    assert not any(isinstance(p, bnb.nn.Params4bit) for p in module.model.vision_tower.parameters())


def test_off_leaves_the_llm_full_precision() -> None:
    module = LlavaLitModule(model=_tiny(None), stage="finetune", lora=LORA)
    assert not is_quantized(module.model.llm)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in module.model.modules())


def test_eval_forward_does_not_change_later_training_gradients() -> None:
    """bitsandbytes 0.50 repacks a 4-bit weight for a bf16 CPU kernel at an eval forward on an
    AVX512-BF16 CPU, and later backprops through that kernel, which has no autograd formula;
    ``build_llm`` keeps CPU layers on the dequantise-and-matmul path, so a validation pass
    between steps leaves the gradients as they were."""
    module = _qlora_module()
    model = module.model
    for name, p in model.named_parameters():
        if ".lora_B." in name:  # B starts at zero: give the adapters a say
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(10, 400, (2, 16))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, labels=ids)
    after = gradients()
    assert before.keys() == after.keys() and len(before) > 0
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"bits": 8}, r"model\.llm\.quantization\.bits=8; valid: \[4\]"),
        ({"quant_type": "int4"}, r"quant_type='int4'; valid: \['nf4', 'fp4'\]"),
        ({"compute_dtype": "float64"}, r"compute_dtype='float64'; valid: \[None, 'float32'"),
        ("4bit", r"model\.llm\.quantization='4bit'; valid: null or a mapping"),
    ],
)
def test_a_bad_setting_is_one_clear_error(setting: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMConfig(quantization=setting)


def test_the_4bit_llm_trains_only_through_lora(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"through LoRA only; set module\.lora"):
        LlavaLitModule(model=_tiny(), stage="finetune")
    with pytest.raises(ValueError, match=r"module\.init_from loads a saved folder in full precision"):
        LlavaLitModule(model=_tiny(), stage="finetune", lora=LORA, init_from=str(tmp_path))
    # stage 1 over a frozen 4-bit LLM is allowed: only the projector trains
    stage1 = LlavaLitModule(model=_tiny(), stage="pretrain")
    assert {n.split(".")[1] for n, p in stage1.named_parameters() if p.requires_grad} == {"projector"}

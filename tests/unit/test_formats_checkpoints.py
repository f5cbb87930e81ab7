"""Checkpoint formats of the original project and of llava-hf, on tiny hand-made folders.

- llava-hf folders as released (partial ``text_config``, padded vocabulary, fp16, legacy
  ``language_model.model.*`` keys, sharded safetensors with an index);
- export -> transformers' ``AutoProcessor`` + ``generate`` give our prompts, inputs and tokens;
- the original LLaVA's stage-1 ``mm_projector.bin`` and full ``LlavaLlamaForCausalLM`` folders;
- image preprocessing against LLaVA's ``expand2square`` + CLIP preprocessing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    SiglipImageProcessor,
)
from transformers import LlavaConfig as HFLlavaConfig

from helpers import TINY_TEXT_ARCH, TINY_VISION_ARCH, tiny_llava
from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaCollator, LlavaProcessor
from llava_lite.modeling import LlavaModel, build_projector, build_tiny_tokenizer, load_pretrained
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava, import_hf_llava
from llava_lite.modeling.formats.original_llava import (
    import_original_llava,
    is_original_llava,
    read_state_dict,
)
from llava_lite.modeling.tokenizer import default_corpus
from llava_lite.training import LlavaLitModule, load_projector

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with noise: resampling differences show, as on a real photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) % 256], -1) + rng.normal(
        0, 20, (height, width, 3)
    )
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _shard(state: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> None:
    """Write ``state`` as sharded safetensors with a ``model.safetensors.index.json``."""
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: state[k].contiguous() for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": weight_map,
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _image_tokenizer(kind: str = "sentencepiece"):
    """A tiny offline tokenizer with ``<image>`` as a special token."""
    tokenizer = build_tiny_tokenizer(kind)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer


def _clip_336() -> CLIPImageProcessor:
    """CLIP ViT-L/14-336's image processor (LLaVA v1.5): shortest edge 336, centre crop 336."""
    return CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


# ---- llava-hf as released ------------------------------------------------------------------
def _llava_hf_release(folder: Path) -> None:
    """A folder laid out like ``llava-hf/llava-1.5-7b-hf`` (tiny): legacy keys, fp16, padded vocab."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _image_tokenizer()  # "<image>" already in the vocabulary
    padded_vocab = 832  # > len(tokenizer): the released vocabulary is padded (32064 for 32002 tokens)
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "model_type": "llava",
        "pad_token_id": tokenizer.pad_token_id,
        "projector_hidden_act": "gelu",
        "text_config": {  # partial: everything else is LlamaConfig's default
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": padded_vocab,
            **TINY_TEXT_ARCH,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {
            "model_type": "clip_vision_model",
            "projection_dim": 16,
            "vocab_size": 32000,
            **TINY_VISION_ARCH,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": padded_vocab,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(5)
    arch = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}
    reference = LlavaForConditionalGeneration(HFLlavaConfig(**arch))
    legacy = {}  # the key layout transformers < 4.52 wrote, as on the hub
    for key, value in reference.state_dict().items():
        for new, old in (
            ("model.language_model.", "language_model.model."),
            ("model.vision_tower.", "vision_tower."),
            ("model.multi_modal_projector.", "multi_modal_projector."),
            ("lm_head.", "language_model.lm_head."),
        ):
            if key.startswith(new):
                legacy[old + key.removeprefix(new)] = value.half()
                break
        else:
            raise AssertionError(f"unmapped key {key}")
    _shard(legacy, folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(folder)


def test_llava_hf_release_layout_imports_with_equal_logits(tmp_path) -> None:
    _llava_hf_release(tmp_path)
    model = import_hf_llava(tmp_path).float().eval()
    reference = LlavaForConditionalGeneration.from_pretrained(tmp_path).float().eval()
    assert model.num_image_tokens == 16 and model.image_token_id == reference.config.image_token_index
    assert model.llm.get_input_embeddings().weight.shape[0] == 832  # the padded vocabulary is kept
    assert model.config.llm.dtype == "float16"
    tok = model.tokenizer
    ids = tok("USER: <image>\nWhat is in the picture? ASSISTANT:", return_tensors="pt").input_ids[0]
    at = int((ids == model.image_token_id).nonzero()[0])
    input_ids = torch.cat([ids[:at], torch.full((16,), model.image_token_id), ids[at + 1 :]])[None]
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(input_ids=input_ids, pixel_values=pixels).logits
        torch.testing.assert_close(model(input_ids, pixel_values=pixels).logits, expected)
        # load_pretrained recognises the folder and imports it the same way.
        via = load_pretrained(tmp_path).float().eval()
        torch.testing.assert_close(via(input_ids, pixel_values=pixels).logits, expected)


@pytest.mark.parametrize(
    ("vision_type", "text_type", "strategy", "layer", "tied"),
    [
        ("siglip_vision_model", "qwen2", "full", -1, True),  # like llava-hf/llava-interleave-qwen-0.5b-hf
        ("clip_vision_model", "mistral", "default", -2, False),  # like llava-hf/bakLlava-v1-hf
    ],
    ids=["siglip-qwen2-tied", "clip-mistral"],
)
def test_llava_hf_other_families_import_with_equal_logits(
    tmp_path, vision_type: str, text_type: str, strategy: str, layer: int, tied: bool
) -> None:
    tokenizer = _image_tokenizer("bpe" if text_type == "qwen2" else "sentencepiece")
    config = HFLlavaConfig(
        vision_config={"model_type": vision_type, **TINY_VISION_ARCH},
        text_config={
            "model_type": text_type,
            "vocab_size": len(tokenizer),
            "tie_word_embeddings": tied,
            **TINY_TEXT_ARCH,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layer,
        image_seq_length=16,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(4)
    reference = LlavaForConditionalGeneration(config).eval()
    reference.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    if vision_type.startswith("siglip"):
        SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    else:
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            tmp_path
        )
    model = import_hf_llava(tmp_path).eval()
    assert (model.config.llm.model_type, model.num_image_tokens) == (text_type, 16)
    input_ids = torch.tensor([[5, *[model.image_token_id] * 16, 6, 7, 8]])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids, pixels).logits, reference(input_ids=input_ids, pixel_values=pixels).logits
        )


def test_llava_hf_default_strategy_on_a_tower_without_cls_is_refused(tmp_path) -> None:
    """'default' drops one token whatever the tower; a SigLIP tower has no CLS to drop."""
    tokenizer = _image_tokenizer()
    config = HFLlavaConfig(
        vision_config={"model_type": "siglip_vision_model", **TINY_VISION_ARCH},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), **TINY_TEXT_ARCH},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        image_seq_length=15,
    )
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="drops the first token"):
        import_hf_llava(tmp_path)


# ---- export -> transformers processor and generate ---------------------------------------------
def _tiny() -> LlavaModel:
    return tiny_llava(conv_template="vicuna_v1", image_mean=CLIP_MEAN, image_std=CLIP_STD)


def test_exported_processor_and_generate_match_ours(tmp_path) -> None:
    model = _tiny()
    export_to_hf_llava(model, tmp_path)
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    hf_processor = AutoProcessor.from_pretrained(tmp_path)
    ours = LlavaProcessor.from_model(model)
    image = _photo(32, 32)  # square: LLaVA's padding is a no-op, as in llava-hf's processor

    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is it?"}]}]
    prompt = hf_processor.apply_chat_template(chat, add_generation_prompt=True)
    assert prompt == VICUNA_SYSTEM + " USER: <image>\nWhat shape is it? ASSISTANT:"
    # Multi-turn, string contents: the same text our template renders.
    history = [("<image>\nWhat shape is it?", "A circle."), ("And its colour?", "Red.")]
    turns = [{"role": r, "content": c} for q, a in history for r, c in (("user", q), ("assistant", a))]
    rendered = hf_processor.apply_chat_template(
        [*turns, {"role": "user", "content": "Anything else?"}], add_generation_prompt=True
    )
    assert rendered == (
        VICUNA_SYSTEM + " USER: <image>\nWhat shape is it? ASSISTANT: A circle.</s>USER: And its colour? "
        "ASSISTANT: Red.</s>USER: Anything else? ASSISTANT:"
    )

    enc = hf_processor(images=image, text=prompt, return_tensors="pt")
    mine = ours.prompt("What shape is it?", image)
    assert enc["input_ids"][0].tolist() == mine["input_ids"].tolist()
    torch.testing.assert_close(enc["pixel_values"][0], mine["pixel_values"])

    stop = {"eos_token_id": model.tokenizer.eos_token_id, "pad_token_id": model.tokenizer.pad_token_id}
    with torch.no_grad():
        theirs = hf.generate(**enc, max_new_tokens=8, do_sample=False, **stop)[:, enc["input_ids"].shape[1] :]
        our_tokens = model.generate(mine["input_ids"][None], mine["pixel_values"][None], max_new_tokens=8)
    assert our_tokens.tolist() == theirs.tolist()


def test_left_padded_batch_matches_transformers_processor_and_generate(tmp_path) -> None:
    model = _tiny()
    export_to_hf_llava(model, tmp_path)
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    hf_processor = AutoProcessor.from_pretrained(tmp_path)
    hf_processor.tokenizer.padding_side = "left"
    ours = LlavaProcessor.from_model(model)
    questions = ["What shape is it?", "Describe the colours of every shape in the picture in detail please."]
    images = [_photo(32, 32, seed=1), _photo(32, 32, seed=2)]
    prompts = [
        hf_processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in questions
    ]
    enc = hf_processor(images=images, text=prompts, return_tensors="pt", padding=True)
    collate = LlavaCollator(ours.pad_token_id, 512, padding_side="left", image_token_id=ours.image_token_id)
    items = [ours.prompt(q, image) for q, image in zip(questions, images, strict=True)]
    batch = collate([{**item, "labels": item["input_ids"]} for item in items])
    assert torch.equal(batch["input_ids"], enc["input_ids"])
    assert torch.equal(batch["attention_mask"], enc["attention_mask"])
    stop = {"eos_token_id": model.tokenizer.eos_token_id, "pad_token_id": model.tokenizer.pad_token_id}
    with torch.no_grad():
        theirs = hf.generate(**enc, max_new_tokens=10, do_sample=False, **stop)[
            :, enc["input_ids"].shape[1] :
        ]
        our_tokens = model.generate(
            batch["input_ids"], batch["pixel_values"], batch["attention_mask"], max_new_tokens=10
        )
    assert our_tokens.tolist() == theirs.tolist()


def test_training_batch_loss_matches_transformers(tmp_path) -> None:
    """A collated batch mixing image and text-only rows: same logits and loss as llava-hf."""
    model = _tiny()
    export_to_hf_llava(model, tmp_path)
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    processor = LlavaProcessor.from_model(model)

    def chat(question: str, answer: str) -> dict:
        return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}

    items = [
        processor.process_record(chat("<image>\nWhat is it?", "A red circle."), _photo(40, 30, seed=1)),
        processor.process_record(chat("Hi there", "Hello, how can I help?"), None),
        processor.process_record(
            chat("Describe the picture.\n<image>", "Two squares."), _photo(30, 40, seed=2)
        ),
    ]
    batch = LlavaCollator(processor.pad_token_id, 512, image_token_id=processor.image_token_id)(items)
    with torch.no_grad():
        ours = model(
            batch["input_ids"], batch["pixel_values"], batch["attention_mask"], labels=batch["labels"]
        )
        theirs = hf(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
    torch.testing.assert_close(ours.logits, theirs.logits)
    torch.testing.assert_close(ours.loss, theirs.loss)


# ---- original LLaVA: stage-1 mm_projector.bin ---------------------------------------------------
@pytest.mark.parametrize(
    ("projector_type", "keys"),
    [
        ("mlp2x_gelu", ["0.weight", "0.bias", "2.weight", "2.bias"]),
        ("linear", ["weight", "bias"]),
    ],
)
def test_original_mm_projector_bin_initialises_our_projector(
    tmp_path, projector_type: str, keys: list[str]
) -> None:
    torch.manual_seed(1)
    source = build_projector(projector_type, 32, 48)
    # As LLaVA's pretrain run saves it: model.mm_projector.* in bf16, via torch.save.
    original = {f"model.mm_projector.{k}": v.to(torch.bfloat16) for k, v in source.state_dict().items()}
    assert sorted(original) == sorted(f"model.mm_projector.{k}" for k in keys)
    path = tmp_path / "mm_projector.bin"
    torch.save(original, path)
    target = build_projector(projector_type, 32, 48)
    load_projector(target, path, projector_type)
    for k, v in target.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, original[f"model.mm_projector.{k}"].float())
    wrong = build_projector("linear" if projector_type != "linear" else "mlp2x_gelu", 32, 48)
    with pytest.raises(ValueError, match=r"mm_projector\.bin does not fit this projector"):
        load_projector(wrong, path, "linear")


def test_stage_2_starts_from_an_original_mm_projector_bin(tmp_path) -> None:
    """``model.init_projector_from=.../mm_projector.bin`` in a finetune LlavaLitModule."""
    cfg = LlavaConfig.from_name("tiny").to_dict()
    torch.manual_seed(2)
    source = build_projector(
        "mlp2x_gelu", cfg["vision"]["arch"]["hidden_size"], cfg["llm"]["arch"]["hidden_size"]
    )
    path = tmp_path / "checkpoints" / "llava-v1.5-7b-pretrain" / "mm_projector.bin"
    path.parent.mkdir(parents=True)
    torch.save({f"model.mm_projector.{k}": v.half() for k, v in source.state_dict().items()}, path)
    module = LlavaLitModule(model={**cfg, "init_projector_from": str(path)}, stage="finetune")
    module.trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    module.setup("fit")
    for k, v in module.model.projector.state_dict().items():
        torch.testing.assert_close(v, source.state_dict()[k].half().float())


def test_mm_projector_bin_with_code_is_refused(tmp_path) -> None:
    path = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(2, 2), "extra": nn.Linear(2, 2)}, path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|not allowed"):
        load_projector(nn.Linear(2, 2), path, "linear")


# ---- original LLaVA: full LlavaLlamaForCausalLM folder ---------------------------------------
def _clip_folder(folder: Path) -> CLIPModel:
    """A local stand-in for ``openai/clip-vit-large-patch14-336`` (full CLIP + its processor)."""
    torch.manual_seed(7)
    text = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
    }
    clip = CLIPModel(CLIPConfig(vision_config=TINY_VISION_ARCH, text_config=text, projection_dim=8)).eval()
    clip.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(folder)
    return clip


def _vicuna_style_tokenizer(folder: Path) -> Any:
    """Only ``tokenizer.model`` + ``tokenizer_config.json`` (LlamaTokenizer, no pad), as LLaVA ships it."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(default_corpus()),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "model_max_length": 4096,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(folder)


def _original_llava(folder: Path, clip_folder: Path, with_vision: bool, pickle: bool = False) -> dict:
    """A tiny ``liuhaotian/llava-v1.5-7b``-style folder; returns the reference parts."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _vicuna_style_tokenizer(folder)  # no <image> token: the original splices at id -200
    torch.manual_seed(11)
    llm_cfg = LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=1, eos_token_id=2, **TINY_TEXT_ARCH
    )
    llm = LlamaForCausalLM(llm_cfg).eval()
    projector = build_projector(
        "mlp2x_gelu", TINY_VISION_ARCH["hidden_size"], TINY_TEXT_ARCH["hidden_size"]
    ).eval()
    config = {
        **{
            k: v
            for k, v in llm_cfg.to_dict().items()
            if k not in ("architectures", "model_type", "transformers_version")
        },
        "_name_or_path": "./checkpoints/vicuna-7b-v1-5",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "torch_dtype": "float32",
        "freeze_mm_mlp_adapter": False,
        "image_aspect_ratio": "pad",
        "mm_hidden_size": TINY_VISION_ARCH["hidden_size"],
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": str(clip_folder),
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False,
        "unfreeze_mm_vision_tower": False,
        "use_mm_proj": True,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = dict(llm.state_dict())
    state.update({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()})
    vision = CLIPModel.from_pretrained(clip_folder).vision_model.eval()
    if with_vision:  # a tower finetuned apart from its hub copy: the checkpoint's weights must win
        torch.manual_seed(13)
        for p in vision.parameters():
            p.data.add_(0.1 * torch.randn_like(p))
        state.update(
            {f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in vision.state_dict().items()}
        )
    if pickle:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        _shard(state, folder)
    return {"llm": llm, "projector": projector, "vision": vision, "tokenizer": tokenizer}


def _reference_logits(parts: dict, prompt_ids: list[int], pixels: torch.Tensor, at: int) -> torch.Tensor:
    """What the original computes: layer -2 patch features -> mm_projector -> spliced at the image token."""
    with torch.no_grad():
        hidden = parts["vision"](pixel_values=pixels, output_hidden_states=True).hidden_states[-2][
            :, 1:
        ]  # [1, P, Dv]
        features = parts["projector"](hidden)[0]  # [P, D]
        embeds = parts["llm"].get_input_embeddings()(torch.tensor(prompt_ids))  # [T, D]
        spliced = torch.cat([embeds[:at], features, embeds[at:]])[None]  # [1, T - 0 + P, D]
        return parts["llm"](inputs_embeds=spliced).logits


@pytest.mark.parametrize(
    "with_vision", [True, False], ids=["vision-in-checkpoint", "vision-from-mm_vision_tower"]
)
def test_original_llava_checkpoint_imports_with_equal_logits(tmp_path, with_vision: bool) -> None:
    _clip_folder(tmp_path / "clip")
    parts = _original_llava(tmp_path / "llava", tmp_path / "clip", with_vision)
    assert is_original_llava(tmp_path / "llava") and not is_original_llava(tmp_path / "clip")
    model = import_original_llava(tmp_path / "llava").eval()
    cfg = model.config
    assert (cfg.projector.type, cfg.vision.select_layer, cfg.vision.select_feature) == (
        "mlp2x_gelu",
        -2,
        "patch",
    )
    assert (cfg.image_aspect, cfg.conv_template, cfg.model_max_length) == ("pad", "vicuna_v1", 2048)
    assert model.num_image_tokens == 16 and model.image_token_id == len(parts["tokenizer"])

    # LLaVA's tokenizer_image_token: text chunks around <image>, BOS from the first chunk only.
    tok = parts["tokenizer"]
    before = tok(VICUNA_SYSTEM + " USER: ").input_ids
    after = tok("\nWhat is in the picture? ASSISTANT:").input_ids[1:]
    pixels = LlavaProcessor.from_model(model).preprocess_image(_photo(40, 28))[None]  # [1, 3, 32, 32]
    expected = _reference_logits(parts, before + after, pixels, len(before))
    ours_ids = torch.tensor([before + [model.image_token_id] * 16 + after])
    with torch.no_grad():
        torch.testing.assert_close(model(ours_ids, pixel_values=pixels).logits[..., : len(tok)], expected)

    # Its tokenizer (tokenizer.model only) trains with exact labels once <image> and pad are added.
    record = {
        "conversations": [
            {"from": "human", "value": "What is in the picture?\n<image>"},
            {"from": "gpt", "value": "A red circle."},
        ]
    }
    sample = LlavaProcessor.from_model(model).process_record(record, _photo(40, 28))
    trained = sample["input_ids"][sample["labels"] != -100].tolist()
    assert model.tokenizer.decode(trained).strip() == "A red circle.</s>"
    assert model.tokenizer.pad_token == "<unk>"  # as LLaVA sets it for Vicuna

    with torch.no_grad():
        via = load_pretrained(tmp_path / "llava").eval()
        torch.testing.assert_close(via(ours_ids, pixel_values=pixels).logits[..., : len(tok)], expected)

    # It saves and reloads as a llava_lite model, offline.
    model.save_pretrained(tmp_path / "ours")
    with torch.no_grad():
        reloaded = LlavaModel.from_pretrained(tmp_path / "ours").eval()
        torch.testing.assert_close(reloaded(ours_ids, pixel_values=pixels).logits[..., : len(tok)], expected)

    # Original -> llava-hf, what transformers' convert_llava_weights_to_hf does.
    export_to_hf_llava(model, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=ours_ids, pixel_values=pixels).logits[..., : len(tok)], expected
        )


def test_original_llava_next_checkpoint_imports_with_its_grids_and_newline(tmp_path) -> None:
    """A LLaVA-NeXT folder (anyres, spatial_unpad, (width, height) pinpoints, model.image_newline)."""
    _clip_folder(tmp_path / "clip")
    _original_llava(tmp_path / "llava", tmp_path / "clip", with_vision=True)
    folder = tmp_path / "llava"
    config = json.loads((folder / "config.json").read_text())
    original_pinpoints = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # (width, height), 32 px tiles
    config.update(
        image_aspect_ratio="anyres",
        mm_patch_merge_type="spatial_unpad",
        image_grid_pinpoints=original_pinpoints,
    )
    (folder / "config.json").write_text(json.dumps(config))
    state = read_state_dict(folder)
    newline = torch.randn(TINY_TEXT_ARCH["hidden_size"], generator=torch.Generator().manual_seed(5))
    for shard in folder.glob("model*.safetensors*"):
        shard.unlink()
    _shard({**state, "model.image_newline": newline}, folder)

    model = load_pretrained(folder).eval()
    assert model.config.image_aspect == "anyres"
    assert model.config.anyres.grid_pinpoints == [[h, w] for w, h in original_pinpoints]
    torch.testing.assert_close(model.image_newline.weight, newline, rtol=0, atol=0)
    # A tie (every image up to 32 px here): the original reads [32, 64] as 32 wide, 64 high.
    assert model.image_grid.grid_shape(20, 20) == (2, 1)
    assert model.image_grid.grid_shape(20, 90) == (1, 3)  # no tie: the same grid either way

    # Its llava-hf export is a LlavaNext folder transformers runs with equal logits.
    export_to_hf_llava(model, tmp_path / "hf")
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = LlavaProcessor.from_model(model)
    prompt = processor.prompt("What is in the picture?", _photo(20, 20))
    ids = prompt["input_ids"][None]
    with torch.no_grad():
        ours = model(ids, pixel_values=prompt["pixel_values"], image_sizes=prompt["image_sizes"]).logits
        theirs = hf(
            input_ids=ids,
            pixel_values=prompt["pixel_values"][None],
            image_sizes=torch.tensor(prompt["image_sizes"]),
        ).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_original_llava_pickle_weights_need_allow_pickle(tmp_path) -> None:
    _clip_folder(tmp_path / "clip")
    _original_llava(tmp_path / "llava", tmp_path / "clip", with_vision=False, pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        import_original_llava(tmp_path / "llava")
    model = import_original_llava(tmp_path / "llava", allow_pickle=True)
    assert model.config.projector.type == "mlp2x_gelu"


def test_original_stage_1_folder_points_to_its_projector(tmp_path) -> None:
    """LLaVA's pretrain output: config.json with mm_* keys and mm_projector.bin, no LLM weights."""
    _clip_folder(tmp_path / "clip")
    _original_llava(tmp_path / "llava", tmp_path / "clip", with_vision=False)
    for shard in (tmp_path / "llava").glob("model*.safetensors*"):
        shard.unlink()
    torch.save({"model.mm_projector.0.weight": torch.zeros(48, 32)}, tmp_path / "llava" / "mm_projector.bin")
    with pytest.raises(FileNotFoundError, match=r"init_projector_from=.*mm_projector\.bin"):
        load_pretrained(tmp_path / "llava")


def test_original_llava_unsupported_variants_fail_loudly(tmp_path) -> None:
    _clip_folder(tmp_path / "clip")
    _original_llava(tmp_path / "llava", tmp_path / "clip", with_vision=False)
    config_file = tmp_path / "llava" / "config.json"
    base = json.loads(config_file.read_text())
    for change, message in (
        ({"image_aspect_ratio": "anyres"}, "anyres"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"model_type": "llava_mpt"}, "llava_mpt"),
    ):
        config_file.write_text(json.dumps({**base, **change}))
        with pytest.raises(ValueError, match=message):
            import_original_llava(tmp_path / "llava")


# ---- image preprocessing ----------------------------------------------------------------------
def _expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA's expand2square: the image centred on a square of the mean colour."""
    w, h = image.size
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


@pytest.mark.parametrize("size", [(500, 375), (300, 480)], ids=["landscape", "portrait"])
def test_pad_preprocessing_matches_llava_expand2square(size: tuple[int, int]) -> None:
    clip_336 = _clip_336()
    tok = _image_tokenizer()
    image = _photo(*size)
    ours = LlavaProcessor(tok, clip_336, num_image_tokens=4, image_aspect="pad").preprocess_image(image)
    square = _expand2square(image, tuple(int(m * 255) for m in CLIP_MEAN))
    assert square.getpixel((0, 0)) == (122, 116, 104)  # the original's background colour
    theirs = clip_336(images=square, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, theirs)
    # Independently of transformers: bicubic resize, rescale, CLIP normalisation.
    resized = np.asarray(square.resize((336, 336), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    manual = torch.from_numpy((resized - CLIP_MEAN) / CLIP_STD).permute(2, 0, 1).float()
    torch.testing.assert_close(ours, manual, atol=0.02, rtol=0)
    assert float((ours - manual).abs().mean()) < 1e-3


@pytest.mark.parametrize("size", [(500, 375), (300, 480)], ids=["landscape", "portrait"])
def test_crop_preprocessing_matches_clip_processor_and_llava_hf(size: tuple[int, int]) -> None:
    """``crop`` is LLaVA's "square" path and llava-hf's processor: CLIP's resize + centre crop."""
    clip_336 = _clip_336()
    tok = _image_tokenizer()
    image = _photo(*size)
    ours = LlavaProcessor(tok, clip_336, num_image_tokens=4, image_aspect="crop").preprocess_image(image)
    torch.testing.assert_close(ours, clip_336(images=image, return_tensors="pt")["pixel_values"][0])

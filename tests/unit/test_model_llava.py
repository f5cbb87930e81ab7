"""LlavaModel: splicing, loss masking, mixed batches, generation and save/load, on the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from llava_lite.config import LlavaConfig
from llava_lite.modeling import IGNORE_INDEX, LlavaModel, load_pretrained


@pytest.fixture(scope="module")
def model() -> LlavaModel:
    torch.manual_seed(0)
    return LlavaModel(LlavaConfig.from_name("tiny")).eval()


def _row(model: LlavaModel, text: str, images: int = 1) -> torch.Tensor:
    """``<s>`` + one image block per image + text ids, as the processor would lay them out."""
    ids = model.tokenizer(text, return_tensors="pt").input_ids[0]
    block = torch.full((model.num_image_tokens,), model.image_token_id)
    return torch.cat([ids[:1], *([block] * images), ids[1:]])


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_tiny_preset_builds_a_complete_model(model: LlavaModel) -> None:
    assert set(model.components()) == {"vision_tower", "projector", "llm"}
    # tiny CLIP: 32 px / 8 px patches = 16 patch tokens, CLS dropped ("patch").
    assert model.num_image_tokens == 16 == model.vision_tower.num_image_tokens
    assert model.tokenizer.convert_ids_to_tokens(model.image_token_id) == "<image>"
    assert model.llm.get_input_embeddings().weight.shape[0] == len(model.tokenizer)
    assert model.tokenizer.pad_token is not None


def test_forward_returns_loss_and_logits(model: LlavaModel) -> None:
    input_ids = torch.stack([_row(model, "a red circle"), _row(model, "a red square")])
    out = model(input_ids, pixel_values=_pixels(2), labels=input_ids.clone())
    assert out.logits.shape == (2, input_ids.shape[1], len(model.tokenizer))
    assert torch.isfinite(out.loss)


def test_image_features_land_in_image_slots(model: LlavaModel) -> None:
    ids = _row(model, "what is this", images=2)
    pixels = _pixels(2)
    embeds = model.embed_inputs(ids[None], pixels)[0]  # [T, D]
    features = model.encode_images(pixels)  # [2, P, D]
    slots = (ids == model.image_token_id).nonzero().squeeze(-1)
    torch.testing.assert_close(embeds[slots], features.reshape(-1, features.shape[-1]))
    text = (ids != model.image_token_id).nonzero().squeeze(-1)
    torch.testing.assert_close(embeds[text], model.llm.get_input_embeddings()(ids[text]))


def test_image_slots_are_ignored_in_loss(model: LlavaModel) -> None:
    ids = _row(model, "two blue triangles")[None]
    pixels = _pixels(1)
    out = model(ids, pixel_values=pixels, labels=ids.clone())
    # Recompute by hand: shift, drop image positions from the targets.
    logits = out.logits[0, :-1]
    targets = ids[0, 1:].masked_fill(ids[0, 1:] == model.image_token_id, IGNORE_INDEX)
    expected = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, expected)


def test_count_mismatch_names_expected_and_found(model: LlavaModel) -> None:
    ids = _row(model, "one image")[None]
    with pytest.raises(ValueError, match=r"16 image-token slots.*2 image\(s\) make 32 \(\[16, 16\]\); row 0"):
        model(ids, pixel_values=_pixels(2))
    with pytest.raises(ValueError, match="0 image"):
        model(ids)
    truncated = ids[:, :10]  # image block cut short
    with pytest.raises(ValueError, match="image tokens do not match"):
        model(truncated, pixel_values=_pixels(1))


def test_text_only_rows_mix_with_image_rows(model: LlavaModel) -> None:
    with_image = _row(model, "a green star")
    text_only = model.tokenizer("a green star", return_tensors="pt").input_ids[0]
    pad = model.tokenizer.pad_token_id
    padded = torch.full_like(with_image, pad)
    padded[: text_only.numel()] = text_only
    mask = torch.zeros_like(padded)
    mask[: text_only.numel()] = 1
    batch = torch.stack([with_image, padded])
    attention = torch.stack([torch.ones_like(with_image), mask])
    out = model(batch, pixel_values=_pixels(1), attention_mask=attention)
    alone = model(text_only[None])
    torch.testing.assert_close(out.logits[1, : text_only.numel()], alone.logits[0], atol=1e-5, rtol=1e-5)


def test_greedy_generation_same_with_and_without_cache(model: LlavaModel) -> None:
    ids = _row(model, "describe the picture")[None]
    pixels = _pixels(1)
    cached = model.generate(ids, pixels, max_new_tokens=8, eos_token_id=-1, use_cache=True)
    uncached = model.generate(ids, pixels, max_new_tokens=8, eos_token_id=-1, use_cache=False)
    assert cached.shape == (1, 8)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_matches_each_prompt_alone(model: LlavaModel) -> None:
    long = _row(model, "how many shapes are in the picture")
    short = _row(model, "colour")
    pad = model.tokenizer.pad_token_id
    width = long.numel()
    padded = torch.cat([torch.full((width - short.numel(),), pad), short])
    batch = torch.stack([long, padded])
    mask = torch.stack(
        [torch.ones(width, dtype=torch.long), (torch.arange(width) >= width - short.numel()).long()]
    )
    pixels = _pixels(2)
    together = model.generate(batch, pixels, attention_mask=mask, max_new_tokens=6, eos_token_id=-1)
    first = model.generate(long[None], pixels[:1], max_new_tokens=6, eos_token_id=-1)
    second = model.generate(short[None], pixels[1:], max_new_tokens=6, eos_token_id=-1)
    assert torch.equal(together[0], first[0])
    assert torch.equal(together[1], second[0])


def test_generate_rejects_right_padding(model: LlavaModel) -> None:
    ids = _row(model, "hi")[None]
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="left padding"):
        model.generate(ids, _pixels(1), attention_mask=mask, max_new_tokens=2)


def test_save_and_load_round_trip_gives_identical_logits(model: LlavaModel, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["llava_lite_version"]
    assert LlavaConfig.from_dict(meta["llava_lite"]) == model.config
    assert (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = LlavaModel.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    assert loaded.image_token_id == model.image_token_id
    ids = _row(model, "a red circle")[None]
    pixels = _pixels(1)
    assert torch.equal(loaded(ids, pixels).logits, model(ids, pixels).logits)
    assert loaded.tokenizer("a <image> b").input_ids == model.tokenizer("a <image> b").input_ids


def test_from_pretrained_rejects_foreign_folders(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a llava_lite model folder"):
        LlavaModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="no 'llava_lite' key"):
        LlavaModel.from_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"model_type='llama': not one of \['llava_lite', 'llava_hf', 'original_llava'\]"
    ):
        load_pretrained(tmp_path)
    # A llava-hf folder is not a llava_lite folder: the error points to load_pretrained.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match=r"load_pretrained\(dir\) also reads llava-hf"):
        LlavaModel.from_pretrained(tmp_path)


def test_checkpoints_from_local_folders_and_offline_reload(tmp_path) -> None:
    """Vision and LLM load through name_or_path (the real-checkpoint path); the saved model then
    reloads from its own folder even after those source folders are gone."""
    torch.manual_seed(0)
    source = LlavaModel(LlavaConfig.from_name("tiny"))
    vision_dir, llm_dir = tmp_path / "vision", tmp_path / "llm"
    source.vision_tower.model.save_pretrained(vision_dir)
    source.image_processor.save_pretrained(vision_dir)
    source.llm.save_pretrained(llm_dir)
    source.tokenizer.save_pretrained(llm_dir)
    cfg = LlavaConfig.from_name("tiny")
    cfg.vision.name_or_path = str(vision_dir)
    cfg.llm.name_or_path = str(llm_dir)
    model = LlavaModel(cfg).eval()
    model.projector.load_state_dict(source.projector.state_dict())
    source.eval()
    ids = _row(model, "a red circle")[None]
    pixels = _pixels(1)
    torch.testing.assert_close(model(ids, pixels).logits, source(ids, pixels).logits)

    model.save_pretrained(tmp_path / "saved")
    for folder in (vision_dir, llm_dir):
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    reloaded = LlavaModel.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.llm.name_or_path == str(llm_dir)  # the config still names the originals
    assert torch.equal(reloaded(ids, pixels).logits, model(ids, pixels).logits)


def test_timm_tower_model_round_trip(tmp_path) -> None:
    cfg = LlavaConfig.from_name("tiny")
    cfg.vision = type(cfg.vision)(
        backend="timm",
        name_or_path="vit_tiny_patch16_224",
        arch={"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3},
    )
    model = LlavaModel(cfg).eval()
    assert model.num_image_tokens == 16
    ids = _row(model, "a shape")[None]
    pixels = _pixels(1)
    out = model(ids, pixels, labels=ids)
    assert torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    reloaded = LlavaModel.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(ids, pixels).logits, out.logits)


def test_sampling_is_seeded_and_stays_in_vocab(model: LlavaModel) -> None:
    ids = _row(model, "tell me a story")[None]
    pixels = _pixels(1)
    kwargs = {"max_new_tokens": 6, "do_sample": True, "temperature": 0.8, "top_p": 0.9, "eos_token_id": -1}
    torch.manual_seed(11)
    first = model.generate(ids, pixels, **kwargs)
    torch.manual_seed(11)
    second = model.generate(ids, pixels, **kwargs)
    assert torch.equal(first, second)
    assert first.shape == (1, 6) and int(first.max()) < len(model.tokenizer)

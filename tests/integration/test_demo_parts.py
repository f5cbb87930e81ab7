"""The demo's parts: tiny CLIP pretraining, LLM warm-up, answer scoring, settings."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llava_lite.config import VisionConfig
from llava_lite.demo.evaluate import normalize_answer
from llava_lite.demo.run import DemoSettings
from llava_lite.demo.text import LLMWarmupSettings, warmup_llm
from llava_lite.demo.vision import (
    NOTHING,
    WHAT_PHRASES,
    VisionPretrainSettings,
    cell_targets,
    pixel_statistics,
    pretrain_vision,
)
from llava_lite.generation.symbolic import load_coco
from llava_lite.modeling import VisionTower
from llava_lite.synthetic import build_world, load_scenes
from llava_lite.synthetic.language import article
from llava_lite.synthetic.tasks import caption_records


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    return build_world(
        tmp_path_factory.mktemp("world"), n_train=64, n_val=16, n_test=8, image_size=96, seed=2
    )


def test_normalize_answer() -> None:
    assert normalize_answer(" Three.") == "3"
    assert normalize_answer("The circle") == "circle"
    assert normalize_answer("RED!") == normalize_answer("red")
    assert normalize_answer("left") != normalize_answer("right")


def test_cell_targets_follow_the_scene(world) -> None:
    truth = {s.image_id: s for s in load_scenes(world, "train")}
    for ctx in load_coco(world.captions("train"), world.instances("train"))[:20]:
        by_cell = {o.cell: o for o in truth[ctx.image_id].objects}
        for k, target in enumerate(cell_targets(ctx)):
            obj = by_cell.get(divmod(k, 3))
            assert WHAT_PHRASES[target] == (NOTHING if obj is None else article(obj.noun()))


def test_pixel_statistics_center_the_world(world) -> None:
    stats = pixel_statistics(world)
    assert all(0.05 < m < 0.4 for m in stats["image_mean"]) and all(s > 0.05 for s in stats["image_std"])


def test_vision_pretraining_learns_and_loads_as_a_llava_tower(world, tmp_path) -> None:
    torch.set_num_threads(1)
    settings = VisionPretrainSettings(steps=60, batch_size=32, warmup_steps=6, hidden_size=64, intermediate_size=128,
                                      num_layers=3, text_hidden_size=64, projection_dim=64)  # fmt: skip
    result = pretrain_vision(world, tmp_path / "clip", settings)
    first, last = result.losses[0], result.losses[-1]
    assert last[1] < first[1] and last[2] < 0.7 * first[2]  # both losses fell
    assert 0.0 <= result.object_accuracy <= 1.0 and 0.0 <= result.position_accuracy <= 1.0
    tower = VisionTower(VisionConfig(name_or_path=str(tmp_path / "clip"), select_layer=-2))
    assert tower.num_image_tokens == 9 and tower.hidden_size == 64
    processor = tower.build_image_processor()
    assert processor.crop_size == {"height": 96, "width": 96}
    assert list(processor.image_mean) == pixel_statistics(world)["image_mean"]


def test_llm_warmup_trains_and_saves_a_hub_style_checkpoint(world, tmp_path) -> None:
    records = [
        {"id": str(i), "image": "x.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": c}]}
        for i, c in enumerate(["red", "blue", "green", "yellow"] * 8)
    ]  # fmt: skip
    captions = [r["conversations"][1]["value"] for r in caption_records(world, "train", 2)]
    settings = LLMWarmupSettings(hidden_size=64, intermediate_size=128, num_layers=2, steps=30, batch_size=8)
    result = warmup_llm(records, captions, tmp_path / "llm", settings)
    assert result.documents == len(records) + len(captions)
    assert result.losses[-1][1] < 0.7 * result.losses[0][1]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llm")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llm")
    assert model.config.vocab_size == len(tokenizer)
    assert json.loads((tmp_path / "llm" / "config.json").read_text())["model_type"] == "llama"


def test_quick_settings_are_smaller_than_full() -> None:
    full, quick = DemoSettings(), DemoSettings.quick()
    assert quick.n_train < full.n_train and quick.stage2.steps < full.stage2.steps
    assert quick.vision.steps < full.vision.steps and quick.llm.steps < full.llm.steps


def test_warmup_documents_put_a_caption_where_the_image_was(world) -> None:
    from llava_lite.demo.run import scene_captions
    from llava_lite.demo.text import build_documents
    from llava_lite.modeling.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("sentencepiece")
    texts = scene_captions(world)
    image = next(iter(texts))
    record = {"id": "r", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nHow many objects?"}, {"from": "gpt", "value": "2"}]}  # fmt: skip
    with_scene, without = (
        tokenizer.decode(build_documents([record], [], tokenizer, "vicuna_v1", m)[0]) for m in (texts, None)
    )
    assert f"USER: {texts[image]}\nHow many objects? ASSISTANT: 2" in with_scene
    assert "USER: How many objects? ASSISTANT: 2" in without and "<image>" not in with_scene + without

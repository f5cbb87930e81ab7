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
from llava_lite.demo.vision import VisionPretrainSettings, all_region_phrases, pretrain_vision, region_targets
from llava_lite.generation.symbolic import load_coco
from llava_lite.modeling import VisionTower
from llava_lite.synthetic import build_world, load_scenes
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


def test_region_targets_follow_the_scene(world) -> None:
    phrases = all_region_phrases(with_position=False)
    index = {p: i for i, p in enumerate(phrases)}
    truth = {s.image_id: s for s in load_scenes(world, "train")}
    for ctx in load_coco(world.captions("train"), world.instances("train"))[:20]:
        targets = region_targets(ctx, index, with_position=False)
        by_cell = {o.cell: o for o in truth[ctx.image_id].objects}
        for k, t in enumerate(targets):
            obj = by_cell.get(divmod(k, 3))
            assert phrases[t] == (
                "nothing" if obj is None else f"a {obj.noun()}".replace("a orange", "an orange")
            )


def test_vision_pretraining_learns_and_loads_as_a_llava_tower(world, tmp_path) -> None:
    torch.set_num_threads(1)
    settings = VisionPretrainSettings(steps=40, batch_size=32, warmup_steps=4, hidden_size=64, intermediate_size=128,
                                      num_layers=2, text_hidden_size=64, projection_dim=64)  # fmt: skip
    result = pretrain_vision(world, tmp_path / "clip", settings)
    first, last = result.losses[0], result.losses[-1]
    assert last[2] < 0.6 * first[2]  # the region loss fell
    assert result.region_accuracy > 1 / 48  # cells with an object: above guessing among 48 looks
    tower = VisionTower(VisionConfig(name_or_path=str(tmp_path / "clip"), select_layer=-2))
    assert tower.num_image_tokens == 9 and tower.hidden_size == 64
    processor = tower.build_image_processor()
    assert processor.crop_size == {"height": 96, "width": 96}


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

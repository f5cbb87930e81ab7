"""The demo's parts: tiny CLIP pretraining, LLM warm-up, answer scoring, settings."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llava_lite.config import VisionConfig
from llava_lite.demo.data import DemoData, described_first
from llava_lite.demo.evaluate import normalize_answer
from llava_lite.demo.run import stage_overrides
from llava_lite.demo.settings import demo_settings
from llava_lite.demo.text import SceneEmbedding, build_documents, warmup_llm
from llava_lite.demo.vision import (
    LOOKS,
    NOTHING,
    WHAT_PHRASES,
    cell_targets,
    pixel_statistics,
    pretrain_vision,
)
from llava_lite.modeling import VisionTower
from llava_lite.symbolic import load_coco
from llava_lite.synthetic import WorldPaths, build_world, load_scenes
from llava_lite.synthetic.language import article
from llava_lite.synthetic.tasks import caption_records, drill_records
from llava_lite.training import compose_config

FULL = demo_settings()  # the shipped recipe; tests shrink it with dataclasses.replace


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
    settings = dataclasses.replace(FULL.vision, steps=60, batch_size=32, warmup_steps=6, hidden_size=64,
                                   intermediate_size=128, num_layers=3)  # fmt: skip
    result = pretrain_vision(world, tmp_path / "clip", settings)
    first, last = result.losses[0], result.losses[-1]
    assert last[1] < first[1] and last[2] < 0.7 * first[2]  # both losses fell
    assert 0.0 <= result.object_accuracy <= 1.0 and 0.0 <= result.position_accuracy <= 1.0
    tower = VisionTower(VisionConfig(name_or_path=str(tmp_path / "clip"), select_layer=-2))
    assert tower.num_image_tokens == 9 and tower.hidden_size == 64
    processor = tower.build_image_processor()
    assert processor.crop_size == {"height": 96, "width": 96}
    assert list(processor.image_mean) == pixel_statistics(world)["image_mean"]


def _scenes(world) -> dict[str, list[int]]:
    return {
        c.file_name: cell_targets(c) for c in load_coco(world.captions("train"), world.instances("train"))
    }


def test_llm_warmup_trains_and_saves_a_hub_style_checkpoint(world, tmp_path) -> None:
    scenes = _scenes(world)
    records = [
        {"id": str(i), "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the top left?"},
            {"from": "gpt", "value": " ".join(LOOKS[cells[0]] or ("nothing",))}]}
        for i, (image, cells) in enumerate(scenes.items())
    ]  # fmt: skip
    captions = caption_records(world, "train", 2)
    settings = dataclasses.replace(
        FULL.llm, hidden_size=64, intermediate_size=128, num_layers=2, steps=60, batch_size=8, lr=3e-3,
        warmup_steps=3, long_answer_sample=1.0,
    )  # fmt: skip
    contexts = load_coco(world.captions("train"), world.instances("train"))
    drills = drill_records(contexts, 2, {"colour": 1.0, "count": 1.0}, seed=0, pool="train")
    result = warmup_llm(records, captions, drills, scenes, tmp_path / "llm", settings)
    drill_turns = sum(len(d["conversations"]) // 2 for d in drills)  # one document per question
    assert drill_turns > len(drills) and result.documents == len(records) + drill_turns + len(captions)
    assert result.losses[-1][1] < 0.7 * result.losses[0][1]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llm")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llm")
    assert model.config.vocab_size == len(tokenizer)
    assert "<image>" in tokenizer.all_special_tokens  # LLaVA reuses it: no embedding resize
    assert json.loads((tmp_path / "llm" / "config.json").read_text())["model_type"] == "llama"


def test_llm_warmup_packed_rows_keep_documents_apart(world) -> None:
    """A packed step's loss is the token mean of each document's loss alone: no attention across
    documents, positions restarting, and scene cells spliced into the right document."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava_lite.data.packing import PackingCollator
    from llava_lite.demo.text import _packed, embed_documents
    from llava_lite.modeling.llm import prepare_tokenizer
    from llava_lite.modeling.tokenizer import build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer("sentencepiece")
    image_id = prepare_tokenizer(tokenizer, "<image>")
    captions = caption_records(world, "train", 2)[:7]
    docs = build_documents([(r, "plain") for r in captions], _scenes(world), tokenizer)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128))  # fmt: skip
    scene = SceneEmbedding(32)
    collate = PackingCollator(tokenizer.pad_token_id, 100, image_token_id=image_id)
    batch = _packed(collate, docs, list(range(len(docs))))
    assert max(len(d.input_ids) for d in docs) <= 100  # nothing cut
    assert batch["input_ids"].shape[0] < len(docs) and "attention_mask" not in batch  # packed rows
    with torch.no_grad():
        embeds = embed_documents(llm, scene, batch["input_ids"], batch["cells"], image_id)
        packed = llm(
            inputs_embeds=embeds, position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False
        ).loss
        total = count = 0.0
        for d in docs:
            ids, labels = torch.tensor([d.input_ids]), torch.tensor([d.labels])
            alone = llm(
                inputs_embeds=embed_documents(llm, scene, ids, torch.tensor([d.cells]), image_id),
                labels=labels,
            )
            n = int((labels[:, 1:] != -100).sum())
            total, count = total + alone.loss * n, count + n
    assert torch.allclose(packed, total / count, atol=1e-5)


def test_llm_warmup_names_a_record_without_scene_cells(world, tmp_path) -> None:
    record = {"id": "lost-7", "image": "nowhere.png", "conversations": [
        {"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "2"}]}  # fmt: skip
    settings = dataclasses.replace(
        FULL.llm,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        steps=1,
        batch_size=1,
        long_answer_sample=1.0,
    )
    with pytest.raises(ValueError, match=r"lost-7.*nowhere\.png"):
        warmup_llm([record], [], [], _scenes(world), tmp_path / "llm", settings)
    captions = caption_records(world, "train", 1)[:3]
    short_rows = dataclasses.replace(settings, max_tokens_per_row=12)
    with pytest.raises(ValueError, match=r"record \S+_cap0 has \d+ tokens > max_tokens_per_row=12"):
        warmup_llm([], captions, [], _scenes(world), tmp_path / "llm", short_rows)  # never cut silently


def test_cell_looks_describe_every_cell_from_captions_and_boxes(world) -> None:
    truth = {s.image_id: s for s in load_scenes(world, "train")}
    for ctx in load_coco(world.captions("train"), world.instances("train"))[:20]:
        cells = cell_targets(ctx)
        assert len(cells) == 9
        by_cell = {o.cell: o for o in truth[ctx.image_id].objects}
        for k, look in enumerate(cells):
            obj = by_cell.get(divmod(k, 3))
            assert LOOKS[look] == (None if obj is None else (obj.size, obj.color, obj.shape))


def test_scene_embedding_adds_size_colour_and_shape() -> None:
    scene = SceneEmbedding(16)
    idx = {look: i for i, look in enumerate(LOOKS)}
    cells = [idx[("small", "red", "circle")], idx[("large", "red", "circle")],
             idx[("small", "blue", "cross")], idx[("large", "blue", "cross")], 0, 0]  # fmt: skip
    e = scene(torch.tensor(cells)[:, None])[:, 0]  # [6, 16]: each look alone in the top-left cell
    assert torch.allclose(e[0] - e[1], e[2] - e[3], atol=1e-6)  # the size difference is one vector
    corner = scene.row.weight[0] + scene.column.weight[0]
    assert (
        not torch.allclose(e[0], e[2])
        and torch.equal(e[4], e[5])
        and torch.allclose(e[4], scene.nothing + corner)
    )


def test_scene_embedding_positions_are_shared_along_rows_and_columns() -> None:
    idx = {look: i for i, look in enumerate(LOOKS)}
    same = torch.full((9,), idx[("small", "red", "circle")])
    e = SceneEmbedding(16)(same)  # [9, 16]: one look in every cell
    assert torch.allclose(e[0] - e[1], e[3] - e[4], atol=1e-6)  # left -> center is one vector in each row
    assert torch.allclose(e[0] - e[3], e[2] - e[5], atol=1e-6)  # top -> middle is one vector in each column
    assert not torch.allclose(e[0], e[4])  # cells of one look differ by their place


def test_short_answer_turns_make_one_document_per_closed_form_turn() -> None:
    from llava_lite.demo.text import long_answer_turns, short_answer_turns
    from llava_lite.synthetic.questions import SHORT_ANSWER_PROMPT

    record = {"id": "r1", "image": "a.png", "conversations": [
        {"from": "human", "value": f"<image>\nWhat color is the circle?\n{SHORT_ANSWER_PROMPT}"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Where is the circle?"}, {"from": "gpt", "value": "The circle is on the left."},
        {"from": "human", "value": f"How many objects are in the image?\n{SHORT_ANSWER_PROMPT}"},
        {"from": "gpt", "value": "2"}]}  # fmt: skip
    turns = short_answer_turns([record])
    assert [t["id"] for t in turns] == ["r1_turn0", "r1_turn2"] and all(t["image"] == "a.png" for t in turns)
    assert turns[1]["conversations"] == [
        {"from": "human", "value": f"<image>\nHow many objects are in the image?\n{SHORT_ANSWER_PROMPT}"},
        {"from": "gpt", "value": "2"},
    ]
    (sentence,) = long_answer_turns([record])  # the other turns: sentence answers
    assert sentence["id"] == "r1_turn1" and sentence["conversations"] == [
        {"from": "human", "value": "<image>\nWhere is the circle?"},
        {"from": "gpt", "value": "The circle is on the left."},
    ]


def _record(image: str, kind: str, k: int, turns: int) -> dict:
    messages = []
    for t in range(turns):
        question = f"{'<image>' + chr(10) if t == 0 else ''}{kind} question {t}?"
        messages += [{"from": "human", "value": question}, {"from": "gpt", "value": f"{kind} answer {t}."}]
    return {"id": f"{image}_{kind}_{k}", "image": image, "response_type": kind, "conversations": messages}


def test_described_first_opens_the_shorter_conversation_with_the_description() -> None:
    records = [
        _record("a.png", "conversation", 0, 3), _record("a.png", "conversation", 1, 2),
        _record("a.png", "detail", 0, 1), _record("a.png", "complex_reasoning", 0, 1),
        _record("b.png", "conversation", 0, 5), _record("b.png", "detail", 0, 1),  # too long to join
        _record("c.png", "conversation", 0, 2),  # no description to join
    ]  # fmt: skip
    assert described_first(records, 0.0, seed=0) == records
    out = described_first(records, 1.0, seed=0)
    assert [r["id"] for r in out] == [
        "a.png_conversation_0", "a.png_conversation_1_described", *(r["id"] for r in records[2:])
    ]  # fmt: skip
    joined = out[1]["conversations"]
    assert joined[:2] == records[2]["conversations"]  # the description, with the image, first
    assert [m["value"] for m in joined[2:]] == [
        "conversation question 0?", "conversation answer 0.", "conversation question 1?", "conversation answer 1."
    ]  # fmt: skip
    assert sum("<image>" in m["value"] for m in joined) == 1
    assert records[1]["conversations"][0]["value"].startswith("<image>")  # the input is not changed
    half = described_first(
        [_record(f"{i}.png", kind, 0, 2) for i in range(200) for kind in ("conversation", "detail")], 0.5, 0
    )
    assert 70 < sum(r["id"].endswith("_described") for r in half) < 130


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_stage_overrides_compose_the_shipped_experiment(stage: str, tmp_path) -> None:
    """A stage runs the shipped demo experiment with the demo's schedule, seed and parts."""
    settings = demo_settings(["seed=5", f"{stage}.steps=7", f"{stage}.lr=0.01", f"{stage}.batch_size=3"])
    data = DemoData(
        world=WorldPaths(tmp_path / "world"), train_contexts=[], instruct=[], captions=[],
        stage1_file=tmp_path / "captions.json", stage2_files=[tmp_path / "a.json", tmp_path / "b.json"],
        drills=[], held_out=[], paraphrased=[], generation={},
    )  # fmt: skip
    parts = {"vision": tmp_path / "clip", "llm": tmp_path / "llm", "projector": tmp_path / "p.safetensors"}
    cfg = compose_config(stage_overrides(settings, stage, data, parts, tmp_path))
    assert (cfg.seed, cfg.trainer.max_steps, cfg.module.optimizer.lr, cfg.data.batch_size) == (5, 7, 0.01, 3)
    assert cfg.model.vision.name_or_path == str(parts["vision"]) and cfg.model.llm.name_or_path == str(
        parts["llm"]
    )
    assert cfg.model.projector.type == "mlp2x_gelu+patch_positions" and "arch" not in cfg.model.llm
    assert cfg.model.vision.select_layer == settings.vision.feature_layer
    assert cfg.paths.output_dir == str(tmp_path / stage) and cfg.data.group_by_modality_length
    if stage == "stage1":
        assert cfg.module.stage == "pretrain" and cfg.model.conv_template == "plain"
        assert list(cfg.data.train_files) == [str(data.stage1_file)] and not cfg.export_model
    else:
        assert cfg.module.stage == "finetune" and cfg.model.conv_template == settings.llm.template
        assert list(cfg.data.train_files) == [str(f) for f in data.stage2_files] and cfg.export_model
        assert cfg.model.init_projector_from == str(parts["projector"])


def test_warmup_documents_put_one_image_position_per_cell(world) -> None:
    from llava_lite.modeling.llm import prepare_tokenizer
    from llava_lite.modeling.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("sentencepiece")
    image_id = prepare_tokenizer(tokenizer, "<image>")
    scenes = _scenes(world)
    image = next(iter(scenes))
    record = {"id": "r", "image": image, "conversations": [
        {"from": "human", "value": "How many objects? <image>"}, {"from": "gpt", "value": "2"}]}  # fmt: skip
    (doc,) = build_documents([(record, "vicuna_v1")], scenes, tokenizer)
    slots = [i for i, t in enumerate(doc.input_ids) if t == image_id]
    assert len(slots) == 9 and slots == list(range(slots[0], slots[0] + 9))  # one run, image first
    assert all(doc.labels[i] == -100 for i in slots)
    assert doc.cells == scenes[image]
    text = tokenizer.decode([t for t in doc.input_ids if t != image_id])
    assert text.endswith("USER: \nHow many objects? ASSISTANT: 2</s>")
    trained = tokenizer.decode([t for t in doc.labels if t != -100])
    assert "How many objects?" in trained and "2</s>" in trained  # next-token loss on all text


@pytest.mark.parametrize("pool", ["train", "varied"])
def test_drills_ask_true_closed_form_questions_in_training_wordings(world, pool) -> None:
    from llava_lite.synthetic.checker import check_turns
    from llava_lite.synthetic.questions import SHORT_ANSWER_PROMPT, WORDINGS

    contexts = load_coco(world.captions("train"), world.instances("train"))
    mix = {"colour": 0.5, "shape": 0.2, "count": 0.1, "position": 0.2}
    records = drill_records(contexts, 4, mix, seed=0, pool=pool)
    assert records == drill_records(contexts, 4, mix, 0, pool) != drill_records(contexts, 4, mix, 1, pool)
    assert [r["image"] for r in records] == [c.file_name for c in contexts]
    scenes = {s.image_id: s for s in load_scenes(world, "train")}

    def frames(pool: str) -> list[re.Pattern[str]]:
        return [
            re.compile(re.escape(f).replace(r"\{ref\}", ".+").replace(r"\{Ref\}", ".+"))
            for fs in WORDINGS[pool].values()
            for f in fs
        ]

    train, held_out = frames(pool), frames("held_out")
    asked, used = 0, set()
    for record, context in zip(records, contexts, strict=True):
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
        questions = [t["value"].removeprefix("<image>\n") for t in turns[::2]]
        assert 1 <= len(questions) <= 4 and len(set(questions)) == len(questions)
        assert all(q.endswith(f"\n{SHORT_ANSWER_PROMPT}") for q in questions)
        pairs = [
            (q.removesuffix(f"\n{SHORT_ANSWER_PROMPT}"), a["value"])
            for q, a in zip(questions, turns[1::2], strict=True)
        ]
        for q, _ in pairs:
            assert not any(f.fullmatch(q) for f in held_out), q
            matched = {f.pattern for f in train if f.fullmatch(q)}
            assert matched, q  # a wording of the pool
            used |= matched
        result = check_turns(pairs, scenes[context.image_id])
        assert result.ok and result.checked >= len(pairs), (record, result)
        asked += len(pairs)
    assert asked > 3 * len(records)
    # "varied" asks in far more sentence shapes than the teacher's frames
    assert len(used) > (2 * len(frames("train")) if pool == "varied" else 5)


def test_drills_name_an_image_whose_captions_do_not_describe_it(world) -> None:
    ctx = load_coco(world.captions("train"), world.instances("train"))[0]
    with pytest.raises(ValueError, match=rf"drills: image {ctx.image_id} \({ctx.file_name}\): no caption"):
        drill_records(
            [dataclasses.replace(ctx, captions=("Some shapes.",))], 4, {"colour": 1.0}, seed=0, pool="train"
        )


def test_long_answers_corpus_reads_a_seeded_share_of_the_sentence_turns(world, tmp_path) -> None:
    from llava_lite.synthetic.questions import SHORT_ANSWER_PROMPT

    scenes = _scenes(world)
    records = [
        {"id": str(i), "image": image, "conversations": [
            {"from": "human", "value": f"<image>\nHow many objects are there?\n{SHORT_ANSWER_PROMPT}"},
            {"from": "gpt", "value": "2"},
            {"from": "human", "value": "Where is the circle?"},
            {"from": "gpt", "value": "The circle is on the left of the image."}]}
        for i, image in enumerate(scenes)
    ]  # fmt: skip
    settings = dataclasses.replace(
        FULL.llm, hidden_size=32, intermediate_size=64, num_layers=1, steps=1, warmup_steps=0, batch_size=2,
        long_answer_sample=0.5,
    )  # fmt: skip
    half = warmup_llm(records, [], [], scenes, tmp_path / "half", settings)
    assert half.documents == round(0.5 * len(records))  # one sentence turn per record, half of them
    every = warmup_llm(
        records, [], [], scenes, tmp_path / "every", dataclasses.replace(settings, long_answer_sample=1.0)
    )
    assert every.documents == len(records)  # the closed-form turns never: the drills teach those
    with pytest.raises(ValueError, match="LLM warm-up: no documents"):
        warmup_llm(
            records, [], [], scenes, tmp_path / "none", dataclasses.replace(settings, long_answer_sample=0.0)
        )
    with pytest.raises(ValueError, match=r"llm.long_answer_sample=1.5; valid: a share in \[0, 1\]"):
        warmup_llm(
            records, [], [], scenes, tmp_path / "bad", dataclasses.replace(settings, long_answer_sample=1.5)
        )


def test_stage3_questions_are_the_chat_script_on_training_images_only(world) -> None:
    from llava_lite.demo.preference import chat_questions_on_training_images

    settings = demo_settings(["seed=3", "dpo.images=5"])
    data = DemoData(
        world=world, train_contexts=[], instruct=[], captions=[], stage1_file=world.root / "c.json", stage2_files=[],
        drills=[], held_out=[], paraphrased=[], generation={},
    )  # fmt: skip
    questions = chat_questions_on_training_images(settings, data)
    images = {q.image for q in questions}
    assert len(images) == 5 and all(image.startswith("train/") for image in images)
    assert len(questions) == 5 * 5  # a description, then one question of each closed-form type
    assert len({q.question_id for q in questions}) == len(questions)
    assert questions == chat_questions_on_training_images(settings, data)  # seeded


def test_stage3_overrides_compose_the_shipped_dpo_experiment(tmp_path) -> None:
    from llava_lite.demo.preference import stage3_overrides

    settings = demo_settings(["seed=4", "dpo.steps=9", "dpo.lr=0.002", "dpo.beta=0.3", "dpo.batch_size=5"])
    data = DemoData(
        world=WorldPaths(tmp_path / "world"), train_contexts=[], instruct=[], captions=[],
        stage1_file=tmp_path / "c.json", stage2_files=[], drills=[], held_out=[], paraphrased=[], generation={},
    )  # fmt: skip
    cfg = compose_config(stage3_overrides(settings, data, tmp_path / "stage2" / "model", tmp_path))
    assert cfg.module._target_.endswith("PreferenceLitModule") and cfg.data.preference
    assert cfg.module.init_from == str(tmp_path / "stage2" / "model")
    assert (cfg.seed, cfg.trainer.max_steps, cfg.module.optimizer.lr, cfg.data.batch_size) == (4, 9, 0.002, 5)
    assert cfg.module.preference.beta == 0.3 and cfg.module.preference.sft_weight == settings.dpo.sft_weight
    assert list(cfg.data.train_files) == [str(tmp_path / "pairs" / "pairs.jsonl")]
    assert cfg.paths.output_dir == str(tmp_path / "stage3") and cfg.export_model

"""Batch answers with a tiny random model: output shape, left-padded batching, resume."""

import json

import pytest
import torch
from PIL import Image

from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.inference import (
    DecodingSettings,
    Question,
    generate_answers,
    read_answers,
    read_questions,
)
from llava_lite.modeling import LlavaModel

SETTINGS = DecodingSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def model():
    return LlavaModel(LlavaConfig.from_name("tiny")).eval()


@pytest.fixture(scope="module")
def processor(model):
    return LlavaProcessor.from_model(model)


@pytest.fixture
def images(tmp_path):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (24, 48), (20, 30, 220)).save(tmp_path / "blue.png")
    return tmp_path


QUESTIONS = [
    Question(0, "What colour is the picture?", "red.png", "conv"),
    Question("q1", "Say something short about a very long and winding road."),
    Question(2, "Describe the image.", "blue.png", "detail"),
]


def test_answers_file_has_model_vqa_fields(model, processor, images):
    out = images / "answers.jsonl"
    stats = generate_answers(
        model, processor, QUESTIONS, out, image_root=images, batch_size=2, settings=SETTINGS, model_id="tiny"
    )
    assert stats.to_dict() == {"answered": 3, "skipped_done": 0, "total": 3}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [0, "q1", 2]  # original id types kept
    assert rows[0]["prompt"] == "<image>\nWhat colour is the picture?"
    assert rows[1]["prompt"] == QUESTIONS[1].text
    for r in rows:
        assert set(r) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert isinstance(r["text"], str) and r["model_id"] == "tiny"
    assert model.training is False


def test_left_padded_batch_matches_one_by_one(model, processor, images):
    batched = images / "batched.jsonl"
    single = images / "single.jsonl"
    generate_answers(model, processor, QUESTIONS, batched, image_root=images, batch_size=3, settings=SETTINGS)
    generate_answers(model, processor, QUESTIONS, single, image_root=images, batch_size=1, settings=SETTINGS)
    a, b = read_answers(batched), read_answers(single)
    assert {k: v["text"] for k, v in a.items()} == {k: v["text"] for k, v in b.items()}
    assert len({v["text"] for v in a.values()}) > 1  # padding did not collapse rows to one answer
    # and the text is what a direct, unpadded generate decodes
    prompt = processor.prompt(QUESTIONS[0].text, str(images / "red.png"))
    ids = model.generate(
        prompt["input_ids"][None],
        pixel_values=prompt["pixel_values"][None],
        max_new_tokens=SETTINGS.max_new_tokens,
        eos_token_id=processor.stop_token_ids,
    )
    assert a["0"]["text"] == processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def test_resume_skips_answered_and_repairs_torn_tail(model, processor, images):
    out = images / "answers.jsonl"
    generate_answers(model, processor, QUESTIONS[:2], out, image_root=images, settings=SETTINGS)
    first = out.read_text()
    with open(out, "a") as f:
        f.write('{"question_id": 2, "text": "half a li')  # a kill mid-write
    stats = generate_answers(model, processor, QUESTIONS, out, image_root=images, settings=SETTINGS)
    assert stats.to_dict() == {"answered": 1, "skipped_done": 2, "total": 3}
    text = out.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 3
    assert set(read_answers(out)) == {"0", "q1", "2"}
    again = generate_answers(model, processor, QUESTIONS, out, image_root=images, settings=SETTINGS)
    assert again.answered == 0 and out.read_text() == text


def test_missing_image_names_question(model, processor, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"question 7: missing_image: .*nope.png not found"):
        generate_answers(
            model, processor, [Question(7, "Q?", "nope.png")], tmp_path / "a.jsonl", image_root=tmp_path
        )


def test_sampling_settings_reach_generate(model, processor, images):
    torch.manual_seed(0)
    out = images / "sampled.jsonl"
    settings = DecodingSettings(max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9)
    stats = generate_answers(model, processor, QUESTIONS[1:2], out, settings=settings)
    assert stats.answered == 1


def test_read_questions_validates(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"question_id": 1, "text": "a?", "image": "x.jpg", "category": "conv"}\n')
    assert read_questions(good) == [Question(1, "a?", "x.jpg", "conv")]
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"question_id": 1, "text": "a?"}\n{"question_id": 1, "text": "b?"}\n')
    with pytest.raises(ValueError, match=r"dup\.jsonl:2: duplicate question_id 1"):
        read_questions(dup)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question_id": 3}]))
    with pytest.raises(ValueError, match=r"bad\.json record 0: question 3 has no 'text'"):
        read_questions(bad)


def test_question_lines_are_named_by_line_number_and_the_last_newline_is_optional(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question_id": 1, "text": "a?"}\n\n{"question_id": 2, "text": "b?"}'
    )  # no final newline
    assert [q.question_id for q in read_questions(path)] == [1, 2]
    path.write_text('{"question_id": 1, "text": "a?"}\n\n{"question_id": 2}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:3: question 2 has no 'text'"):
        read_questions(path)
    path.write_bytes(b'{"question_id": 1, "text": "a?"}\n{"question_id": 2, "text": "\xff"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2: not UTF-8 text"):
        read_questions(path)


def test_an_image_that_does_not_open_names_the_question_and_keeps_earlier_answers(model, processor, images):
    (images / "text.png").write_text("not an image")
    out = images / "answers.jsonl"
    questions = [QUESTIONS[0], QUESTIONS[1], Question(5, "And this?", "text.png")]
    with pytest.raises(ValueError, match=r"^question 5: unreadable_image: .*text\.png: not an image PIL"):
        generate_answers(model, processor, questions, out, image_root=images, batch_size=1, settings=SETTINGS)
    assert set(read_answers(out)) == {"0", "q1"}  # the batches before it are kept
    with pytest.raises(FileNotFoundError, match="question 5: missing_image"):
        generate_answers(
            model, processor, [Question(5, "?", "gone.png")], images / "new.jsonl", image_root=images
        )
    assert not (images / "new.jsonl").exists()  # found before anything was written

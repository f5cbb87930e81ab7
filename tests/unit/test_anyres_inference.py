"""AnyRes at inference: chat and batch answers take images of any size and pass their sizes on."""

from __future__ import annotations

import torch
from PIL import Image
from test_anyres import tiny_anyres

from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings, Question, generate_answers, read_answers
from llava_lite.inference.web import WebChat

SETTINGS = DecodingSettings(max_new_tokens=6)


def _direct(model, processor: LlavaProcessor, question: str, image: Image.Image | str) -> str:
    """What an unpadded, unbatched generate decodes for one question."""
    prompt = processor.prompt(question, image)
    ids = model.generate(
        prompt["input_ids"][None],
        pixel_values=prompt["pixel_values"],  # [n_tiles, 3, H, W]
        image_sizes=prompt["image_sizes"],
        max_new_tokens=SETTINGS.max_new_tokens,
        eos_token_id=processor.stop_token_ids,
    )
    return processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def test_batched_answers_over_images_of_several_sizes_equal_one_by_one(tmp_path) -> None:
    model = tiny_anyres()
    processor = LlavaProcessor.from_model(model)
    sizes = {"wide.png": (30, 95), "tall.png": (95, 30), "dot.png": (1, 1), "square.png": (64, 64)}
    for i, (name, (h, w)) in enumerate(sizes.items()):
        Image.effect_noise((w, h), 40 + 20 * i).convert("RGB").save(tmp_path / name)
    questions = [Question(i, f"What is in picture {i}?", name) for i, name in enumerate(sizes)]
    questions.insert(2, Question("text", "Say something short."))
    batched = tmp_path / "batched.jsonl"
    generate_answers(
        model, processor, questions, batched, image_root=tmp_path, batch_size=5, settings=SETTINGS
    )
    answers = {k: v["text"] for k, v in read_answers(batched).items()}
    for q in questions:
        if q.image is not None:
            assert answers[str(q.question_id)] == _direct(model, processor, q.text, str(tmp_path / q.image))
    assert len(set(answers.values())) > 1


def test_chat_session_reads_an_image_of_any_size() -> None:
    model = tiny_anyres()
    processor = LlavaProcessor.from_model(model)
    image = Image.effect_noise((120, 40), 60).convert("RGB")
    session = ChatSession(model, processor, image=image, settings=SETTINGS)
    assert session.image is not None and session.image.size == (40, 120)
    assert session.image.pixel_values.shape[0] == model.image_grid.num_tiles(40, 120)
    answer = session.ask("What is it?")
    assert answer == _direct(model, processor, "What is it?", image)
    prompt = session.fitting_prompt("And now?")
    slots = int((prompt["input_ids"] == model.image_token_id).sum())
    assert slots == model.image_grid.num_tokens(40, 120) and torch.is_tensor(prompt["pixel_values"])


def test_web_demo_handler_reads_an_image_of_any_size(tmp_path) -> None:
    model = tiny_anyres()
    processor = LlavaProcessor.from_model(model)
    path = tmp_path / "strip.png"
    Image.effect_noise((150, 25), 50).convert("RGB").save(path)
    chat = WebChat(model, processor)
    *_, (_, messages, state) = chat.respond(
        "What is it?", str(path), None, None, 0.0, 1.0, SETTINGS.max_new_tokens
    )
    assert messages[-1]["content"] == _direct(model, processor, "What is it?", str(path))
    assert state.image == str(path) and len(state.history) == 1

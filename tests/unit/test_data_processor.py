"""Processor (image slots, aspect modes, truncation policy, prompts) and collator (padding, images, truncation)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from llava_lite.data import IGNORE_INDEX, BadSampleError, LlavaCollator, LlavaProcessor
from llava_lite.data.images import make_square
from llava_lite.modeling.tokenizer import build_tiny_tokenizer

N_IMG = 9


def make_processor(kind: str = "sentencepiece", **kw) -> LlavaProcessor:
    tok = build_tiny_tokenizer(kind)
    tok.add_tokens(["<image>"], special_tokens=True)
    ip = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    return LlavaProcessor(tok, ip, num_image_tokens=N_IMG, **kw)


def record(question: str = "What is it? <image>", answer: str = "A red square.", turns: int = 1) -> dict:
    conv = []
    for t in range(turns):
        conv += [
            {"from": "human", "value": question if t == 0 else "And then?"},
            {"from": "gpt", "value": answer},
        ]
    return {"id": "r", "image": "x.png", "conversations": conv}


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_image_marker_becomes_one_block_of_ignored_slots(kind: str) -> None:
    proc = make_processor(kind)
    out = proc.process_record(record(), Image.new("RGB", (30, 20), "red"))
    ids, labels = out["input_ids"], out["labels"]
    slots = (ids == proc.image_token_id).nonzero().flatten()
    assert slots.numel() == N_IMG
    assert torch.equal(slots, torch.arange(int(slots[0]), int(slots[0]) + N_IMG))  # contiguous
    assert bool((labels[slots] == IGNORE_INDEX).all())
    assert out["pixel_values"].shape == (3, 24, 24)
    chat = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]
    text = proc.process_record({"conversations": chat}, None)
    assert text["pixel_values"] is None and not bool((text["input_ids"] == proc.image_token_id).any())


def test_processor_requires_the_image_token_in_the_vocab() -> None:
    tok = build_tiny_tokenizer("bpe")
    with pytest.raises(ValueError, match="special token"):
        LlavaProcessor(tok, CLIPImageProcessor(), num_image_tokens=4)


def test_aspect_modes() -> None:
    ip = CLIPImageProcessor(image_mean=[0.2, 0.4, 0.6], crop_size={"height": 16, "width": 16})
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    padded = make_square(img, "pad", ip)
    assert padded.size == (40, 40)
    assert padded.getpixel((0, 0)) == (51, 102, 153)  # the encoder's mean colour
    assert padded.getpixel((20, 20)) == (255, 255, 255)  # the image, centred
    assert make_square(img, "resize", ip).size == (16, 16)
    # CLIP crops the centre after its own resize; a processor that only resizes gets a centre square.
    assert make_square(img, "crop", ip) is img
    ip.do_center_crop = False
    assert make_square(img, "crop", ip).size == (20, 20)


def test_over_long_samples_follow_the_overlong_policy(caplog) -> None:
    long_answer = " ".join(["the red circle"] * 40)
    img = Image.new("RGB", (8, 8))
    # Default: rejected as too_long, and skipped even where other bad records raise.
    for policy in ("skip", "raise"):
        with pytest.raises(BadSampleError) as err:
            make_processor(model_max_length=120, overlong=policy).process_record(
                record(answer=long_answer), img
            )
        assert err.value.reason == "too_long" and f"overlong={policy}" in str(err.value)
        assert err.value.raises("skip") == err.value.raises("raise") == (policy == "raise")
    assert make_processor().overlong == "skip"
    # Truncation only when chosen: cut, counted and logged with the record.
    proc = make_processor(model_max_length=120, overlong="truncate")
    with caplog.at_level("WARNING", logger="llava_lite.data.processor"):
        out = proc.process_record(record(answer=long_answer), img)
    assert out["input_ids"].numel() == 120
    assert (out["input_ids"] == proc.image_token_id).sum() == N_IMG
    assert bool((out["labels"] != IGNORE_INDEX).any())
    assert int(out["input_ids"][-1]) != proc.tokenizer.eos_token_id  # the cut answer has no end
    assert proc.truncations == 1 and "truncated record 'r'" in caplog.text
    # The image block itself would be cut (a long system prompt pushes it past the limit).
    long_question = " ".join(["where is the blue square"] * 40)
    late_image = record()
    late_image["conversations"].insert(0, {"from": "system", "value": long_question})
    with pytest.raises(BadSampleError) as err:
        proc.process_record(late_image, img)
    assert err.value.reason == "too_long" and err.value.policy is None
    # Nothing trained survives the cut.
    text_only = {
        "conversations": [
            {"from": "human", "value": long_question},
            {"from": "gpt", "value": "Yes."},
        ]
    }
    with pytest.raises(BadSampleError) as err:
        proc.process_record(text_only, None)
    assert err.value.reason == "no_trained_tokens"
    assert proc.truncations == 1
    with pytest.raises(ValueError, match=r"overlong='cut'; valid: \['skip', 'raise', 'truncate'\]"):
        make_processor(overlong="cut")


# A record far over any tiny model_max_length, and one well under it.
LONG_RECORD = {
    "id": "long",
    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "red " * 200}],
}
SHORT_RECORD = {
    "id": "short",
    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Red."}],
}


def test_datasets_honour_the_overlong_policy_over_on_bad_sample(tmp_path) -> None:
    from llava_lite.data import LlavaDataset

    long, short = LONG_RECORD, SHORT_RECORD
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (short, long)) + "\n")
    skipping = LlavaDataset(
        str(path), make_processor(model_max_length=64, overlong="skip"), on_bad_sample="raise"
    )
    assert skipping[1]["skipped"][0].reason == "too_long"
    raising = LlavaDataset(
        str(path), make_processor(model_max_length=64, overlong="raise"), on_bad_sample="skip"
    )
    assert raising[0]["id"] == "short"
    with pytest.raises(BadSampleError, match=r"too_long: record 'long' in .*d\.jsonl"):
        raising[1]


def test_prompt_ends_with_assistant_prefix_and_matches_training_prefix() -> None:
    proc = make_processor()
    img = Image.new("RGB", (12, 12), "blue")
    full = proc.process_record(record(turns=2), img)
    first_answer = int((full["labels"] != IGNORE_INDEX).nonzero()[0])
    prompt = proc.prompt("What is it? <image>", img)
    assert torch.equal(prompt["input_ids"], full["input_ids"][:first_answer])
    assert torch.allclose(prompt["pixel_values"], full["pixel_values"])
    follow = proc.prompt("And then?", img, history=[("What is it?", "A red square.")])
    second = full["labels"] != IGNORE_INDEX
    second_start = int(second.nonzero().flatten()[(second.nonzero().flatten().diff() > 1).nonzero()[0] + 1])
    assert torch.equal(follow["input_ids"], full["input_ids"][:second_start])
    assert proc.stop_token_ids == [proc.tokenizer.eos_token_id]


def _sample(n: int, image: bool, image_at: int = 1, image_id: int = 99) -> dict:
    ids = torch.arange(1, n + 1)
    if image:
        ids[image_at : image_at + 3] = image_id
    labels = ids.clone()
    labels[: n // 2] = IGNORE_INDEX
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": torch.full((3, 4, 4), float(n)) if image else None,
        "id": f"s{n}",
        "source": "f.jsonl",
    }


def test_collator_pads_right_and_left_and_keeps_image_order() -> None:
    samples = [_sample(6, True), _sample(4, False), _sample(8, True)]
    right = LlavaCollator(pad_token_id=0, image_token_id=99)(samples)
    assert right["input_ids"].shape == (3, 8)
    assert right["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert right["labels"][1, 4:].tolist() == [IGNORE_INDEX] * 4
    assert right["pixel_values"][:, 0, 0, 0].tolist() == [6.0, 8.0]  # row order
    left = LlavaCollator(pad_token_id=0, padding_side="left")(samples)
    assert left["attention_mask"].tolist()[1] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert left["input_ids"][1, 4:].tolist() == [1, 2, 3, 4]
    assert LlavaCollator(pad_token_id=0)([_sample(4, False)])["pixel_values"] is None


def test_collator_truncation_never_cuts_an_image_block() -> None:
    collate = LlavaCollator(pad_token_id=0, model_max_length=6, image_token_id=99)
    ok = _sample(10, True, image_at=1)  # image slots 1..3, answer tokens 5..9
    cut = _sample(10, True, image_at=4)  # slots 4..6: a cut at 6 would split them
    batch = collate([ok, cut, {"skipped": []}])
    assert batch["input_ids"].shape == (1, 6) and batch["ids"] == ["s10"]
    assert [r.reason for r in batch["skipped"]] == ["too_long"]
    assert batch["pixel_values"].shape[0] == 1


class _Raises(torch.utils.data.Dataset):
    """Every item is a bad record, as a worker's ``build_sample`` would report it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise BadSampleError("too_long", "900 tokens > model_max_length=512", f"r{index}", "train.jsonl")


def test_bad_sample_error_keeps_its_type_and_message_across_processes() -> None:
    import pickle

    err = BadSampleError("empty_answer", "turn 1 is empty", "r7", "f.jsonl")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is BadSampleError and str(back) == str(err)
    assert (back.reason, back.record_id, back.source) == ("empty_answer", "r7", "f.jsonl")
    loader = torch.utils.data.DataLoader(_Raises(), num_workers=1, collate_fn=list)
    with pytest.raises(BadSampleError) as caught:
        next(iter(loader))
    assert caught.value.reason == "too_long"
    assert "record 'r0' in train.jsonl: 900 tokens > model_max_length=512" in str(caught.value)
    with pytest.raises(ValueError, match="unknown bad-sample reason 'nonsense'"):
        BadSampleError("nonsense")


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("vicuna_v1", "It ends here</s> and goes on."),
        ("vicuna_v1", "<s>Hello"),
        ("chatml", "Done.<|im_end|>"),
        ("llama_2", "Sure [/INST] more"),
        ("vicuna_v1", "Look: <image> again"),
    ],
)
def test_text_spelling_a_special_token_is_rejected_with_a_reason(template: str, text: str) -> None:
    """Tokenised, ``</s>`` in an answer would be an end of sequence trained mid-answer."""
    proc = make_processor(template=template)
    clean = proc.process_record(record(answer="A red square."), Image.new("RGB", (8, 8)))
    assert clean["input_ids"].numel() > 0
    with pytest.raises(BadSampleError) as err:
        proc.process_record(record(answer=text), Image.new("RGB", (8, 8)))
    assert err.value.reason in ("special_token_text", "image_token_mismatch"), err.value
    if "<image>" not in text:
        assert "turn 1 (assistant) spells" in str(err.value)


def test_empty_answer_is_rejected_with_a_reason() -> None:
    with pytest.raises(BadSampleError) as err:
        make_processor().process_record(record(answer="  "), Image.new("RGB", (8, 8)))
    assert err.value.reason == "empty_answer" and "turn 1 (assistant) has no text" in str(err.value)


def test_from_model_overrides_every_processor_setting() -> None:
    from helpers import tiny_llava

    model = tiny_llava(conv_template="vicuna_v1")
    proc = LlavaProcessor.from_model(
        model, image_aspect="crop", template="chatml", model_max_length=99, overlong="raise"
    )
    assert (proc.image_aspect, proc.template.name, proc.model_max_length, proc.overlong) == (
        "crop",
        "chatml",
        99,
        "raise",
    )
    assert LlavaProcessor.from_model(model, template=None).template.name == "vicuna_v1"
    with pytest.raises(TypeError, match=r"unknown settings \['aspect'\]; valid: \[.*'image_aspect'"):
        LlavaProcessor.from_model(model, aspect="crop")


def test_truncations_are_counted_across_dataloader_workers(tmp_path) -> None:
    from llava_lite.data import LlavaDataModule

    long, short = LONG_RECORD, SHORT_RECORD
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (short, long, short | {"id": "s2"})) + "\n")
    dm = LlavaDataModule(
        str(path),
        batch_size=2,
        num_workers=1,
        shuffle=False,
        processor=make_processor(model_max_length=64, overlong="truncate"),
    )
    dm.setup("fit")
    seen = []
    for batch in dm.train_dataloader():
        batch = dm.observe_batch(batch)
        assert "truncated" not in batch and batch["input_ids"].shape[1] <= 64
        seen += batch["ids"]
    assert sorted(seen) == ["long", "s2", "short"]
    assert dm.truncated_count() == 1 and dm.bad_sample_counts() == {}


def test_an_over_long_record_is_rejected_before_its_image_is_opened(tmp_path) -> None:
    """``process_messages`` tokenises first: a too-long record never reads its image file."""
    from llava_lite.data.schema import normalize_conversation

    proc = make_processor(model_max_length=120)
    long_answer = " ".join(["the red circle"] * 40)
    messages = normalize_conversation(record(answer=long_answer)["conversations"], has_image=True)
    with pytest.raises(BadSampleError) as err:
        proc.process_messages(messages, "absent.png", "r", image_root=str(tmp_path))
    assert err.value.reason == "too_long"
    with pytest.raises(BadSampleError) as err:  # the same image path, with a short answer, is opened
        proc.process_messages(normalize_conversation(record()["conversations"], has_image=True), "absent.png")
    assert err.value.reason == "missing_image"

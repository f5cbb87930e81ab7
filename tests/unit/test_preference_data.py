"""Preference records: the field's formats read as one LLaVA pair, bad pairs under the bad-sample policy."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_llava, write_dataset
from llava_lite.config import IGNORE_INDEX
from llava_lite.data import LlavaDataModule, LlavaProcessor
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.collate import LlavaCollator
from llava_lite.data.packing import PackingCollator
from llava_lite.data.preference import PreferenceCollator, PreferenceDataset, as_llava_pair

ASK = "What colour is it?"


@pytest.mark.parametrize(
    ("record", "images", "prompt"),
    [
        # TRL's standard (string) form, and LLaVA-NeXT's DPO files (one "image")
        ({"prompt": ASK, "chosen": "Red.", "rejected": "Blue.", "images": ["a.png"]}, "a.png", ASK),
        (
            {"prompt": f"<image>\n{ASK}", "chosen": "Red.", "rejected": "Blue.", "image": "a.png"},
            "a.png",
            f"<image>\n{ASK}",
        ),
        # TRL's conversational form: image parts become markers where they stand
        (
            {
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ASK}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
                "rejected": [{"role": "assistant", "content": "Blue."}],
                "images": ["a.png"],
            },
            "a.png",
            f"<image>\n{ASK}",
        ),
        # RLAIF-V: question, image as {"path": ...} or image_path
        ({"question": ASK, "chosen": "Red.", "rejected": "Blue.", "image": {"path": "a.png"}}, "a.png", ASK),
        ({"question": ASK, "chosen": "Red.", "rejected": "Blue.", "image_path": "a.png"}, "a.png", ASK),
        # VLFeedback: the best and the worst rated completion
        (
            {
                "prompt": ASK,
                "image": "a.png",
                "completions": [
                    {
                        "response": "Green.",
                        "annotations": {"Helpfulness": {"Rating": "3"}, "Faithfulness": {"Rating": "N/A"}},
                    },
                    {
                        "response": "Red.",
                        "annotations": {"Helpfulness": {"Rating": "5"}, "Faithfulness": {"Rating": "4"}},
                    },
                    {"response": "Blue.", "annotations": {"Helpfulness": {"Rating": "1"}}},
                ],
            },
            "a.png",
            ASK,
        ),
        # several images, markers in place
        (
            {
                "prompt": "<image> or <image>?",
                "chosen": "Red.",
                "rejected": "Blue.",
                "images": ["a.png", "b.png"],
            },
            ["a.png", "b.png"],
            "<image> or <image>?",
        ),
    ],
)
def test_every_format_reads_as_one_llava_pair(record, images, prompt) -> None:
    pair = as_llava_pair(record)
    assert pair["image"] == images
    assert pair["conversations"] == [{"from": "human", "value": prompt}, {"from": "gpt", "value": "Red."}]
    assert pair["rejected"] == "Blue."


def test_a_multi_turn_trl_prompt_keeps_its_earlier_turns() -> None:
    pair = as_llava_pair(
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shape?"}]},
                {"role": "assistant", "content": "A square."},
                {"role": "user", "content": ASK},
            ],
            "chosen": "Red.",
            "rejected": "Blue.",
            "images": ["a.png"],
        }
    )
    turns = [(t["from"], t["value"]) for t in pair["conversations"]]
    assert turns == [
        ("system", "Be brief."),
        ("human", "<image>\nShape?"),
        ("assistant", "A square."),
        ("human", ASK),
        ("gpt", "Red."),
    ]


@pytest.fixture()
def world(tmp_path):
    write_dataset(tmp_path, 4)
    model = tiny_llava()
    return tmp_path, model, LlavaProcessor.from_model(model)


BAD = {
    "same": ({"chosen": "Red.", "rejected": " Red. "}, "identical_pair"),
    "empty_rejected": ({"chosen": "Red.", "rejected": "  "}, "empty_answer"),
    "empty_chosen": ({"chosen": "", "rejected": "Blue."}, "empty_answer"),
    "no_rejected": ({"chosen": "Red."}, "not_a_pair"),
    "lost_image": ({"chosen": "Red.", "rejected": "Blue.", "image": "gone.png"}, "missing_image"),
    "tie": (
        {"completions": [{"response": "Red.", "score": 3}, {"response": "Blue.", "score": 3}]},
        "identical_pair",
    ),
}


def _write_pairs(root, bad: dict) -> str:
    lines = [{"id": "good", "prompt": ASK, "chosen": "Red.", "rejected": "Blue.", "image": "000.png"}]
    lines += [{"id": name, "prompt": ASK, "image": "001.png", **fields} for name, (fields, _) in bad.items()]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def test_bad_pairs_are_counted_under_skip(world) -> None:
    root, _, processor = world
    dm = LlavaDataModule(_write_pairs(root, BAD), image_root=str(root / "images"), batch_size=8,
                         num_workers=0, preference=True, shuffle=False)  # fmt: skip
    dm.attach_processor(processor)
    dm.setup("fit")
    batches = [dm.observe_batch(b) for b in dm.train_dataloader()]
    assert [b["ids"] for b in batches] == [["good"]]
    expected: dict[str, int] = {}
    for _, reason in BAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert dm.bad_sample_counts() == expected


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_pair_is_named_under_raise(world, name) -> None:
    root, _, processor = world
    path = _write_pairs(root, {name: BAD[name]})
    with pytest.raises(BadSampleError) as err:  # structural problems on reading, others on loading
        dataset = PreferenceDataset(path, processor, str(root / "images"), on_bad_sample="raise")
        for i in range(len(dataset)):
            dataset[i]
    assert err.value.reason == BAD[name][1]
    assert f"record {name!r} in {path}" in str(err.value)


def _pairs(root, n: int) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "prompt": ASK,
            "image": f"{i:03d}.png",
            "chosen": f"It is red {'and round ' * i}.",
            "rejected": "Blue" + " maybe" * (3 - i),
        }
        for i in range(n)
    ]


def _items(world, n: int) -> list[dict]:
    """``n`` pairs written to ``pairs.json`` and read back as the dataset's items."""
    root, _, processor = world
    path = root / "pairs.json"
    path.write_text(json.dumps(_pairs(root, n)))
    dataset = PreferenceDataset(str(path), processor, str(root / "images"), "raise")
    return [dataset[i] for i in range(n)]


def test_padded_pairs_batch_chosen_then_rejected_with_their_sequences(world) -> None:
    processor = world[2]
    items = _items(world, 3)
    batch = PreferenceCollator(
        LlavaCollator(processor.pad_token_id, image_token_id=processor.image_token_id)
    )(items)
    assert batch["pairs"] == 3 and batch["ids"] == ["p0", "p1", "p2"]
    assert batch["pair_keys"] == ["pairs.json:p0", "pairs.json:p1", "pairs.json:p2"]
    assert batch["input_ids"].shape[0] == 6 and batch["pixel_values"].shape[0] == 6
    for i, item in enumerate(items):  # row i: pair i's chosen; row 3 + i: its rejected
        for row, side in ((i, "chosen"), (3 + i, "rejected")):
            n = item[side]["input_ids"].numel()
            assert batch["input_ids"][row, :n].tolist() == item[side]["input_ids"].tolist()
            assert (batch["sequence_ids"][row, :n] == row).all() and (
                batch["sequence_ids"][row, n:] == -1
            ).all()
        # the two sides share the prompt and its image, and differ in the answer only
        c, r = item["chosen"], item["rejected"]
        prompt = int((c["labels"] != IGNORE_INDEX).nonzero()[0])
        assert c["input_ids"][:prompt].tolist() == r["input_ids"][:prompt].tolist()
        assert torch.equal(c["pixel_values"], r["pixel_values"])
    chosen_trained = sum(int((item["chosen"]["labels"][1:] != IGNORE_INDEX).sum()) for item in items)
    assert batch["chosen_tokens"] == chosen_trained


def test_packed_pairs_map_every_token_to_its_sequence(world) -> None:
    processor = world[2]
    items = _items(world, 3)
    inner = PackingCollator(processor.pad_token_id, 256, processor.image_token_id)
    batch = PreferenceCollator(inner)(items)
    assert batch["input_ids"].shape[0] < 6  # several sequences share a row
    for seq, side in enumerate([it["chosen"] for it in items] + [it["rejected"] for it in items]):
        assert batch["input_ids"][batch["sequence_ids"] == seq].tolist() == side["input_ids"].tolist()


def test_a_pair_whose_side_the_collator_refuses_is_skipped_whole(world) -> None:
    """A foreign rejected sample past the length limit with nothing trained before it: the pair goes."""
    processor = world[2]
    items = _items(world, 2)
    limit = max(it[side]["input_ids"].numel() for it in items for side in ("chosen", "rejected"))
    rejected = items[1]["rejected"]
    extra = torch.full((10,), processor.pad_token_id)
    items[1] = dict(items[1], rejected=dict(
        rejected,
        input_ids=torch.cat([rejected["input_ids"], extra]),
        labels=torch.full((rejected["input_ids"].numel() + 10,), IGNORE_INDEX),
    ))  # fmt: skip
    inner = LlavaCollator(
        processor.pad_token_id, model_max_length=limit, image_token_id=processor.image_token_id
    )
    batch = PreferenceCollator(inner)(items)
    assert batch["ids"] == ["p0"] and batch["pairs"] == 1 and batch["input_ids"].shape[0] == 2
    assert [(r.reason, r.record_id) for r in batch["skipped"]] == [("no_trained_tokens", "p1")]


def test_pairs_stream_from_webdataset_shards_with_their_images(world, tmp_path) -> None:
    from llava_lite.data.wds_shards import convert_to_wds

    root, _, processor = world
    records = _pairs(root, 3)
    records[1]["image"] = "gone.png"  # a bad pair is counted by the conversion, not written
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = convert_to_wds(
        str(root / "pairs.jsonl"), str(tmp_path / "shards"), str(root / "images"), preference=True
    )
    assert result.written == 2 and result.counter.counts() == {"missing_image": 1}
    dm = LlavaDataModule(
        result.shards, batch_size=2, num_workers=0, streaming=True, preference=True, shuffle=False
    )
    dm.attach_processor(processor)
    dm.setup("fit")
    (batch,) = [dm.observe_batch(b) for b in dm.train_dataloader()]
    assert sorted(batch["ids"]) == ["p0", "p2"] and batch["pairs"] == 2
    assert batch["pixel_values"].shape[0] == 4  # each pair's image, for both of its answers

"""Datasets, sharding, resuming, bad input, WebDataset round trip, DataModule, grouping by length."""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

import fsspec
import pytest
from PIL import Image
from torch.utils.data import DataLoader
from transformers import CLIPImageProcessor

from llava_lite.data import (
    BadSampleError,
    LlavaCollator,
    LlavaDataModule,
    LlavaDataset,
    LlavaProcessor,
    LlavaStreamingDataset,
    ModalityLengthGroupedSampler,
    padding_fraction,
    read_records,
)
from llava_lite.data.packing import PackingCollator
from llava_lite.data.resume import ResumableLoader
from llava_lite.data.wds_shards import convert_to_wds
from llava_lite.modeling.tokenizer import build_tiny_tokenizer


@cache
def processor(model_max_length: int = 256) -> LlavaProcessor:
    tok = build_tiny_tokenizer("sentencepiece")
    tok.add_tokens(["<image>"], special_tokens=True)
    ip = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    # truncate: the cut-dependent rejections (image block cut, nothing trained left) stay reachable.
    return LlavaProcessor(tok, ip, num_image_tokens=4, model_max_length=model_max_length, overlong="truncate")


def text_record(i: int) -> dict:
    return {
        "id": f"t{i}",
        "conversations": [{"from": "human", "value": f"Count to {i}."}, {"from": "gpt", "value": f"{i}."}],
    }


def image_record(i: int, image: str) -> dict:
    conv = [
        {"from": "human", "value": "What shape is this?\n<image>"},
        {"from": "gpt", "value": f"A circle number {i}."},
    ]
    return {"id": f"i{i}", "image": image, "conversations": conv}


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "coco" / "train2017").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (20 + i, 12), (40 * i, 0, 0)).save(root / "coco" / "train2017" / f"{i}.jpg")
    return root


def mixed_records(n: int) -> list[dict]:
    return [
        image_record(i, f"coco/train2017/{i % 4}.jpg") if i % 3 == 0 else text_record(i) for i in range(n)
    ]


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def ids_of(samples) -> list[str]:
    return [s["id"] for s in samples if "input_ids" in s]


# ---- formats ------------------------------------------------------------------------------
def test_json_list_jsonl_shards_and_fsspec_urls_read_the_same(tmp_path: Path, image_root: Path) -> None:
    records = mixed_records(12)
    (tmp_path / "llava.json").write_text(json.dumps(records))
    for k in range(3):
        write_jsonl(tmp_path / f"part-{k}.jsonl", records[4 * k : 4 * k + 4])
    with fsspec.open("memory://bucket/data/shard-0.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records[:6]))
    with fsspec.open("memory://bucket/data/shard-1.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records[6:]))
    want = [r["id"] for r in records]
    assert [r.record_id for r in read_records(str(tmp_path / "llava.json"))] == want
    assert [r.record_id for r in read_records(str(tmp_path / "part-*.jsonl"))] == want
    assert [r.record_id for r in read_records("memory://bucket/data/shard-*.jsonl")] == want
    ds = LlavaDataset(str(tmp_path / "part-*.jsonl"), processor(), image_root=str(image_root))
    samples = [ds[i] for i in range(len(ds))]
    assert ids_of(samples) == want
    assert sum(s["pixel_values"] is not None for s in samples) == 4  # folder-prefixed paths resolved
    one_in_a_list = image_record(0, "coco/train2017/0.jpg") | {"image": ["coco/train2017/0.jpg"]}
    two = image_record(0, "coco/train2017/0.jpg") | {
        "image": ["coco/train2017/0.jpg", "coco/train2017/1.jpg"]
    }
    listed = LlavaDataset(
        write_jsonl(tmp_path / "lists.jsonl", [one_in_a_list, two]), processor(), str(image_root)
    )
    assert len(listed) == 1 and listed.counter.counts() == {"image_token_mismatch": 1}
    stream = LlavaStreamingDataset(
        "memory://bucket/data/shard-*.jsonl", processor(), str(image_root), shuffle=False
    )
    assert ids_of(stream) == want


def test_images_read_through_fsspec_url_root(tmp_path: Path) -> None:
    buf = fsspec.open("memory://imgs/a/0.png", "wb")
    with buf as f:
        Image.new("RGB", (10, 30), "green").save(f, format="PNG")
    path = write_jsonl(tmp_path / "d.jsonl", [image_record(0, "a/0.png")])
    sample = LlavaDataset(path, processor(), image_root="memory://imgs")[0]
    assert sample["pixel_values"].shape == (3, 16, 16)


# ---- sharding and resuming ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("world_size", "num_workers", "files", "shard_by"),
    [(2, 2, 3, "record"), (3, 1, 1, "record"), (1, 2, 5, "record"), (2, 2, 9, "file"), (3, 1, 2, "file")],
)
def test_ranks_times_workers_see_every_sample_exactly_once(
    tmp_path: Path, world_size: int, num_workers: int, files: int, shard_by: str
) -> None:
    records = [text_record(i) for i in range(37)]
    for k in range(files):
        write_jsonl(tmp_path / f"s{k}.jsonl", records[k::files])
    seen: list[str] = []
    packed: list[str] = []
    pack = PackingCollator(processor().pad_token_id, 128, processor().image_token_id)
    for rank in range(world_size):
        ds = LlavaStreamingDataset(
            str(tmp_path / "s*.jsonl"),
            processor(),
            shuffle_buffer=5,
            seed=3,
            rank=rank,
            world_size=world_size,
        )
        loader = DataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=lambda b: b)
        seen += [s["id"] for batch in loader for s in batch]
        packed += [
            i
            for batch in DataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=pack)
            for i in batch["ids"]
        ]
    assert sorted(seen) == sorted(r["id"] for r in records)
    assert sorted(packed) == sorted(seen)  # packing keeps every sample, once


def _run(ds: LlavaStreamingDataset, num_workers: int, stop_after: int | None = None) -> list[str]:
    collate = LlavaCollator(processor().pad_token_id, image_token_id=processor().image_token_id)
    loader = ResumableLoader(ds, batch_size=3, num_workers=num_workers, collate_fn=collate)
    out: list[str] = []
    for step, batch in enumerate(loader):
        ds.observe(batch.pop("stream_positions"))
        out += batch["ids"]
        if stop_after is not None and step + 1 == stop_after:
            break
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_stream_continues_where_it_stopped(tmp_path: Path, num_workers: int) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [text_record(i) for i in range(40)])

    def make() -> LlavaStreamingDataset:
        return LlavaStreamingDataset(path, processor(), shuffle_buffer=8, seed=7, rank=0, world_size=1)

    full = _run(make(), num_workers)
    first = make()
    head = _run(first, num_workers, stop_after=5)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint
    resumed = make()
    resumed.load_state_dict(state)
    tail = _run(resumed, num_workers)
    assert len(head) == 15 and sorted(head + tail) == sorted(full)  # nothing lost, nothing repeated
    if num_workers == 0:
        assert head + tail == full  # and in the same order (workers' batches interleave differently)
    assert resumed.epoch == 1  # the finished pass moved the stream on
    assert sorted(full) == sorted(f"t{i}" for i in range(40))
    assert _run(resumed, num_workers) != full  # a new epoch is reshuffled


# ---- bad input ------------------------------------------------------------------------------
GOOD = 6


def _bad_case(reason: str, image_root: Path) -> list[str]:
    """JSONL lines: GOOD good records around one bad record for ``reason``."""
    bad: dict | str
    q = {"from": "human", "value": "Hi"}
    a = {"from": "gpt", "value": "Hello."}
    if reason == "malformed_json":
        bad = '{"id": "bad", "conversations": [ oops'
    elif reason == "no_conversations":
        bad = {"id": "bad"}
    elif reason == "not_alternating":
        bad = {"id": "bad", "conversations": [q, q, a]}
    elif reason == "no_assistant_turn":
        bad = {"id": "bad", "conversations": [q]}
    elif reason == "image_token_mismatch":
        bad = {"id": "bad", "conversations": [{"from": "human", "value": "<image> hi"}, a]}
    elif reason == "missing_image":
        bad = image_record(0, "coco/train2017/nope.jpg") | {"id": "bad"}
    elif reason == "unreadable_image":
        (image_root / "broken.jpg").write_bytes(b"not an image at all")
        bad = image_record(0, "broken.jpg") | {"id": "bad"}
    elif reason == "truncated_image":
        big = image_root / "big.png"
        Image.effect_noise((64, 64), 50).convert("RGB").save(big)
        data = big.read_bytes()
        (image_root / "cut.png").write_bytes(data[: len(data) // 2])
        bad = image_record(0, "cut.png") | {"id": "bad"}
    elif reason == "too_long":
        sys_turn = {"from": "system", "value": " ".join(["the red circle"] * 200)}
        bad = image_record(0, "coco/train2017/0.jpg") | {"id": "bad"}
        bad["conversations"].insert(0, sys_turn)
    elif reason == "no_trained_tokens":
        bad = {"id": "bad", "conversations": [{"from": "human", "value": " ".join(["where"] * 400)}, a]}
    else:
        raise AssertionError(reason)
    good = [image_record(i, f"coco/train2017/{i % 4}.jpg") if i % 2 else text_record(i) for i in range(GOOD)]
    lines = [json.dumps(r) for r in good[:3]] + [bad if isinstance(bad, str) else json.dumps(bad)]
    return [*lines, *(json.dumps(r) for r in good[3:])]


REASONS = [
    "malformed_json",
    "no_conversations",
    "not_alternating",
    "no_assistant_turn",
    "image_token_mismatch",
    "missing_image",
    "unreadable_image",
    "truncated_image",
    "too_long",
    "no_trained_tokens",
]


@pytest.mark.parametrize("reason", REASONS)
@pytest.mark.parametrize("streaming", [False, True])
def test_each_bad_input_is_counted_and_good_records_survive(
    tmp_path: Path, image_root: Path, reason: str, streaming: bool
) -> None:
    lines = _bad_case(reason, image_root)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dm = LlavaDataModule(
        str(path),
        image_root=str(image_root),
        batch_size=4,
        streaming=streaming,
        shuffle=False,
        processor=processor(),
    )
    dm.setup("fit")
    seen: list[str] = []
    for batch in dm.train_dataloader():
        batch = dm.observe_batch(batch)
        assert batch["labels"].ne(-100).sum(dim=1).gt(0).all()  # no zero-loss rows
        seen += batch["ids"]
    assert sorted(seen) == sorted([f"t{i}" for i in range(0, GOOD, 2)] + [f"i{i}" for i in range(1, GOOD, 2)])
    expected = "unreadable_image" if reason == "truncated_image" else reason
    assert dm.bad_sample_counts() == {expected: 1}

    strict = LlavaDataModule(
        str(path),
        image_root=str(image_root),
        batch_size=4,
        streaming=streaming,
        shuffle=False,
        on_bad_sample="raise",
        processor=processor(),
    )
    with pytest.raises(BadSampleError) as err:
        strict.setup("fit")
        for _ in strict.train_dataloader():
            pass
    assert err.value.reason == expected
    assert "data.jsonl" in str(err.value)
    assert "bad" in str(err.value) or reason == "malformed_json"


def test_counts_come_back_from_workers_and_are_not_double_counted(tmp_path: Path, image_root: Path) -> None:
    records = [
        image_record(i, "coco/train2017/missing.jpg" if i % 4 == 0 else "coco/train2017/1.jpg")
        for i in range(16)
    ]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    dm = LlavaDataModule(
        path, image_root=str(image_root), batch_size=2, num_workers=2, streaming=True, processor=processor()
    )
    dm.setup("fit")
    for _ in range(2):  # two epochs: a bad record is still one bad record
        n = sum(len(dm.observe_batch(b)["ids"]) for b in dm.train_dataloader())
        assert n == 12
    assert dm.bad_sample_counts() == {"missing_image": 4}
    assert dm.state_dict()["stream"]["epoch"] == 2


# ---- WebDataset ---------------------------------------------------------------------------
def test_webdataset_round_trip(tmp_path: Path, image_root: Path) -> None:
    records = [*mixed_records(10), image_record(99, "coco/train2017/gone.jpg")]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    result = convert_to_wds(
        str(tmp_path / "llava.json"), str(tmp_path / "wds"), image_root=str(image_root), shard_size=4
    )
    assert len(result.shards) == 3 and result.written == 10
    assert result.counter.counts() == {"missing_image": 1}
    from_json = LlavaDataset(str(tmp_path / "llava.json"), processor(), image_root=str(image_root))
    want = {s["id"]: s for s in (from_json[i] for i in range(len(from_json))) if "input_ids" in s}
    stream = LlavaStreamingDataset(
        str(tmp_path / "wds" / "*.tar"), processor(), shuffle=True, shuffle_buffer=3
    )
    got = {s["id"]: s for s in stream}
    assert sorted(got) == sorted(r["id"] for r in records[:10])
    for key, sample in got.items():
        assert sample["input_ids"].equal(want[key]["input_ids"])
        if sample["pixel_values"] is not None:
            assert sample["pixel_values"].allclose(want[key]["pixel_values"])  # image bytes unchanged


# ---- DataModule -----------------------------------------------------------------------------
@pytest.mark.parametrize("streaming", [False, True])
def test_val_fraction_splits_without_overlap(tmp_path: Path, image_root: Path, streaming: bool) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", mixed_records(60))
    dm = LlavaDataModule(
        path,
        image_root=str(image_root),
        batch_size=8,
        streaming=streaming,
        val_fraction=0.25,
        processor=processor(),
    )
    dm.setup("fit")
    train = [i for b in dm.train_dataloader() for i in dm.observe_batch(b)["ids"]]
    val = [i for b in dm.val_dataloader() for i in b["ids"]]
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(r["id"] for r in mixed_records(60))
    assert 5 <= len(val) <= 25


def test_datamodule_needs_a_processor_before_loading(tmp_path: Path) -> None:
    dm = LlavaDataModule(write_jsonl(tmp_path / "d.jsonl", [text_record(0)]))
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="attach_processor"):
        dm.train_dataloader()
    dm.attach_processor(processor())
    assert next(iter(dm.train_dataloader()))["ids"] == ["t0"]


# ---- grouping by modality and length ------------------------------------------------------
def test_grouping_by_modality_and_length_cuts_padding() -> None:
    """A LLaVA-1.5-like mix: 576-token images + lognormal text, and long text-only (ShareGPT-like) chats."""
    rng = random.Random(0)
    lengths, has_image = [], []
    for _ in range(4000):
        image = rng.random() < 0.7
        text = int(rng.lognormvariate(4.5, 0.8)) + 8 if image else int(rng.lognormvariate(5.8, 0.9)) + 8
        lengths.append(min(2048, text + (576 if image else 0)))
        has_image.append(image)
    batch = 16
    order = list(range(len(lengths)))
    rng.shuffle(order)
    random_batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    sampler = ModalityLengthGroupedSampler(lengths, has_image, batch_size=batch, seed=1)
    indices = list(sampler)
    assert sorted(indices) == list(range(len(lengths)))  # a permutation: nothing dropped or repeated
    grouped = [indices[i : i + batch] for i in range(0, len(indices), batch)]
    before, after = padding_fraction(random_batches, lengths), padding_fraction(grouped, lengths)
    print(
        f"padding fraction: random {before:.3f} -> grouped {after:.3f} ({1 - after / before:.0%} of padding saved)"
    )
    assert after < 0.5 * before
    mixed = sum(len({has_image[i] for i in b}) > 1 for b in grouped)
    assert mixed <= 2  # only the remainder batches mix modalities
    assert max(lengths[i] for i in grouped[0]) == max(lengths)  # longest batch first
    sampler.set_epoch(1)
    assert list(sampler) != indices


def test_grouped_sampler_gives_each_rank_homogeneous_batches() -> None:
    lengths = [random.Random(i).randint(1, 500) for i in range(96)]
    has_image = [i % 2 == 0 for i in range(96)]
    indices = list(ModalityLengthGroupedSampler(lengths, has_image, batch_size=4, world_size=2))
    for rank in range(2):
        mine = indices[rank::2]  # what a distributed sampler wrapper hands this rank
        for b in range(0, len(mine), 4):
            assert len({has_image[i] for i in mine[b : b + 4]}) == 1


@pytest.mark.parametrize(("group", "packing"), [(False, False), (True, False), (True, True)])
def test_map_style_sampler_resumes_mid_epoch(
    tmp_path: Path, image_root: Path, group: bool, packing: bool
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", mixed_records(30))

    def dm() -> LlavaDataModule:
        module = LlavaDataModule(
            path,
            image_root=str(image_root),
            batch_size=4,
            group_by_modality_length=group,
            seed=5,
            packing={"enabled": packing, "max_tokens_per_row": 128},
        )
        module.attach_processor(processor())
        return module

    def run(module: LlavaDataModule, stop_after: int | None = None) -> list[str]:
        module.setup("fit")
        out: list[str] = []
        for step, batch in enumerate(module.train_dataloader()):
            out += module.observe_batch(batch)["ids"]
            if stop_after is not None and step + 1 == stop_after:
                break
        return out

    full = run(dm())
    first = dm()
    head = run(first, stop_after=3)
    resumed = dm()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = run(resumed)
    assert head + tail == full
    assert len(resumed.train_dataloader()) == 8  # Lightning still counts the whole epoch
    resumed.train_sampler.set_epoch(1)
    assert run(resumed) != full and sorted(run(resumed)) == sorted(
        full
    )  # a new epoch starts over, reshuffled


def test_resumable_sampler_splits_ranks_and_resumes_each() -> None:
    from llava_lite.data.resume import ResumableSampler

    lengths = [random.Random(i).randint(1, 300) for i in range(40)]
    has_image = [i % 3 != 0 for i in range(40)]

    def sampler(rank: int) -> ResumableSampler:
        base = ModalityLengthGroupedSampler(lengths, has_image, batch_size=4, world_size=2, seed=2)
        return ResumableSampler(40, num_replicas=2, rank=rank, seed=2, base=base)

    per_rank = [list(sampler(r)) for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(40))
    for r in range(2):
        resumed = sampler(r)
        resumed.load_state_dict({"epoch": 0, "consumed": 8, "num_replicas": 2})
        assert list(resumed) == per_rank[r][8:]
        assert len(resumed) == 20


def test_packing_datamodule_packs_rows_and_limits_samples_to_the_row_budget(tmp_path: Path) -> None:
    long_answer = {
        "id": "long",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "word " * 80}],
    }
    path = write_jsonl(tmp_path / "d.jsonl", [text_record(i) for i in range(7)] + [long_answer])
    module = LlavaDataModule(
        path, batch_size=8, shuffle=False, packing={"enabled": True, "max_tokens_per_row": 120}
    )
    module.attach_processor(processor(model_max_length=256))
    assert module.processor.model_max_length == 120 and processor().model_max_length == 256  # a copy
    module.setup("fit")
    batch = module.observe_batch(next(iter(module.train_dataloader())))
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] <= 120
    assert batch["input_ids"].shape[0] < len(batch["ids"])  # several samples per row
    assert len(batch["ids"]) == 8  # the long one truncated at the row budget (processor policy)
    with pytest.raises(ValueError, match="max_tokens_per_row=4 is smaller than one image block"):
        LlavaDataModule(path, packing={"enabled": True, "max_tokens_per_row": 4}).attach_processor(
            processor()
        )


def test_loader_tells_each_batch_the_trained_tokens_of_its_optimiser_step(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [text_record(i) for i in range(10)])
    collate = LlavaCollator(processor().pad_token_id, image_token_id=processor().image_token_id)
    loader = ResumableLoader(LlavaDataset(path, processor()), batch_size=2, collate_fn=collate)
    loader.accumulate = 3
    batches = list(loader)
    windows = [batches[0:3], batches[3:5]]  # the epoch's last window is shorter
    for window in windows:
        total = sum(b["trained_tokens"] for b in window)
        assert [b["step_trained_tokens"] for b in window] == [total] * len(window)
    assert windows[0][0]["step_trained_tokens"] != windows[1][0]["step_trained_tokens"]


def test_map_style_record_is_normalised_once(tmp_path: Path, image_root: Path, monkeypatch) -> None:
    """Reading, length grouping and every ``__getitem__`` share one normalisation per record."""
    import llava_lite.data.processor as processor_module
    import llava_lite.data.schema as schema

    calls: list[str] = []
    real = schema.normalize_conversation

    def counting(conversations, *args, **kwargs):
        calls.append(str(conversations[-1]["value"]))
        return real(conversations, *args, **kwargs)

    monkeypatch.setattr(schema, "normalize_conversation", counting)
    monkeypatch.setattr(processor_module, "normalize_conversation", counting)
    ds = LlavaDataset(
        write_jsonl(tmp_path / "d.jsonl", mixed_records(6)), processor(), image_root=str(image_root)
    )
    ds.modality_lengths()
    samples = [ds[i] for i in range(len(ds))] + [ds[0]]
    assert len(ids_of(samples)) == 7
    assert len(calls) == 6 and len(set(calls)) == 6


def test_position_restored_before_setup_is_kept_until_its_sampler_exists(tmp_path: Path) -> None:
    """A checkpoint written between ``load_state_dict`` and the first loader still holds the position."""
    path = write_jsonl(tmp_path / "d.jsonl", [text_record(i) for i in range(12)])
    state = {"bad_samples": {}, "sampler": {"epoch": 0, "consumed": 4, "num_replicas": 1}}
    module = LlavaDataModule(path, batch_size=2, seed=1)
    module.attach_processor(processor())
    module.load_state_dict(state)
    assert module.state_dict()["sampler"] == state["sampler"]  # saved again before setup
    module.setup("fit")
    rest = [i for b in module.train_dataloader() for i in module.observe_batch(b)["ids"]]
    fresh = LlavaDataModule(path, batch_size=2, seed=1)
    fresh.attach_processor(processor())
    fresh.setup("fit")
    full = [i for b in fresh.train_dataloader() for i in b["ids"]]
    assert rest == full[4:]
    assert module.state_dict()["sampler"]["consumed"] == 12

"""DPO parity with TRL's ``DPOTrainer``: the same tiny llava-hf model and batch give the same loss and rewards."""

from __future__ import annotations

import json
import warnings

import lightning as L
import pytest
import torch
from PIL import Image

from helpers import tiny_llava, write_dataset
from llava_lite.config import IGNORE_INDEX
from llava_lite.data import LlavaProcessor
from llava_lite.data.collate import LlavaCollator
from llava_lite.data.preference import PreferenceCollator, PreferenceDataset
from llava_lite.modeling import load_pretrained
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava
from llava_lite.training.preference import PreferenceLitModule

trl = pytest.importorskip("trl", reason="TRL is in the dev extra")
datasets = pytest.importorskip("datasets")

BETA, SFT_WEIGHT = 0.1, 0.5


def _records(n: int) -> list[dict]:
    """TRL's conversational schema, answers of several lengths."""
    return [
        {
            "id": f"p{i}",
            "prompt": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}],
                }
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": f"It is red {i}."}]}],
            "rejected": [
                {"role": "assistant", "content": [{"type": "text", "text": "Blue and big" + " yes" * i}]}
            ],
            "images": [f"{i:03d}.png"],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A reference and a (perturbed) policy as llava-hf folders, four images and their pairs."""
    root = tmp_path_factory.mktemp("trl")
    write_dataset(root, 4)
    model = tiny_llava(conv_template="chatml")
    export_to_hf_llava(model, root / "ref")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_to_hf_llava(model, root / "policy")
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(4)))
    return root


def _trl_batch_and_metrics(root) -> tuple[dict, float, dict]:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    records = _records(4)
    rows = {key: [r[key] for r in records] for key in ("prompt", "chosen", "rejected")}
    rows["images"] = [[Image.open(root / "images" / r["images"][0])] for r in records]
    args = trl.DPOConfig(
        output_dir=str(root / "trl_out"),
        beta=BETA,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, SFT_WEIGHT],
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        report_to=[],
        use_cpu=True,
        bf16=False,  # float32 throughout: TRL's default bf16 autocasts the reference's forward
        max_length=None,
        remove_unused_columns=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL's notices about its own defaults, not about this test
        trainer = trl.DPOTrainer(
            model=LlavaForConditionalGeneration.from_pretrained(root / "policy"),
            ref_model=LlavaForConditionalGeneration.from_pretrained(root / "ref"),
            args=args,
            train_dataset=datasets.Dataset.from_dict(rows),
            eval_dataset=datasets.Dataset.from_dict(rows),  # its loader keeps the records' order
            processing_class=AutoProcessor.from_pretrained(root / "policy"),
        )
        batch = next(iter(trainer.get_eval_dataloader()))
        trainer.model.train()
        loss = float(trainer.compute_loss(trainer.model, batch))
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return batch, loss, metrics


def _module(root) -> PreferenceLitModule:
    """Our stage-3 module on the policy folder, its reference replaced by the reference folder."""
    module = PreferenceLitModule(
        init_from=str(root / "policy"),
        preference={"beta": BETA, "sft_weight": SFT_WEIGHT, "reference": "copy"},
    )
    module.reference.frozen["model"] = load_pretrained(root / "ref").requires_grad_(False)
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    return module


def test_loss_and_rewards_equal_trl_on_the_same_batch(folders) -> None:
    batch, trl_loss, trl_metrics = _trl_batch_and_metrics(folders)
    pairs = batch["input_ids"].shape[0] // 2
    mask = batch["attention_mask"].bool()
    ours = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX),
        "pixel_values": batch["pixel_values"],
        "sequence_ids": torch.arange(2 * pairs)[:, None].expand_as(mask).masked_fill(~mask, -1),
        "pairs": pairs,
        "chosen_tokens": int(batch["completion_mask"][:pairs, 1:].sum()),
    }
    module = _module(folders)
    loss = module.training_step(ours, 0)
    sums = module._sums
    assert float(loss) == pytest.approx(trl_loss, abs=1e-5)
    assert sums["reward_chosen"] / pairs == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-5)
    assert sums["reward_rejected"] / pairs == pytest.approx(trl_metrics["rewards/rejected"], abs=1e-5)
    assert sums["reward_chosen"] != sums["reward_rejected"]  # the two models differ: a real comparison


def test_our_pipeline_reads_trl_records_as_the_same_text_and_trained_span(folders) -> None:
    """From the same JSONL records, our pair batch holds TRL's sequences and trains the same answer
    text. Token ids may differ at the turn boundary: our template tokenises each turn on its own,
    as stage 2 trained the model (never a token merged across the boundary), where TRL tokenises
    the whole text and cuts it where prompt and prompt + answer diverge."""
    batch, _, _ = _trl_batch_and_metrics(folders)
    model = load_pretrained(folders / "policy")
    processor = LlavaProcessor.from_model(model)
    dataset = PreferenceDataset(str(folders / "pairs.jsonl"), processor, str(folders / "images"), "raise")
    collate = PreferenceCollator(
        LlavaCollator(processor.pad_token_id, image_token_id=processor.image_token_id)
    )
    ours = collate([dataset[i] for i in range(len(dataset))])
    decode = processor.tokenizer.decode
    assert ours["input_ids"].shape[0] == batch["input_ids"].shape[0] == 8
    for row in range(8):
        theirs = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        mine = ours["input_ids"][row][ours["attention_mask"][row].bool()]
        assert decode(mine).replace(" ", "") == decode(theirs).replace(" ", "")
        trained = batch["input_ids"][row][batch["completion_mask"][row].bool()]
        mine_trained = ours["input_ids"][row][ours["labels"][row] != IGNORE_INDEX]
        assert decode(mine_trained).replace(" ", "").strip() == decode(trained).replace(" ", "").strip()
    assert ours["ids"] == ["p0", "p1", "p2", "p3"] and ours["pairs"] == 4

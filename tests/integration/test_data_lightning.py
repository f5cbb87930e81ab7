"""LlavaDataModule under a real Lightning Trainer: clean batches, skip counts, mid-epoch resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import CLIPImageProcessor

from llava_lite.data import LlavaDataModule, LlavaProcessor
from llava_lite.modeling.tokenizer import build_tiny_tokenizer


def make_processor() -> LlavaProcessor:
    tok = build_tiny_tokenizer("bpe")
    tok.add_tokens(["<image>"], special_tokens=True)
    ip = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return LlavaProcessor(tok, ip, num_image_tokens=4, template="chatml", model_max_length=128)


class TinyLM(L.LightningModule):
    """A bag-of-embeddings next-token model: just enough to take optimiser steps on real batches."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.out = torch.nn.Linear(8, vocab)
        self.seen: list[str] = []
        self.keys: set[str] = set()

    def training_step(self, batch, batch_idx):
        self.keys |= set(batch)
        self.seen += batch["ids"]
        logits = self.out(self.emb(batch["input_ids"]))  # [B, T, V]
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten()
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path: Path, max_steps: int, callbacks=()) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        default_root_dir=str(tmp_path),
    )


@pytest.mark.parametrize(("streaming", "group"), [(True, False), (False, False), (False, True)])
def test_trainer_resumes_mid_epoch(tmp_path: Path, streaming: bool, group: bool, recwarn) -> None:
    records = [
        {
            "id": f"r{i}",
            "conversations": [{"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": f"{i}."}],
        }
        for i in range(30)
    ]
    records[7] = {"id": "bad", "conversations": [{"from": "human", "value": "no answer"}]}
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    processor = make_processor()

    def datamodule() -> LlavaDataModule:
        return LlavaDataModule(
            str(path),
            batch_size=3,
            streaming=True,
            shuffle_buffer=6,
            seed=1,
            processor=processor,
            num_workers=1,
        )

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first, dm1 = TinyLM(len(processor.tokenizer)), datamodule()
    trainer(tmp_path, max_steps=4, callbacks=[ckpt]).fit(first, datamodule=dm1)
    assert first.keys == {
        "input_ids",
        "attention_mask",
        "labels",
        "pixel_values",
        "image_sizes",
        "image_tiled",
        "pixel_values_videos",
        "video_frames",
        "ids",
        "trained_tokens",
        "step_trained_tokens",
    }
    assert len(first.seen) == 12

    second, dm2 = TinyLM(len(processor.tokenizer)), datamodule()
    saved = sorted((tmp_path / "ckpt").glob("*.ckpt"))[-1]
    trainer(tmp_path, max_steps=10).fit(second, datamodule=dm2, ckpt_path=str(saved))
    good = sorted(r["id"] for r in records if r["id"] != "bad")
    assert sorted(first.seen + second.seen) == good  # one epoch, each record once across the restart
    assert dm2.bad_sample_counts() == {"no_assistant_turn": 1}
    assert not [w for w in recwarn if "not resumable" in str(w.message)]

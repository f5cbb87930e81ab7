"""The data contract against the real tiny LlavaModel: batches it can train on, prompts it can continue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaCollator, LlavaDataModule, LlavaProcessor
from llava_lite.modeling import LlavaModel


@pytest.fixture(scope="module")
def model() -> LlavaModel:
    torch.manual_seed(0)
    return LlavaModel(LlavaConfig.from_name("tiny"))


@pytest.mark.parametrize("template", ["vicuna_v1", "plain", "chatml", "llama_2"])
def test_datamodule_batches_train_the_model(tmp_path: Path, model: LlavaModel, template: str) -> None:
    Image.new("RGB", (48, 30), (200, 30, 30)).save(tmp_path / "a.png")
    turns = [
        {"from": "human", "value": "What is this? <image>"},
        {"from": "gpt", "value": "A red rectangle."},
    ]
    records = [{"id": "img", "image": "a.png", "conversations": turns}]
    if template != "plain":
        records.append(
            {
                "id": "txt",
                "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
            }
        )
    (tmp_path / "d.json").write_text(json.dumps(records))
    processor = LlavaProcessor.from_model(model, template=template)
    dm = LlavaDataModule(str(tmp_path / "d.json"), image_root=str(tmp_path), batch_size=2, shuffle=False)
    dm.attach_processor(processor)
    dm.setup("fit")
    batch = dm.observe_batch(next(iter(dm.train_dataloader())))
    assert (batch["input_ids"] == model.image_token_id).sum() == model.num_image_tokens
    out = model(
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    )
    assert torch.isfinite(out.loss) and out.loss > 0

    prompts = [processor.prompt("What is this?", Image.open(tmp_path / "a.png")), processor.prompt("Hi")]
    gen = LlavaCollator(processor.pad_token_id, padding_side="left")(prompts)
    new = model.generate(
        gen["input_ids"],
        pixel_values=gen["pixel_values"],
        attention_mask=gen["attention_mask"],
        max_new_tokens=2,
        eos_token_id=processor.stop_token_ids,
    )
    assert new.shape == (2, 2)

"""AnyRes end to end on a CPU: stage 2 with the tower unfrozen, packed and streamed, resumed exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train_e2e import tiny_cfg

from helpers import CrashAt, read_losses, write_dataset
from llava_lite.training import train

# (height, width) per record: wide, tall, square, tiny and thin images give 16 to 88 tokens each.
SIZES = [(32, 32), (40, 90), (90, 40), (64, 64), (3, 5), (20, 200), (70, 70), (33, 47)]


@pytest.mark.parametrize(
    ("streaming", "workers"), [(True, 2), (False, 0)], ids=["streaming-2-workers", "map-style-grouped"]
)
def test_anyres_stage_two_resumes_exactly_with_packing(tmp_path: Path, streaming: bool, workers: int) -> None:
    """Crash after the step-3 checkpoint, resume with ckpt_path=last: steps 3..5 match exactly."""
    records = write_dataset(tmp_path / "data", 24, SIZES)
    common = (
        "data.packing.enabled=true",
        "data.packing.max_tokens_per_row=200",
        "trainer.max_steps=6",
        "data.batch_size=3",
        f"data.streaming={str(streaming).lower()}",
        f"data.num_workers={workers}",
        f"data.group_by_modality_length={str(not streaming).lower()}",
        "data.shuffle_buffer=8",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "callbacks.model_checkpoint.save_top_k=-1",
        "trainer.deterministic=true",
    )
    full = train(tiny_cfg(tmp_path, records, "tiny_anyres_finetune", "run_name=full", *common))
    reference = read_losses(full["output_dir"])
    assert len(reference) == 6
    assert full["bad_samples"] == {}

    crashed = tiny_cfg(tmp_path, records, "tiny_anyres_finetune", "run_name=crashed", *common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, callbacks=[CrashAt(at=3)])
    resume = ("run_name=crashed", "ckpt_path=last", "logger.csv.name=resumed")
    resumed = train(tiny_cfg(tmp_path, records, "tiny_anyres_finetune", *resume, *common))
    continued = read_losses(resumed["output_dir"], "resumed")
    assert sorted(continued) == sorted(reference)[3:]
    for step, loss in continued.items():
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step

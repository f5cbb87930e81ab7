"""``llava-lite-plan``: memory and time of a training run before it starts (Hydra front end of
:func:`llava_lite.training.plan.plan_run`).

Example: ``llava-lite-plan experiment=llava_v1_5_finetune trainer.devices=8
module.gradient_checkpointing=true``. The run is composed as ``llava-lite-train`` composes it
(``conf/plan.yaml`` includes ``conf/train.yaml``); the model is built on the meta device, so
nothing is allocated or downloaded.
"""

from __future__ import annotations

from omegaconf import DictConfig

from llava_lite.cli import hydra_app
from llava_lite.training.plan import format_plan, plan_run


def _run(cfg: DictConfig) -> None:
    print(format_plan(plan_run(cfg)))


def main() -> None:
    """Console entry point; arguments are Hydra overrides, as ``llava-lite-train`` takes."""
    hydra_app.hydra_main("plan", _run)


if __name__ == "__main__":
    main()

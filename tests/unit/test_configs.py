"""Every shipped Hydra config composes, and instantiates with tiny overrides (no network).

Files are enumerated from ``conf/`` so a new config cannot escape: a file in a group this
test does not know fails ``test_every_config_file_is_covered``.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf, open_dict
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from llava_lite.config import LlavaConfig, preset_names
from llava_lite.generation.pipeline import GenerationPipeline
from llava_lite.generation.settings import settings_from
from llava_lite.modeling import LlavaModel, build_projector
from llava_lite.training import (
    LlavaLitModule,
    accumulation_steps,
    build_datamodule,
    compose_config,
    config_dir,
)

CONF = config_dir()
TRAIN_GROUPS = (
    "model",
    "model/vision",
    "model/llm",
    "model/projector",
    "data",
    "trainer",
    "callbacks",
    "logger",
    "paths",
    "experiment",
)
GENERATE_GROUPS = ("teacher",)
PAIRS_GROUPS = ("judge",)
DEMO_GROUPS = ("demo",)
_HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _primaries() -> list[str]:
    return sorted(p.stem for p in CONF.glob("*.yaml"))


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text(
        '{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n'
    )
    return path


@pytest.fixture(scope="module")
def tiny_model() -> LlavaModel:
    return LlavaModel(LlavaConfig.from_name("tiny"))


def _cfg(train_file: Path, *overrides: str):
    return compose_config(
        [f"data.train_files={train_file}", f"paths.root_dir={train_file.parent}", *overrides]
    )


def _llava_config(model_node) -> LlavaConfig:
    return LlavaConfig.from_dict(OmegaConf.to_container(model_node, resolve=True))


def _is_offline(model_node) -> bool:
    return model_node.vision.name_or_path is None and model_node.llm.name_or_path is None


def _instantiate_trainer(trainer_node) -> None:
    """A CPU-sized Trainer from the config; DeepSpeed (GPU-only) gets its strategy object built."""
    node = copy.deepcopy(trainer_node)
    strategy = node.get("strategy")
    target = strategy.get("_target_", "") if strategy is not None else ""
    if target.endswith("DeepSpeedStrategy"):
        if not _HAS_DEEPSPEED:
            pytest.skip("deepspeed is not installed (optional extra llava_lite[deepspeed])")
        instantiate(strategy)
        return
    with open_dict(node):
        node.accelerator, node.devices, node.precision = "cpu", 1, "32-true"
    trainer = instantiate(node, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, Trainer)
    if target.endswith(".FSDPStrategy"):  # llava_lite's, which also runs on CPU processes
        policy = trainer.strategy.kwargs["auto_wrap_policy"]
        assert isinstance(policy, ModuleWrapPolicy) and "LlamaDecoderLayer" in repr(policy._module_classes)
    if target.endswith(".FSDP2Strategy"):
        assert trainer.strategy.param_dtype == torch.bfloat16


def test_every_config_file_is_covered() -> None:
    known = {*TRAIN_GROUPS, *GENERATE_GROUPS, *PAIRS_GROUPS, *DEMO_GROUPS}
    groups = {str(p.parent.relative_to(CONF)) for p in CONF.rglob("*.yaml") if p.parent != CONF}
    assert groups <= known, (
        f"config groups {sorted(groups - known)} are not tested: add them to test_configs.py"
    )
    assert "train" in _primaries()


@pytest.mark.parametrize("primary", _primaries())
def test_primary_configs_compose(primary: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=primary)
    assert len(cfg) > 0


@pytest.mark.parametrize("option", _options("teacher"))
def test_teacher_configs(option: str, tmp_path: Path) -> None:
    """Each ``teacher=<option>`` of llava-lite-generate validates and builds the teacher it names
    (nothing is sent or written); the option is the name its records carry."""
    overrides = [f"teacher={option}", "captions_file=captions.json", f"output_dir={tmp_path / 'out'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="generate", overrides=overrides)
    teacher = GenerationPipeline(settings_from(OmegaConf.to_container(cfg, resolve=True))).teacher
    assert teacher.name == option
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", _options("model"))
def test_model_presets(option: str, train_file: Path) -> None:
    # Stage 2's composition: stage 1 swaps the chat template for `plain` (checked below).
    cfg = _cfg(train_file, f"model={option}", "experiment=finetune")
    if missing := sorted(OmegaConf.missing_keys(cfg)):  # parts a run makes (model=demo)
        with pytest.raises(
            ValueError, match=rf"model preset '{option}' needs {re.escape(', '.join(missing))}: set it"
        ):
            LlavaConfig.from_name(option)
        cfg = _cfg(train_file, f"model={option}", "experiment=finetune", *(f"{k}=org/x" for k in missing))
        assert {OmegaConf.select(cfg, k) for k in missing} == {"org/x"}
        return
    config = _llava_config(cfg.model)
    # One preset table: from_name reads the file Hydra composes (only the stage's template differs).
    assert config.to_dict() == LlavaConfig.from_name(option).to_dict()
    if _is_offline(cfg.model):
        module = instantiate(cfg.module)
        assert isinstance(module, LlavaLitModule) and module.model.config == config
    else:
        assert config.vision.name_or_path and config.llm.name_or_path


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in ("model/vision", "model/llm", "model/projector") for o in _options(g)],
)
def test_model_parts(group: str, option: str, train_file: Path) -> None:
    cfg = _cfg(train_file, "model=tiny", f"{group}={option}")
    config = _llava_config(cfg.model)
    assert build_projector(config.projector.type, 4, 8, 16) is not None  # a registered type (16 image tokens)
    if _is_offline(cfg.model):
        module = instantiate(cfg.module)
        assert module.model.projector is not None
    else:
        assert (config.vision.name_or_path or config.llm.name_or_path).count("/") == 1  # a hub id


@pytest.mark.parametrize("option", _options("data"))
def test_data_configs(option: str, train_file: Path, tiny_model: LlavaModel) -> None:
    cfg = _cfg(train_file, f"data={option}", f"data.train_files={train_file}")
    dm = build_datamodule(cfg.data, tiny_model)
    assert dm.train_files == [str(train_file)] and dm.batch_size == cfg.data.batch_size
    assert dm.processor.overlong == cfg.data.overlong == "skip"
    if option != "llava":  # named datasets live under paths.data_dir
        assert compose_config([f"data={option}"]).data.train_files.startswith("./data/")


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_configs(option: str, train_file: Path) -> None:
    cfg = _cfg(train_file, f"trainer={option}")
    if option == "cpu":
        assert cfg.trainer.precision == "32-true"
    if option in ("gpu", "ddp", "fsdp") or option.startswith("deepspeed"):
        assert cfg.trainer.precision == "bf16-mixed"
    if option == "fsdp2":  # bf16 compute through FSDP2's own policy, over float32 shards
        assert cfg.trainer.precision == "32-true"
        assert cfg.trainer.strategy.reduce_dtype == "float32"
    _instantiate_trainer(cfg.trainer)


def test_deepspeed_stages(train_file: Path) -> None:
    assert _cfg(train_file, "trainer=deepspeed").trainer.strategy.stage == 2
    assert _cfg(train_file, "trainer=deepspeed_zero3").trainer.strategy.stage == 3


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in ("callbacks", "logger") for o in _options(g)])
def test_callbacks_and_loggers(group: str, option: str, train_file: Path) -> None:
    cfg = _cfg(train_file, f"{group}={option}")
    objects = [instantiate(node) for node in cfg[group].values() if node is not None]
    assert len(objects) == len(cfg[group])


@pytest.mark.parametrize("option", _options("paths"))
def test_paths(option: str, train_file: Path) -> None:
    cfg = _cfg(train_file, f"paths={option}", "run_name=x")
    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    assert paths["output_dir"].endswith("/train/x")


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiments(option: str, train_file: Path, tiny_model: LlavaModel, tmp_path_factory) -> None:
    cfg = _cfg(train_file, f"experiment={option}", f"data.train_files={train_file}")
    preference = option.endswith("dpo")  # stage 3 starts from a stage-2 model folder
    if missing := sorted(OmegaConf.missing_keys(cfg)):  # the demo's stages name the parts it makes
        if preference:
            assert missing == ["module.init_from"]
            folder = tmp_path_factory.mktemp("stage2")
            tiny_model.save_pretrained(folder)
            named = [f"module.init_from={folder}"]
        else:
            assert option.startswith("demo_") and missing == [
                "model.llm.name_or_path",
                "model.vision.name_or_path",
            ]
            named = ["model.llm.name_or_path=org/llm", "model.vision.name_or_path=org/clip"]
        cfg = _cfg(train_file, f"experiment={option}", f"data.train_files={train_file}", *named)
    OmegaConf.to_container(cfg, resolve=True)  # no dangling interpolation
    assert cfg.module.stage in ("pretrain", "finetune")
    if preference:
        assert cfg.data.preference and cfg.module._target_.endswith("PreferenceLitModule")
    else:
        assert option.startswith(cfg.module.stage) or cfg.module.stage in option
    config = _llava_config(cfg.model)
    if _is_offline(cfg.model) or preference:
        instantiate(cfg.module)
    else:
        assert config.llm.name_or_path
    build_datamodule(cfg.data, tiny_model)
    for group in ("callbacks", "logger"):
        [instantiate(node) for node in cfg[group].values() if node is not None]
    _instantiate_trainer(cfg.trainer)


@pytest.mark.parametrize(
    ("option", "model", "lr", "global_batch", "epochs"),
    [
        ("llava_v1_pretrain", "linear", 2e-3, 128, 1),
        ("llava_v1_finetune", "linear", 2e-5, 32, 3),
        ("llava_v1_5_pretrain", "mlp2x_gelu", 1e-3, 256, 1),
        ("llava_v1_5_finetune", "mlp2x_gelu", 2e-5, 128, 1),
    ],
)
def test_paper_stage_settings(option: str, model: str, lr: float, global_batch: int, epochs: int) -> None:
    cfg = compose_config([f"experiment={option}"])
    assert cfg.module.optimizer.lr == lr and cfg.global_batch_size == global_batch
    assert cfg.trainer.max_epochs == epochs and cfg.module.warmup_ratio == 0.03
    assert cfg.model.projector.type == model and cfg.model.model_max_length == 2048
    if "v1_5" in option:
        assert cfg.model.image_aspect == "pad" and cfg.model.vision.name_or_path.endswith("-336")
    # The global batch is reachable on a node of 8 GPUs.
    assert accumulation_steps(global_batch, cfg.data.batch_size, 8) >= 1
    if cfg.module.stage == "pretrain":
        assert cfg.callbacks.projector.path.endswith("projector.safetensors")


def test_config_dir_env_override(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLAVA_LITE_CONF", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no train\.yaml"):
        config_dir()
    monkeypatch.setenv("LLAVA_LITE_CONF", str(CONF))
    assert config_dir() == CONF.resolve()


def test_stage1_uses_the_plain_template_and_stage2_the_models_own(train_file: Path) -> None:
    stage1 = _llava_config(_cfg(train_file, "model=tiny", "experiment=pretrain").model)
    stage2 = _llava_config(_cfg(train_file, "model=tiny", "experiment=finetune").model)
    assert stage1.conv_template == "plain"
    assert stage2.conv_template == LlavaConfig.from_name("tiny").conv_template == "vicuna_v1"


def test_data_configs_name_only_real_bad_sample_policies() -> None:
    """The comment beside ``on_bad_sample`` documents the policies that exist, and only those."""
    import re

    from llava_lite.data.bad_samples import BAD_SAMPLE_POLICIES

    for path in sorted((CONF / "data").glob("*.yaml")):
        for line in path.read_text().splitlines():
            if not line.startswith("on_bad_sample:"):
                continue
            value, _, comment = line.removeprefix("on_bad_sample:").partition("#")
            assert value.strip() in BAD_SAMPLE_POLICIES, path
            named = set(re.findall(r"(\w+):", comment)) | set(re.findall(r'"(\w+)"', comment))
            assert named == set(BAD_SAMPLE_POLICIES), f"{path}: {line}"


def test_overlong_policy_is_set_from_the_data_config(train_file: Path, tiny_model: LlavaModel) -> None:
    cfg = _cfg(train_file, "data.overlong=truncate")
    assert build_datamodule(cfg.data, tiny_model).processor.overlong == "truncate"
    with pytest.raises(ValueError, match=r"overlong='cut'; valid"):
        build_datamodule(_cfg(train_file, "data.overlong=cut").data, tiny_model)


def test_presets_are_the_model_group_including_qwen2_and_llama2(caplog) -> None:
    assert preset_names() == _options("model")
    assert {"llava_qwen2_7b", "llava_llama2_7b", "tiny"} <= set(preset_names())
    qwen2, llama2 = LlavaConfig.from_name("llava_qwen2_7b"), LlavaConfig.from_name("llava_llama2_7b")
    assert (qwen2.conv_template, qwen2.llm.name_or_path, qwen2.llm.model_type) == (
        "chatml",
        "Qwen/Qwen2-7B-Instruct",
        "qwen2",
    )
    assert (llama2.conv_template, llama2.llm.name_or_path) == ("llama_2", "meta-llama/Llama-2-7b-chat-hf")
    assert LlavaConfig.from_name("tiny", model_max_length=128).model_max_length == 128
    with pytest.raises(KeyError, match=r"unknown LLaVA preset 'nope'; valid: \[.*'llava_llama2_7b'"):
        LlavaConfig.from_name("nope")
    with caplog.at_level("WARNING"):  # every key of a preset file is a LlavaConfig field
        LlavaConfig.from_name("llava_v1_5_7b")
    assert "ignoring unknown config keys" not in caplog.text


def test_init_projector_from_is_a_config_field(train_file: Path) -> None:
    cfg = _cfg(
        train_file, "experiment=tiny_finetune", "model.init_projector_from=/runs/s1/projector.safetensors"
    )
    assert _llava_config(cfg.model).init_projector_from == "/runs/s1/projector.safetensors"
    assert LlavaConfig.from_name("tiny").init_projector_from is None


@pytest.mark.parametrize("option", _options("demo"))
def test_demo_configs(option: str) -> None:
    """``llava-lite-demo`` (``demo=full``) and ``--quick`` (``demo=quick``) compose into every
    setting the demo reads, each set in a shipped file (no dataclass default stands in)."""
    from llava_lite.demo.settings import demo_settings, settings_count

    settings = demo_settings(["seed=4"], quick=option == "quick")
    assert settings.seed == 4 and settings_count(settings) == settings_count(demo_settings())
    full = demo_settings()
    if option == "quick":
        assert settings.world.n_train < full.world.n_train and settings.stage2.steps < full.stage2.steps
        assert settings.vision.steps < full.vision.steps and settings.llm.steps < full.llm.steps
    with pytest.raises(Exception, match=r"stage2\.stepz"):
        demo_settings(["stage2.stepz=3"])  # a mistyped key is named, not ignored


def test_the_demo_settings_count_is_the_one_the_docs_state() -> None:
    from llava_lite.demo.settings import demo_settings, settings_count

    stated = f"**{settings_count(demo_settings())} settings**"
    root = Path(__file__).resolve().parents[2]
    for doc in ("README.md", "docs/demo.md"):
        assert stated in (root / doc).read_text(), f"{doc} does not say {stated}"


@pytest.mark.parametrize("option", _options("judge"))
def test_pairs_judge_configs(option: str, tmp_path: Path) -> None:
    """Each ``judge=<option>`` of llava-lite-pairs validates and builds its judge (nothing is sent)."""
    from llava_lite.cli.pairs import build_judge
    from llava_lite.preference.settings import settings_from as pairs_settings
    from llava_lite.synthetic import build_world

    world = build_world(tmp_path / "world", n_train=0, n_val=0, n_test=1, image_size=32)
    overrides = [f"judge={option}", "model_dir=m", "questions_file=q.jsonl"]
    if option == "offline":
        overrides.append(f"judge.world={world.root}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="pairs", overrides=overrides)
    judge = build_judge(pairs_settings(OmegaConf.to_container(cfg, resolve=True)))
    assert judge.model == ("offline-checker" if option == "offline" else "claude-sonnet-4-6")

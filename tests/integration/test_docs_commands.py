"""Every command the README and docs/ show in a shell block runs here, in its quick form.

``QUICK`` maps each command as shown (continuation lines joined, comments dropped, ``&&``
split) to how it is exercised, in a sandbox folder holding the files the commands name
(tiny images and records, COCO annotations, a ScienceQA release, LLaVA-Bench files):

- ``run``: the command itself, through its console entry point, with quick overrides added
  (two steps, two new tokens, the local API stand-in for Claude) and ``...`` filled in;
- ``compose``: ``--cfg job``, Hydra composes the command's config and prints it (a real run
  needs GPUs and the hub's 7B weights);
- ``help``: ``--help`` (a real run needs the hub or the network, said in ``why``);
- ``skip``: not ours to run here (installs, the suite itself, the demo with its own tests).

A command the docs show that ``QUICK`` lacks fails the test, so a new command cannot go
untested; so does an entry the docs no longer show, and any quick run that fails.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from PIL import Image

from fakes.anthropic_api import FakeAnthropicAPI
from helpers import free_port, make_video, write_llava_bench_files
from llava_lite.config import LlavaConfig
from llava_lite.modeling import LlavaModel

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
KEY = "sk-ant-docs-commands-7c2e"

# Programs never run here, whatever their arguments, and why.
NOT_RUN = {
    "pip": "installs packages: the environment these tests run in (.ci/run builds it)",
    ".": "activates the environment these tests run in",
    "export": "sets a variable; the test sets a fake ANTHROPIC_API_KEY for the local API stand-in",
    "ruff": "the lint step of the checks this file is part of",
    "pytest": "the suite this file is part of",
    "llava-lite-demo": "the demo runs for minutes; tests/integration/test_demo*.py and test_demo_cli.py test it",
}


@dataclass(frozen=True)
class Quick:
    how: str  # run | compose | help | skip
    extra: tuple[str, ...] = ()  # arguments added to the command as shown
    fill: tuple[tuple[str, tuple[str, ...]], ...] = ()  # a shown argument ("...") -> its stand-ins
    why: str = ""
    stdin: str | None = None


def run(*extra: str, fill: dict[str, tuple[str, ...]] | None = None, why: str = "", stdin: str | None = None):
    return Quick("run", extra, tuple((fill or {}).items()), why, stdin)


def compose(why: str) -> Quick:
    return Quick("compose", why=why)


def help_only(why: str) -> Quick:
    return Quick("help", why=why)


def skip(why: str) -> Quick:
    return Quick("skip", why=why)


COCO = (
    "captions_file=coco/annotations/captions_train2017.json",
    "instances_file=coco/annotations/instances_train2017.json",
)
TINY_TRAIN = ("trainer.max_epochs=-1", "trainer.max_steps=2", "callbacks.progress_bar=null")
FINETUNE_DATA = (
    "data.train_files=data/instruct.jsonl",
    "data.image_root=data/images",
    "model.init_projector_from=runs/train/s1/projector.safetensors",
)
DPO_STEPS = (*TINY_TRAIN, "global_batch_size=null", "data.batch_size=2", "data.num_workers=0")
GPU_7B = "a real run trains a 7B model on GPUs from the hub's Vicuna and CLIP weights"
NODES = (
    "needs several GPU nodes; tests/integration/test_multinode.py launches the same way (the sbatch "
    "script under a stand-in srun, torchrun, MASTER_ADDR / NODE_RANK) as two CPU 'nodes' on one machine"
)
HUB_TASK = "downloads the task's dataset from the Hugging Face hub"
MODEL = "runs/train/s2/model"
OV_MODEL = "runs/train/ov/model"  # a tiny_onevision model (several images and video), saved by the sandbox
TWO_TOKENS = ("--max-new-tokens", "2")
LMMS = "lmms-eval --model llava_lite is run on a local task by tests/integration/test_lmms_eval.py"

# In the order they run: later commands use what earlier ones wrote (s1 -> s2 -> the model folder).
QUICK: dict[str, Quick] = {
    "python3.11 -m venv .venv": skip(NOT_RUN["pip"]),
    # generation: the teacher is the local API stand-in (or the offline rules)
    "llava-lite-generate captions_file=coco/annotations/captions_train2017.json "
    "instances_file=coco/annotations/instances_train2017.json output_dir=data/instruct dry_run=true": run(),
    "llava-lite-generate ... output_dir=data/instruct budget_usd=50": run(
        "teacher.base_url={api}", fill={"...": COCO}
    ),
    "llava-lite-generate ... output_dir=data/instruct batch.enabled=true": run(
        "teacher.base_url={api}",
        "batch.poll_interval_s=0.05",
        fill={"...": COCO, "output_dir=data/instruct": ("output_dir=data/instruct_batch",)},
        why="a fresh output_dir: in data/instruct every sample is done and nothing would be batched",
    ),
    "llava-lite-pairs model_dir=out/stage2 questions_file=questions.jsonl image_root=images "
    "captions_file=annotations/captions_val2017.json instances_file=annotations/instances_val2017.json "
    "output_dir=data/pairs budget_usd=2": compose(
        "needs a stage-2 model and a paid judge; tests/integration/test_pairs_run.py runs it against "
        "the local API stand-in, and with the offline judge"
    ),
    "llava-lite-generate ... teacher=offline": run(fill={"...": (*COCO, "output_dir=data/instruct_offline")}),
    # training: two steps of each tiny stage, then a resumed third
    "llava-lite-train experiment=tiny_pretrain data.train_files=data/captions.json "
    "data.image_root=data/images run_name=s1": run(*TINY_TRAIN),
    "llava-lite-train experiment=tiny_finetune data.train_files=data/instruct.jsonl data.image_root=data/images "
    "model.init_projector_from=runs/train/s1/projector.safetensors run_name=s2": run(*TINY_TRAIN),
    "llava-lite-train experiment=tiny_finetune ... run_name=s2 ckpt_path=last": run(
        "trainer.max_epochs=-1",
        "trainer.max_steps=3",
        "callbacks.progress_bar=null",
        fill={"...": FINETUNE_DATA},
    ),
    # stage 3 from the s2 model folder, on the sandbox's pairs
    "llava-lite-pairs model_dir=runs/train/s2/model questions_file=q.jsonl image_root=data/images "
    "captions_file=captions.json instances_file=instances.json output_dir=data/pairs budget_usd=2": compose(
        "needs a paid judge; tests/integration/test_pairs_run.py runs it against the local API stand-in"
    ),
    "llava-lite-train experiment=dpo module.init_from=runs/train/s2/model "
    "data.train_files=data/pairs/pairs.jsonl data.image_root=data/images": run(*DPO_STEPS),
    "llava-lite-train experiment=dpo module.init_from=runs/train/s2/model "
    "data.train_files=data/pairs/pairs.jsonl data.image_root=data/images run_name=s3": run(*DPO_STEPS),
    "llava-lite-train experiment=llava_v1_5_pretrain trainer=ddp run_name=v15_s1": compose(GPU_7B),
    "llava-lite-train experiment=llava_v1_5_finetune trainer=deepspeed "
    "model.init_projector_from=runs/train/v15_s1/projector.safetensors": compose(GPU_7B),
    "llava-lite-train experiment=llava_v1_5_pretrain paths.data_dir=/data run_name=v15_7b_s1 "
    "module.gradient_checkpointing=true": compose(GPU_7B),
    "llava-lite-train experiment=llava_v1_5_finetune paths.data_dir=/data run_name=v15_7b_s2 "
    "module.gradient_checkpointing=true model.init_projector_from=runs/train/v15_7b_s1/projector.safetensors": (
        compose(GPU_7B)
    ),
    "llava-lite-train experiment=llava_v1_5_finetune trainer=fsdp2 trainer.devices=8 "
    "module.gradient_checkpointing=true model.init_projector_from=runs/train/v15_7b_s1/projector.safetensors": (
        compose(GPU_7B)
    ),
    # several nodes (docs/training.md, "Several nodes")
    "sbatch --nodes=4 scripts/slurm/train_multinode.sbatch experiment=llava_v1_5_pretrain paths.data_dir=/data "
    "data.batch_size=8": skip(NODES),
    "torchrun --nnodes 4 --nproc-per-node 8 --node-rank 0 --master-addr node0.example --master-port 29500 "
    "-m llava_lite.cli.train experiment=llava_v1_5_pretrain trainer=multinode trainer.num_nodes=4 "
    "paths.data_dir=/data data.batch_size=8 run_name=v15_s1_4nodes": skip(NODES),
    "MASTER_ADDR=node0.example MASTER_PORT=29500 NODE_RANK=0 llava-lite-train experiment=llava_v1_5_pretrain "
    "trainer=multinode trainer.num_nodes=4 paths.data_dir=/data data.batch_size=8 run_name=v15_s1_4nodes": skip(
        NODES
    ),
    # using the trained tiny model
    f"llava-lite-chat {MODEL} --image photo.jpg": run(*TWO_TOKENS, stdin="What is this?\n/reset\n/exit\n"),
    f"llava-lite-chat {MODEL} --image photo.jpg --question 'What is this?'": run(*TWO_TOKENS),
    f"llava-lite-chat {OV_MODEL} --image a.jpg --image b.jpg --question 'Is the red object in both?'": run(
        *TWO_TOKENS
    ),
    f"llava-lite-chat {OV_MODEL} --video clip.mp4 --question 'Which way does the square move?'": run(
        *TWO_TOKENS
    ),
    f"llava-lite-eval task=scienceqa model_dir={MODEL} scienceqa.base_dir=data/scienceqa": run(
        "decoding.max_new_tokens=2"
    ),
    "llava-lite-eval task=llava_bench model_dir=... llava_bench.questions_file=questions.jsonl "
    "llava_bench.context_file=context.jsonl llava_bench.references_file=answers_gpt4.jsonl": run(
        "decoding.max_new_tokens=2",
        "judge.base_url={api}",
        fill={"model_dir=...": (f"model_dir={MODEL}",)},
        why="the judge is the local API stand-in",
    ),
    f"'M=--model llava_lite --model_args pretrained={MODEL} --batch_size 1 --output_path results/'": skip(
        "sets the shell variable the lmms-eval lines use"
    ),
    "lmms-eval '$M' --tasks scienceqa_img": help_only(f"{HUB_TASK}; {LMMS}"),
    "lmms-eval '$M' --tasks pope": help_only(f"{HUB_TASK}; {LMMS}"),
    "lmms-eval '$M' --tasks mme": help_only(f"{HUB_TASK}; {LMMS}"),
    "lmms-eval '$M' --tasks mmbench_en_dev": help_only(f"{HUB_TASK} and calls an OpenAI judge; {LMMS}"),
    "lmms-eval '$M' --tasks llava_in_the_wild": help_only(f"{HUB_TASK} and calls an OpenAI judge; {LMMS}"),
    f"llava-lite-web {MODEL}": run(
        "--port", "{port}", why="a free port: 7860 may be taken; the page is fetched, then the server stops"
    ),
    f"llava-lite-web {MODEL} --port 8000 --host 0.0.0.0": help_only(
        "listens on every interface, which a test must not do; the line above serves on loopback"
    ),
}


def shown_commands() -> dict[str, list[str]]:
    """Each command in the pages' shell blocks -> where it is shown ("README.md:161")."""
    found: dict[str, list[str]] = {}
    for page in PAGES:
        text = page.read_text()
        for block in FENCE.finditer(text):
            if block.group(1) not in SHELL_LANGS:
                continue
            first_line = text[: block.start()].count("\n") + 2
            for offset, line in _logical_lines(block.group(2)):
                for command in _commands(line):
                    found.setdefault(command, []).append(f"{page.relative_to(ROOT)}:{first_line + offset}")
    return found


def _logical_lines(block: str) -> list[tuple[int, str]]:
    """The block's lines with backslash continuations joined, each with its first line's index."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for index, line in enumerate(block.split("\n")):
        if not pending:
            start = index
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def _commands(line: str) -> list[str]:
    """The ``&&``-separated commands of one shell line, each as ``shlex.join`` of its words
    (comments dropped; quoted words stay quoted, so the command splits back into them)."""
    words = shlex.split(line, comments=True)
    commands, current = [], []
    for word in [*words, "&&"]:
        if word == "&&":
            if current:
                commands.append(shlex.join(current))
            current = []
        else:
            current.append(word)
    return commands


def _program(command: str) -> str:
    return shlex.split(command)[0]


def _is_assignment(command: str) -> bool:
    return re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", _program(command)) is not None


def _needs_entry(command: str) -> bool:
    return _program(command) not in NOT_RUN or command in QUICK


def test_every_command_shown_has_a_quick_form() -> None:
    shown = shown_commands()
    assert any(c.startswith("llava-lite-train") for c in shown)  # the extraction finds the blocks
    missing = {c: where for c, where in shown.items() if _needs_entry(c) and c not in QUICK}
    assert not missing, (
        "commands the README / docs show with no quick form in QUICK (add one, or say why not): "
        + json.dumps(missing, indent=1)
    )
    stale = [c for c in QUICK if c not in shown]
    assert not stale, f"QUICK entries the docs no longer show (remove or update them): {stale}"
    for command, quick in QUICK.items():
        assert quick.how in ("run", "compose", "help", "skip"), command
        assert quick.how == "run" or quick.why, f"{command}: say why it is not run"
        assert not _is_assignment(command) or quick.how == "skip", command


# ---- the sandbox --------------------------------------------------------------------------------


def _write_sandbox(root: Path) -> None:
    """The files the shown commands name, tiny."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
    (root / "data" / "images").mkdir(parents=True)
    captions, instruct = [], []
    for i, (name, rgb) in enumerate([*colours.items()] * 2):
        Image.new("RGB", (32, 32), rgb).save(root / "data" / "images" / f"{i}.png")
        captions.append(
            {
                "id": f"c{i}",
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image briefly."},
                    {"from": "gpt", "value": f"A {name} square."},
                ],
            }
        )
        instruct.append(
            {
                "id": f"i{i}",
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is it?"},
                    {"from": "gpt", "value": f"It is {name}."},
                    {"from": "human", "value": "Is it a square?"},
                    {"from": "gpt", "value": "Yes."},
                ],
            }
        )
    (root / "data" / "captions.json").write_text(json.dumps(captions))
    pairs = [
        {"id": f"p{i}", "image": f"{i}.png", "prompt": "What colour is it?", "chosen": f"It is {name}.",
         "rejected": "It is a circle."}
        for i, name in enumerate(colours)
    ]  # fmt: skip
    (root / "data" / "pairs").mkdir()
    (root / "data" / "pairs" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (root / "data" / "instruct.jsonl").write_text("".join(json.dumps(r) + "\n" for r in instruct))

    annotations = root / "coco" / "annotations"
    annotations.mkdir(parents=True)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in (1, 2)]
    (annotations / "captions_train2017.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": [
                    {"id": i, "image_id": i, "caption": f"A kite number {i} flies over a beach."}
                    for i in (1, 2)
                ],
            }
        )
    )
    (annotations / "instances_train2017.json").write_text(
        json.dumps(
            {
                "images": images,
                "categories": [{"id": 1, "name": "kite"}],
                "annotations": [
                    {"id": i, "image_id": i, "category_id": 1, "bbox": [64, 48, 320, 240]} for i in (1, 2)
                ],
            }
        )
    )

    Image.new("RGB", (40, 30), (200, 120, 40)).save(root / "photo.jpg")
    Image.new("RGB", (40, 30), (220, 20, 20)).save(root / "a.jpg")
    Image.new("RGB", (30, 50), (20, 20, 220)).save(root / "b.jpg")
    make_video(root / "clip.mp4", 6)
    torch.manual_seed(0)
    LlavaModel(LlavaConfig.from_name("tiny_onevision")).save_pretrained(root / OV_MODEL)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(root / "001.jpg")
    write_llava_bench_files(root)

    sqa = root / "data" / "scienceqa"
    (sqa / "images" / "test" / "10").mkdir(parents=True)
    Image.new("RGB", (48, 32), (120, 90, 60)).save(sqa / "images" / "test" / "10" / "image.png")
    problem = {"hint": "", "grade": "grade3", "subject": "natural science", "split": "test"}
    problems = {
        "10": {**problem, "question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0,
               "image": "image.png"},
        "11": {**problem, "question": "Which word is a verb?", "choices": ["run", "blue"], "answer": 0,
               "image": None, "subject": "language science"},
    }  # fmt: skip
    (sqa / "problems.json").write_text(json.dumps(problems))
    (sqa / "pid_splits.json").write_text(json.dumps({"test": ["10", "11"]}))


def _entry_point(program: str) -> Callable[[], object]:
    [entry] = [e for e in entry_points(group="console_scripts") if e.name == program]
    return entry.load()


def _argv(command: str, quick: Quick, values: dict[str, str]) -> list[str]:
    words = shlex.split(command)
    fill = dict(quick.fill)
    args: list[str] = []
    for word in words[1:]:
        args.extend(fill.get(word, (word,)))
    args.extend(quick.extra)
    return [a.format(**values) for a in args]


def _serve_once(monkeypatch, fetched: list[int]) -> None:
    """``llava-lite-web`` returns once its page has been fetched (instead of serving until Ctrl-C)."""
    import gradio

    def fetch_then_close(app) -> None:
        with urllib.request.urlopen(app.local_url, timeout=60) as page:
            fetched.append(page.status)
            assert b"gradio" in page.read().lower()
        app.close()

    monkeypatch.setattr(gradio.Blocks, "block_thread", fetch_then_close)


@pytest.mark.slow  # three tiny trainings, a served web page, the judge and the teacher: ~20 s
def test_the_quick_forms_run(tmp_path, monkeypatch, capsys) -> None:
    shown = shown_commands()
    _write_sandbox(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in ("LLAVA_LITE_ROOT", "LLAVA_LITE_RUN_NAME", "LLAVA_LITE_TRACEBACK", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    fetched: list[int] = []
    failures: list[str] = []
    with FakeAnthropicAPI() as api:
        values = {"api": api.url, "port": str(free_port())}
        for command, quick in QUICK.items():
            program = _program(command)
            if quick.how == "skip" or command not in shown:
                continue
            args = {"run": None, "compose": ["--cfg", "job"], "help": ["--help"]}[quick.how]
            argv = _argv(command, quick, values) if args is None else (
                [*_argv(command, quick, values), *args] if quick.how == "compose" else args
            )  # fmt: skip
            if program == "llava-lite-web" and quick.how == "run":
                pytest.importorskip("gradio")
                _serve_once(monkeypatch, fetched)
            monkeypatch.setattr(sys, "argv", [program, *argv])
            monkeypatch.setattr(sys, "stdin", io.StringIO(quick.stdin or ""))
            try:
                _entry_point(program)()
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    failures.append(
                        f"{command!r} as {argv}: exit {exit_.code}: {capsys.readouterr().err[-800:]}"
                    )
            except Exception as err:  # every failure is reported with its command
                failures.append(f"{command!r} as {argv}: {type(err).__name__}: {err}")
            capsys.readouterr()
    assert not failures, "\n".join(failures)
    # what the runs were to leave behind
    assert (tmp_path / "runs/train/s1/projector.safetensors").is_file()
    assert (tmp_path / MODEL / "config.json").is_file()
    last = torch.load(
        tmp_path / "runs/train/s2/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    assert last["global_step"] == 3  # resumed from step 2
    assert (tmp_path / "data/instruct/instruct.jsonl").is_file()
    assert (tmp_path / "data/instruct_batch/instruct.jsonl").is_file()
    assert (tmp_path / "data/instruct_offline/instruct.jsonl").is_file()
    assert json.loads((tmp_path / "outputs/eval/llava_bench_results.json").read_text())["judged"] == 3
    assert json.loads((tmp_path / "outputs/eval/scienceqa_results.json").read_text())["missing"] == 0
    assert fetched == [200] or "gradio" not in sys.modules

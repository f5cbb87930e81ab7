"""The llava_lite model for lmms-eval (optional extra ``lmms``), offline: a local task over a tiny
local dataset, run with the ``lmms-eval`` command as the README shows it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.modeling import LlavaModel

pytest.importorskip("lmms_eval", reason="lmms-eval is the optional extra llava_lite[lmms]")
from lmms_eval.api.instance import Instance

from llava_lite.evaluation.lmms_model import LlavaLite

COLOURS = {"green": (10, 200, 30), "red": (220, 20, 20), "blue": (20, 20, 220)}
QUESTION = "What colour is the square?"
MAX_NEW_TOKENS = 6

TASK_YAML = """task: tiny_colours
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  until: ["\\n"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["question"]
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder, three images, their JSONL dataset and an lmms-eval task folder."""
    root = tmp_path_factory.mktemp("lmms")
    torch.manual_seed(0)  # the same random weights whatever ran before
    LlavaModel(LlavaConfig.from_name("tiny")).save_pretrained(root / "model")
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (32, 32), rgb).save(root / f"{name}.png")
        rows.append({"id": i, "image": str(root / f"{name}.png"), "question": QUESTION, "answer": name})
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny_colours.yaml").write_text(
        TASK_YAML.format(data=root / "test.jsonl", max_new_tokens=MAX_NEW_TOKENS)
    )
    (root / "tasks" / "utils.py").write_text(TASK_UTILS)
    return root


def _chat_answer(model_dir: Path, image: Path) -> str:
    model = LlavaModel.from_pretrained(model_dir).eval()
    session = ChatSession(model, LlavaProcessor.from_model(model), image, DecodingSettings(MAX_NEW_TOKENS))
    return session.ask(QUESTION).split("\n")[0]


# Loaded by the lmms-eval subprocess (sitecustomize): the suite's socket guard, for name lookups too.
OFFLINE_GUARD = """import ipaddress, socket

def _local(host):
    if host in (None, "localhost") or str(host).startswith("/"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False

_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

def connect(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        raise OSError(f"lmms-eval test tried to reach the network: {address!r}")
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        raise OSError(f"lmms-eval test tried to resolve {host!r}")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
"""


@pytest.mark.slow
def test_lmms_eval_command_runs_a_local_task_on_a_model_folder(bench: Path) -> None:
    guard = bench / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(OFFLINE_GUARD)
    pythonpath = os.pathsep.join(p for p in (str(guard), os.environ.get("PYTHONPATH", "")) if p)
    offline = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": pythonpath,
    }
    command = [
        str(Path(sys.executable).parent / "lmms-eval"),
        *("--model", "llava_lite", "--model_args", f"pretrained={bench / 'model'},device=cpu"),
        *("--tasks", "tiny_colours", "--include_path", str(bench / "tasks")),
        *("--batch_size", "1", "--output_path", str(bench / "out"), "--log_samples"),
    ]
    result = subprocess.run(
        command, cwd=bench, env={**os.environ, **offline}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tried to" not in result.stdout + result.stderr  # nothing reached for the network
    (samples_file,) = (bench / "out").rglob("*_samples_tiny_colours.jsonl")
    samples = {s["doc_id"]: s for s in map(json.loads, samples_file.read_text().splitlines())}
    assert sorted(samples) == [0, 1, 2]
    for doc_id, name in enumerate(COLOURS):
        # lmms-eval's answers are the chat's answers, cut at the task's "until".
        assert samples[doc_id]["filtered_resps"] == _chat_answer(bench / "model", bench / f"{name}.png")
        assert samples[doc_id]["exact_match"] == float(samples[doc_id]["filtered_resps"] == name)
    (results_file,) = (bench / "out").rglob("*_results.json")
    assert "exact_match,none" in json.loads(results_file.read_text())["results"]["tiny_colours"]


def _request(kind: str, arguments: tuple) -> Instance:
    return Instance(
        request_type=kind, arguments=arguments, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1}
    )


def test_loglikelihood_agrees_with_greedy_decoding(bench: Path) -> None:
    """``is_greedy`` matches what ``generate`` decodes (a different code path: KV cache, one token
    at a time), and the greedy continuation scores at least as high as any other of its length."""
    lm = LlavaLite(pretrained=str(bench / "model"), device="cpu")
    image = Image.open(bench / "green.png").convert("RGB")
    lm.task_dict = {"t": {"test": [{"image": image}]}}
    visual = lambda d: [d["image"]]  # noqa: E731
    tokenizer = lm.processor.tokenizer
    prompt = lm.processor.prompt(QUESTION, image)
    greedy = lm.model.generate(
        prompt["input_ids"][None], prompt["pixel_values"][None], max_new_tokens=4, eos_token_id=[]
    )[0].tolist()  # [4]
    continuations = ["zzzz qqqq", "green", "It is a square."]
    # A prefix of the greedy reply that survives decode -> encode is a greedy continuation.
    for k in range(1, 5):
        text = tokenizer.decode(greedy[:k])
        if tokenizer(text, add_special_tokens=False)["input_ids"] == greedy[:k]:
            continuations.append(text)
    results = lm.loglikelihood(
        [_request("loglikelihood", (QUESTION, c, visual, 0, "t", "test")) for c in continuations]
    )
    for text, (score, is_greedy) in zip(continuations, results, strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = lm.model.generate(
            prompt["input_ids"][None], prompt["pixel_values"][None], max_new_tokens=len(ids), eos_token_id=[]
        )[0].tolist()
        assert is_greedy == (decoded == ids), text
        assert score < 0
    scores = dict(zip(continuations, (r[0] for r in results), strict=True))
    assert scores["zzzz qqqq"] < max(scores.values())


class _Peaked(torch.nn.Module):
    """A stand-in LLaVA forward whose logits put ``peak`` on ``wanted`` after every position."""

    def __init__(self, vocab: int, wanted: list[int], peak: float) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device
        self.vocab, self.wanted, self.peak = vocab, wanted, peak

    def forward(self, ids, pixel_values=None):
        logits = torch.zeros(*ids.shape, self.vocab)  # [1, T, V]
        for i, token in enumerate(self.wanted):  # position -len-1+i predicts token i
            logits[0, ids.shape[1] - len(self.wanted) - 1 + i, token] = self.peak
        return SimpleNamespace(logits=logits)


def test_loglikelihood_sums_the_continuation_log_probs(bench: Path) -> None:
    lm = LlavaLite(pretrained=str(bench / "model"), device="cpu")
    lm.task_dict = {"t": {"test": [{}]}}
    tokenizer = lm.processor.tokenizer
    text = "green square"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    vocab = len(tokenizer)
    lm.model = _Peaked(vocab, ids, peak=5.0)
    no_image = lambda d: []  # noqa: E731
    (score, is_greedy), (_, other_greedy) = lm.loglikelihood(
        [
            _request("loglikelihood", (QUESTION, text, no_image, 0, "t", "test")),
            _request("loglikelihood", (QUESTION, "zzzz qqqq", no_image, 0, "t", "test")),
        ]
    )
    per_token = 5.0 - math.log(math.exp(5.0) + vocab - 1)  # log-softmax of the peaked token
    assert score == pytest.approx(len(ids) * per_token, rel=1e-5)
    assert is_greedy and not other_greedy


def test_bad_model_args_are_refused_and_multi_image_docs_answered(bench: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown llava_lite model_args \['tempature'\]; valid: \["):
        LlavaLite(pretrained=str(bench / "model"), tempature="0.2")
    with pytest.raises(FileNotFoundError, match=r"model_dir=.*nowhere: no such folder"):
        LlavaLite(pretrained=str(bench / "nowhere"))
    lm = LlavaLite(pretrained=str(bench / "model"), device="cpu")
    red, green = (Image.open(bench / f"{name}.png").convert("RGB") for name in ("red", "green"))
    lm.task_dict = {"t": {"test": [{"images": [red, green]}]}}
    gen = {"max_new_tokens": MAX_NEW_TOKENS}
    request = _request("generate_until", (QUESTION, gen, lambda d: d["images"], 0, "t", "test"))
    (answer,) = lm.generate_until([request])  # both images, in order, as a chat about them answers
    session = ChatSession(lm.model, lm.processor, [red, green], DecodingSettings(MAX_NEW_TOKENS))
    assert answer == session.ask(QUESTION)
    assert lm.processor.prompt(QUESTION, [red, green])["pixel_values"].shape[0] == 2


def test_anyres_model_scores_and_answers_images_of_any_size(tmp_path: Path) -> None:
    """An AnyRes model folder: loglikelihood and generate_until pass each image's size through."""
    torch.manual_seed(0)
    LlavaModel(LlavaConfig.from_name("tiny_anyres")).save_pretrained(tmp_path / "model")
    lm = LlavaLite(pretrained=str(tmp_path / "model"), device="cpu")
    image = Image.effect_noise((90, 30), 50).convert("RGB")  # wide: a 1 x 3 grid
    lm.task_dict = {"t": {"test": [{"image": image}]}}
    visual = lambda d: [d["image"]]  # noqa: E731
    ((score, _),) = lm.loglikelihood([_request("loglikelihood", (QUESTION, "green", visual, 0, "t", "test"))])
    prompt = lm.processor.prompt(QUESTION, image)
    assert prompt["image_sizes"] == [(30, 90)] and prompt["pixel_values"].shape[0] == 4
    target = lm.processor.tokenizer("green", add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], torch.tensor(target)])[None]
    with torch.no_grad():
        logits = lm.model(ids, pixel_values=prompt["pixel_values"], image_sizes=prompt["image_sizes"]).logits
    steps = logits[0, -len(target) - 1 : -1].log_softmax(-1)
    expected = steps.gather(-1, torch.tensor(target)[:, None]).sum().item()
    assert score == pytest.approx(expected, rel=1e-5)
    request = _request(
        "generate_until", (QUESTION, {"max_new_tokens": MAX_NEW_TOKENS}, visual, 0, "t", "test")
    )
    (answer,) = lm.generate_until([request])
    session = ChatSession(lm.model, lm.processor, image, DecodingSettings(MAX_NEW_TOKENS))
    assert answer == session.ask(QUESTION)

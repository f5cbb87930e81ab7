"""Bad input through the console entry functions: one error line (plus the hint), exit 1, no
traceback, and answers already written are kept (a rerun resumes).

Covers a model folder that is not a model (chat, web, eval), an image that does not open
(chat, eval), a question file with a malformed line (named with its line number), and the
eval's start: no empty output folder left behind, an old ``generation`` key named for its new name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import free_port
from llava_lite.cli import chat as chat_cli
from llava_lite.cli import evaluate as eval_cli
from llava_lite.config import LlavaConfig
from llava_lite.evaluation.settings import settings_from
from llava_lite.modeling import LlavaModel

HINT = "set LLAVA_LITE_TRACEBACK=1 for the full traceback"


@pytest.fixture(autouse=True)
def _no_traceback_switch(monkeypatch):
    monkeypatch.delenv("LLAVA_LITE_TRACEBACK", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("badinput") / "model"
    torch.manual_seed(0)
    LlavaModel(LlavaConfig.from_name("tiny")).save_pretrained(folder)
    return folder


def _not_models(root: Path, model_dir: Path) -> dict[str, Path]:
    """One path of each kind that is not a model folder."""
    (root / "empty").mkdir()
    (root / "random").mkdir()
    (root / "random" / "notes.txt").write_text("not a model\n")
    (root / "random" / "weights.bin").write_bytes(bytes(range(256)))
    (root / "bad_json").mkdir()
    (root / "bad_json" / "config.json").write_text("{ not json")
    (root / "bad_weights").mkdir()
    for file in model_dir.iterdir():
        (root / "bad_weights" / file.name).write_bytes(file.read_bytes())
    (root / "bad_weights" / "model.safetensors").write_bytes(b"\x00" * 64)
    (root / "a_file").write_text("x")
    return {
        "missing": root / "missing",
        "a_file": root / "a_file",
        "empty": root / "empty",
        "random": root / "random",
        "bad_json": root / "bad_json",
        "bad_weights": root / "bad_weights",
    }


# what the error line names, per kind of non-model
EXPECTED = {
    "missing": "no such folder",
    "a_file": "a file, not a model folder",
    "empty": "not a llava_lite model folder",
    "random": "not a llava_lite model folder",
    "bad_json": "config.json is not valid JSON",
    "bad_weights": "weights file is not readable safetensors",
}


def _error(capsys, exit_info, prog: str) -> str:
    """The one error line (after checking exit 1, no traceback, the hint)."""
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith(f"{prog}: ")]
    assert len(ours) == 2, err
    assert ours[0].startswith(f"{prog}: error: ") and ours[1].endswith(HINT)
    return ours[0]


def _eval(monkeypatch, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["llava-lite-eval", *overrides])
    eval_cli.main()


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_path_that_is_not_a_model_is_one_line_in_chat_web_and_eval(
    kind, model_dir, tmp_path, capsys, monkeypatch
):
    path = _not_models(tmp_path, model_dir)[kind]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        chat_cli.main([str(path), "--question", "hi"])
    error = _error(capsys, exit_info, "llava-lite-chat")
    assert str(path) in error and EXPECTED[kind] in error, error

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "text": "hi?"}\n')
    out = tmp_path / "new" / "eval"
    with pytest.raises(SystemExit) as exit_info:
        _eval(monkeypatch, "task=answers", f"model_dir={path}", f"answers.questions_file={questions}",
              f"output_dir={out}")  # fmt: skip
    error = _error(capsys, exit_info, "llava-lite-eval")
    assert str(path) in error and EXPECTED[kind] in error, error
    assert not (tmp_path / "new").exists()  # a failed start leaves no empty folder behind

    pytest.importorskip("gradio")
    from llava_lite.cli import web as web_cli

    with pytest.raises(SystemExit) as exit_info:
        web_cli.main([str(path), "--port", str(free_port())])
    error = _error(capsys, exit_info, "llava-lite-web")
    assert str(path) in error and EXPECTED[kind] in error, error


def _bad_images(folder: Path) -> dict[str, Path]:
    Image.new("RGB", (40, 30), (10, 200, 30)).save(folder / "ok.png")
    (folder / "text.png").write_text("this is not an image\n")
    data = (folder / "ok.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return {
        "text": folder / "text.png",
        "truncated": folder / "truncated.png",
        "missing": folder / "gone.png",
    }


IMAGE_ERRORS = {
    "text": "unreadable_image: {path}: not an image PIL can identify",
    "truncated": "unreadable_image: {path}: ",
    "missing": "missing_image: {path} not found",
}


@pytest.mark.parametrize("kind", list(IMAGE_ERRORS))
def test_a_chat_image_that_does_not_open_is_one_line(kind, model_dir, tmp_path, capsys):
    path = _bad_images(tmp_path)[kind]
    with pytest.raises(SystemExit) as exit_info:
        chat_cli.main([str(model_dir), "--image", str(path), "--question", "hi", "--max-new-tokens", "2"])
    error = _error(capsys, exit_info, "llava-lite-chat")
    assert IMAGE_ERRORS[kind].format(path=path) in error and "record None" not in error, error


def test_chat_image_switch_to_a_bad_image_keeps_the_session(model_dir, tmp_path, capsys, monkeypatch):
    images = _bad_images(tmp_path)
    script = "".join(f"/image {images[k]}\n" for k in IMAGE_ERRORS) + f"/image {tmp_path / 'ok.png'}\nhi\n"
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(script))
    chat_cli.main([str(model_dir), "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    for kind, expected in IMAGE_ERRORS.items():
        assert f"(image not added: {expected.format(path=images[kind])}" in out, out
    assert f"(image 1 added: {tmp_path / 'ok.png'}; new conversation about 1 image)" in out
    assert out.count("ASSISTANT: ") == 1  # the chat went on after three bad images


def _questions(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_eval_stops_at_an_image_that_does_not_open_keeps_answers_and_resumes(
    model_dir, tmp_path, capsys, monkeypatch
):
    images = _bad_images(tmp_path)
    rows = [
        {"question_id": 1, "text": "a?"},
        {"question_id": 2, "text": "b?", "image": "ok.png"},
        {"question_id": 3, "text": "c?", "image": "text.png"},
        {"question_id": 4, "text": "d?"},
    ]
    questions = _questions(tmp_path / "q.jsonl", rows)
    out = tmp_path / "out"
    args = ["task=answers", f"model_dir={model_dir}", f"answers.questions_file={questions}",
            f"answers.image_root={tmp_path}", f"output_dir={out}", "batch_size=1",
            "decoding.max_new_tokens=2"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        _eval(monkeypatch, *args)
    error = _error(capsys, exit_info, "llava-lite-eval")
    assert f"question 3: unreadable_image: {images['text']}: not an image PIL can identify" in error
    written = (out / "answers.jsonl").read_text()
    assert [json.loads(line)["question_id"] for line in written.splitlines()] == [1, 2]

    # a missing image is found before the model is loaded or anything is written
    _questions(questions, [*rows[:2], {**rows[2], "image": "gone.png"}, rows[3]])
    with pytest.raises(SystemExit) as exit_info:
        _eval(monkeypatch, *args)
    assert f"question 3: missing_image: {images['missing']} not found" in _error(
        capsys, exit_info, "llava-lite-eval"
    )
    assert (out / "answers.jsonl").read_text() == written

    _questions(questions, [*rows[:2], {**rows[2], "image": "ok.png"}, rows[3]])  # fixed: resumes
    _eval(monkeypatch, *args)
    result = json.loads((out / "answers_results.json").read_text())
    assert (result["answered"], result["skipped_done"]) == (2, 2)
    assert (out / "answers.jsonl").read_text().startswith(written)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"question_id": 3, "text": "c?"', "not valid JSON (Expecting ',' delimiter at column 32)"),
        ('{"question_id": 3}', "question 3 has no 'text'"),
        ("[1, 2]", "a question must be an object, got list"),
        ('{"question_id": 1, "text": "again?"}', "duplicate question_id 1"),
    ],
    ids=["not_json", "no_text", "not_an_object", "duplicate"],
)
def test_a_malformed_question_line_is_named_with_its_line_and_keeps_answers(
    line, expected, model_dir, tmp_path, capsys, monkeypatch
):
    good = [{"question_id": 1, "text": "a?"}, {"question_id": 2, "text": "b?"}]
    questions = _questions(tmp_path / "q.jsonl", good)
    out = tmp_path / "out"
    args = ["task=answers", f"model_dir={model_dir}", f"answers.questions_file={questions}",
            f"output_dir={out}", "decoding.max_new_tokens=2"]  # fmt: skip
    _eval(monkeypatch, *args)
    capsys.readouterr()
    written = (out / "answers.jsonl").read_text()
    _questions(questions, [good[0], "", good[1], line])  # line 4, after a blank line
    with pytest.raises(SystemExit) as exit_info:
        _eval(monkeypatch, *args)
    error = _error(capsys, exit_info, "llava-lite-eval")
    assert f"{questions}:4: {expected}" in error, error
    assert (out / "answers.jsonl").read_text() == written  # nothing lost, nothing added
    _questions(questions, [*good, {"question_id": 3, "text": "c?"}])
    _eval(monkeypatch, *args)
    result = json.loads((out / "answers_results.json").read_text())
    assert (result["answered"], result["skipped_done"]) == (1, 2)


def test_an_old_generation_key_names_its_new_name(tmp_path, capsys, monkeypatch):
    for override in ("generation.max_new_tokens=8", "+generation.top_p=0.5"):
        with pytest.raises(SystemExit) as exit_info:
            _eval(monkeypatch, "task=answers", override, f"output_dir={tmp_path / 'out'}")
        error = _error(capsys, exit_info, "llava-lite-eval")
        assert "now called 'decoding'" in error and "rename generation.* to decoding.*" in error
    with pytest.raises(ValueError, match="now called 'decoding'"):
        settings_from({"generation": {"max_new_tokens": 8}})  # an old config file or dict
    assert settings_from({"decoding": {"max_new_tokens": 8}}).decoding.max_new_tokens == 8
    assert not (tmp_path / "out").exists()

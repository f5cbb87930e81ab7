"""Every console command reports a mistake the user can fix as one error line plus a hint, exit 1.

Run as a user runs them: the installed console scripts, in a subprocess, from a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from llava_lite.cli import errors

BIN = Path(sys.executable).parent
HINT = "set LLAVA_LITE_TRACEBACK=1 for the full traceback"


def _run(tmp_path: Path, command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("LLAVA_LITE_TRACEBACK", "HYDRA_FULL_ERROR")
    }
    environment.update(env)
    return subprocess.run(
        [str(BIN / command), *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_reported(result: subprocess.CompletedProcess[str], command: str, *expected: str) -> None:
    """Exit 1, no traceback, exactly one error line and one hint line, naming what is wrong."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith(f"{command}: ")]
    assert len(ours) == 2, result.stderr
    error, hint = ours
    assert error.startswith(f"{command}: error: ") and hint.startswith(f"{command}: hint: ")
    assert hint.endswith(HINT)
    for text in expected:
        assert text in error, error


def test_misspelled_hydra_key(tmp_path: Path) -> None:
    result = _run(tmp_path, "llava-lite-train", "experiment=tiny_pretrain", "data.trian_files=x.jsonl")
    _assert_reported(result, "llava-lite-train", "data.trian_files", "not in struct")
    assert "+data.trian_files=x.jsonl" in result.stderr  # Hydra's own advice survives as the hint


def test_unknown_name_and_missing_file(tmp_path: Path) -> None:
    result = _run(tmp_path, "llava-lite-eval", "task=scienceqq")
    _assert_reported(result, "llava-lite-eval", "task='scienceqq'", "valid: [")
    result = _run(tmp_path, "llava-lite-eval", "task=answers", "answers.questions_file=missing.jsonl")
    _assert_reported(result, "llava-lite-eval", "missing.jsonl")
    assert f"relative paths are read from {tmp_path}" in result.stderr


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "questions.json").write_text('[{"question_id": 1, "text": ')
    result = _run(tmp_path, "llava-lite-eval", "task=answers", "answers.questions_file=questions.json")
    _assert_reported(result, "llava-lite-eval", "questions.json", "not valid JSON")


def test_unknown_teacher(tmp_path: Path) -> None:
    (tmp_path / "captions.json").write_text(json.dumps({"images": [], "annotations": []}))
    result = _run(
        tmp_path, "llava-lite-generate", "teacher.name=clod", "captions_file=captions.json", "output_dir=out"
    )
    _assert_reported(result, "llava-lite-generate", "'clod'", "valid: [", "teacher=offline")
    result = _run(
        tmp_path,
        "llava-lite-generate",
        "teacher=offline",
        "teacher._target_=llava_lite.no_such_module.Teacher",
        "captions_file=captions.json",
        "output_dir=out",
    )
    _assert_reported(result, "llava-lite-generate", "teacher._target_=", "No module named 'llava_lite")
    assert not (tmp_path / "out").exists()


def test_chat_on_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "not_a_model").mkdir()
    result = _run(tmp_path, "llava-lite-chat", "not_a_model", "--question", "hi")
    _assert_reported(result, "llava-lite-chat", "not_a_model")


def test_traceback_on_request(tmp_path: Path) -> None:
    result = _run(tmp_path, "llava-lite-eval", "task=scienceqq", LLAVA_LITE_TRACEBACK="1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ValueError: task='scienceqq'" in result.stderr


# ---- in process: the classification and the lines ------------------------------------------


def _api_error(status: int) -> Exception:
    import anthropic

    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/messages")
    body = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    response = httpx2.Response(status, request=request, json=body)
    cls = {401: anthropic.AuthenticationError, 404: anthropic.NotFoundError}[status]
    return cls("invalid x-api-key", response=response, body=body)


def test_api_auth_error_is_reported_with_a_key_hint(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LLAVA_LITE_TRACEBACK", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def fail() -> None:
        raise _api_error(401)

    with pytest.raises(SystemExit) as exit_info:
        errors.run_cli("llava-lite-generate", fail)
    assert exit_info.value.code == errors.EXIT_USER_ERROR
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "llava-lite-generate: error: invalid x-api-key"
    assert "ANTHROPIC_API_KEY" in lines[1] and len(lines) == 2
    assert "model id" in errors.hint(_api_error(404), "p")


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    monkeypatch.delenv("LLAVA_LITE_TRACEBACK", raising=False)

    def bug() -> None:
        raise RuntimeError("internal invariant broken")

    with pytest.raises(RuntimeError, match="invariant"):
        errors.run_cli("llava-lite-train", bug)
    assert not errors.is_user_error(AttributeError("x")) and errors.is_user_error(KeyError("x"))


def test_error_line_unquotes_key_errors_and_names_json_errors() -> None:
    assert (
        errors.error_line(KeyError("unknown preset 'x'; valid: ['tiny']"))
        == "unknown preset 'x'; valid: ['tiny']"
    )
    try:
        json.loads("{")
    except json.JSONDecodeError as err:
        assert errors.error_line(err).startswith("JSONDecodeError: ")
        assert "not valid JSON" in errors.hint(err, "p")
    assert errors.error_line(ValueError("")) == "ValueError"


def test_a_missing_optional_extra_names_the_extra() -> None:
    err = ModuleNotFoundError("No module named 'gradio'", name="gradio")
    assert errors.is_user_error(err)
    assert "pip install 'llava_lite[web]'" in errors.hint(err, "llava-lite-web")
    assert not errors.is_user_error(
        ModuleNotFoundError("No module named 'llava_lite.nope'", name="llava_lite.nope")
    )

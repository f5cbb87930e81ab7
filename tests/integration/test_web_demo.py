"""llava-lite-web: a live local Gradio server driven through gradio_client (optional extra ``web``).

Multi-turn chat about an uploaded image with streamed replies, sampling controls, reset, the
127.0.0.1 default, and one clear error for a busy port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import free_port
from llava_lite.cli import web as web_cli
from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings, web
from llava_lite.modeling import LlavaModel

gradio_client = pytest.importorskip(
    "gradio_client", reason="the web demo is the optional extra llava_lite[web]"
)

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("web") / "model"
    torch.manual_seed(0)  # the same random weights whatever ran before
    LlavaModel(LlavaConfig.from_name("tiny")).save_pretrained(folder)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(folder.parent / "green.png")
    Image.new("RGB", (32, 32), (220, 20, 20)).save(folder.parent / "red.png")
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    model = LlavaModel.from_pretrained(model_dir).eval()
    return model, LlavaProcessor.from_model(model)


@pytest.fixture(scope="module")
def server(loaded):
    """The demo app served on a free loopback port for the module's tests."""
    app = web.build_app(*loaded, title="test")
    url = web.launch(app, port=free_port(), block=False)
    yield app, url
    app.close()


def _expected(loaded, image: Path, turns: list[str]) -> list[str]:
    """Greedy replies of a ChatSession asked ``turns`` in order, about ``image``."""
    session = ChatSession(*loaded, image=image, settings=DecodingSettings(max_new_tokens=MAX_NEW_TOKENS))
    return [" ".join(session.ask(q).split()) for q in turns]


def _chat(client, question: str, image: Path, chat: list, temperature: float = 0.0):
    """Submit a question; returns (every streamed update, the final chat messages)."""
    job = client.submit(
        question,
        gradio_client.handle_file(str(image)),
        chat,
        temperature,
        1.0,
        MAX_NEW_TOKENS,
        api_name="/chat",
    )
    final = job.result(timeout=120)
    return job.outputs(), final[1]


def _content(message: dict) -> str:
    """A chat message's text, whitespace runs as one space (the Chatbot turns tabs into spaces)."""
    content = message["content"]
    if isinstance(content, list):  # Gradio may hand text back as [{"type": "text", "text": ...}]
        content = "".join(part.get("text", "") for part in content)
    return " ".join(str(content).split())


def test_multi_turn_chat_streams_and_matches_the_library(server, loaded, model_dir: Path) -> None:
    app, url = server
    assert app.server_name == "127.0.0.1"  # the default binds loopback only
    green = model_dir.parent / "green.png"
    client = gradio_client.Client(url, verbose=False, download_files=False, analytics_enabled=False)
    updates, chat = _chat(client, "What is this?", green, [])
    expected = _expected(loaded, green, ["What is this?", "And the colour?"])
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert _content(chat[1]) == expected[0]
    assert len(updates) > 2  # the reply arrived in pieces, not once at the end
    _, chat = _chat(client, "And the colour?", green, chat)
    assert [_content(m) for m in chat] == ["What is this?", expected[0], "And the colour?", expected[1]]

    # A new image starts a new conversation; reset clears it too.
    red = model_dir.parent / "red.png"
    _, chat = _chat(client, "What is this?", red, chat)
    assert [_content(m) for m in chat] == ["What is this?", _expected(loaded, red, ["What is this?"])[0]]
    textbox, chat = client.predict(api_name="/reset")
    assert (textbox, chat) == ("", [])


def test_sampling_controls_reach_decoding(server, loaded, model_dir: Path) -> None:
    _, url = server
    client = gradio_client.Client(url, verbose=False, download_files=False, analytics_enabled=False)
    green = model_dir.parent / "green.png"
    greedy = _expected(loaded, green, ["Describe it."])[0]
    samples = {_content(_chat(client, "Describe it.", green, [], temperature=2.0)[1][1]) for _ in range(3)}
    client.predict(api_name="/reset")
    assert samples != {greedy}  # temperature 2 samples; the greedy reply would repeat exactly


def test_web_chat_handler_keeps_state_per_session(loaded, model_dir: Path) -> None:
    chat = web.WebChat(*loaded)
    green = str(model_dir.parent / "green.png")
    *_, (box, messages, state) = chat.respond("What is this?", green, [], None, 0.0, 1.0, MAX_NEW_TOKENS)
    assert box == "" and state.image == green and len(state.history) == 1
    assert messages[-1]["content"] == state.history[0][1]
    assert list(chat.respond("  ", green, messages, state, 0.0, 1.0, 4)) == [("", messages, state)]


def test_busy_port_is_one_clear_error(model_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(
            OSError, match=rf"^127\.0\.0\.1:{port} is already in use .*; choose another port with --port"
        ):
            web.check_port_free("127.0.0.1", port)
        env = {k: v for k, v in os.environ.items() if k != "LLAVA_LITE_TRACEBACK"}
        result = subprocess.run(
            [str(Path(sys.executable).parent / "llava-lite-web"), str(model_dir), "--port", str(port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("llava-lite-web: error: ")]
    assert error.startswith(f"llava-lite-web: error: 127.0.0.1:{port} is already in use")
    assert f"--port {port + 1}" in error


def test_cli_defaults_to_loopback() -> None:
    args = web_cli.build_parser().parse_args(["some/model"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    assert web.is_loopback("127.0.0.1") and web.is_loopback("localhost") and not web.is_loopback("0.0.0.0")

"""llava-lite-chat end to end at a terminal: the console script in a pseudo-terminal, typed at
as a person would (each line after the USER: prompt), with an image added mid-chat."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.modeling import LlavaModel

PROMPT = "USER: "


class Terminal:
    """A command in a pseudo-terminal: read what it shows, type lines."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, close_fds=True
        )
        os.close(slave)
        self.screen = ""

    def read_until(self, text: str, count: int, timeout_s: float = 120.0) -> str:
        """Read until ``text`` has appeared ``count`` times in all output so far."""
        deadline = time.monotonic() + timeout_s
        while self.screen.count(text) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {text!r} x{count}; screen:\n{self.screen}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # the command exited
                    data = b""
                assert data, f"command ended before {text!r} x{count}; screen:\n{self.screen}"
                self.screen += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return self.screen

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self, timeout_s: float = 60.0) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            os.close(self.master)


def test_chat_at_a_terminal_streams_and_adds_an_image(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    LlavaModel(LlavaConfig.from_name("tiny")).save_pretrained(model_dir)
    green, red = tmp_path / "green.png", tmp_path / "red.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(green)
    Image.new("RGB", (32, 32), (220, 20, 20)).save(red)

    command = Path(sys.executable).parent / "llava-lite-chat"
    argv = [str(command), str(model_dir), "--image", str(green), "--max-new-tokens", "6"]
    terminal = Terminal(argv, tmp_path)
    try:
        terminal.read_until(PROMPT, 1)
        terminal.type("What is this?")
        terminal.read_until(PROMPT, 2)
        terminal.type(f"/image {red}")
        terminal.read_until(PROMPT, 3)
        terminal.type("What is this?")
        terminal.read_until(PROMPT, 4)
        terminal.type("/exit")
    finally:
        status = terminal.close()
    screen = terminal.screen
    assert status == 0, screen
    assert "commands: /image PATH, /video PATH, /clear, /reset, /exit" in screen
    assert f"(image 2 added: {red}; new conversation about 2 images)" in screen

    model = LlavaModel.from_pretrained(model_dir).eval()
    processor = LlavaProcessor.from_model(model)
    settings = DecodingSettings(max_new_tokens=6)
    # /image adds: the second answer is about both images, in a new conversation
    expected = [
        ChatSession(model, processor, images, settings).ask("What is this?")
        for images in (green, [green, red])
    ]
    replies = [part.split("\n" + PROMPT)[0] for part in screen.split("ASSISTANT: ")[1:]]
    assert [r.strip() for r in replies] == expected

"""``llava-lite-chat``: talk to a saved model about an image, offline, with replies streamed.

Examples::

    llava-lite-chat outputs/finetune/model --image cat.jpg                  # interactive
    llava-lite-chat outputs/finetune/model --image cat.jpg --question "What is this?"

Interactive mode reads one question per line from stdin and prints the reply token by token
after ``ASSISTANT:`` (``USER:`` marks your turn at a terminal). Commands: ``/image PATH``
switches to another image (a new conversation: the templates hold one image, at the first
question), ``/reset`` clears the history, ``/exit`` (or end of input) quits. Ctrl-C stops
the reply being written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import torch

from llava_lite.cli.errors import run_cli
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.inference.loading import load_model_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llava-lite-chat", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "model_dir", help="a model folder: llava_lite (save_pretrained), llava-hf or original LLaVA"
    )
    p.add_argument("--image", default=None, help="image path (omit for a text-only chat)")
    p.add_argument("--question", default=None, help="ask once, print the answer, exit")
    p.add_argument("--template", default=None, help="conversation template (default: the model's)")
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--trust-remote-code", action="store_true")
    return p


def load_model(args: argparse.Namespace) -> tuple[Any, LlavaProcessor]:
    """``args.model_dir`` on ``args.device`` in eval mode, and its processor (``--template``)."""
    return load_model_dir(
        args.model_dir, device=args.device, template=args.template, trust_remote_code=args.trust_remote_code
    )


def session_from_args(args: argparse.Namespace) -> ChatSession:
    model, processor = load_model(args)
    settings = DecodingSettings.from_temperature(args.max_new_tokens, args.temperature, args.top_p)
    return ChatSession(model, processor, image=args.image, settings=settings, system=args.system)


COMMANDS = "/image PATH, /reset, /exit"


def interact(session: ChatSession, stdin: TextIO, stdout: TextIO, prompt: bool | None = None) -> int:
    """The read-answer loop; returns the number of questions answered.

    ``prompt`` (default: whether stdin is a terminal) shows ``USER:`` before each question.
    """
    answered = 0
    interactive = stdin.isatty() if prompt is None else prompt
    if interactive:
        stdout.write(f"Ask about the image; commands: {COMMANDS}.\n")
    while True:
        if interactive:
            stdout.write("USER: ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if not run_command(session, text, stdout):
                break
            continue
        stdout.write("ASSISTANT: ")
        stream_reply(session.stream(text), stdout)
        answered += 1
    return answered


def run_command(session: ChatSession, text: str, stdout: TextIO) -> bool:
    """Carry out one ``/command``; False means quit. Mistakes print one line and the chat goes on."""
    command, _, argument = text.partition(" ")
    argument = argument.strip()
    if command in ("/exit", "/quit"):
        return False
    if command == "/reset":
        session.reset()
        stdout.write("(history cleared)\n")
    elif command == "/image" and argument:
        try:
            session.set_image(argument)
        except (OSError, ValueError) as err:
            stdout.write(f"(image not changed: {err})\n")
        else:
            stdout.write(f"(image: {argument}; new conversation)\n")
    elif command == "/image":
        stdout.write("(usage: /image PATH)\n")
    else:
        stdout.write(f"(unknown command {command}; valid: {COMMANDS})\n")
    return True


def stream_reply(pieces: Iterator[str], stdout: TextIO) -> None:
    """Print a reply as it is generated (leading whitespace dropped), then a newline.

    Ctrl-C stops this reply only: generation ends at the next token and the turn is not kept.
    """
    started = False
    try:
        for piece in pieces:
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            stdout.write(piece)
            stdout.flush()
    except KeyboardInterrupt:
        stdout.write(" (stopped)")
    finally:
        if hasattr(pieces, "close"):
            pieces.close()
    stdout.write("\n")
    stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; a bad model folder or image is one error line (exit 1)."""
    args = build_parser().parse_args(argv)
    run_cli("llava-lite-chat", lambda: _chat(args))


def _chat(args: argparse.Namespace) -> None:
    session = session_from_args(args)
    if args.question is not None:
        stream_reply(session.stream(args.question), sys.stdout)
        return
    interact(session, sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()

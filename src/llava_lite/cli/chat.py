"""``llava-lite-chat``: talk to a saved model about one image, offline.

Examples::

    llava-lite-chat outputs/finetune/model --image cat.jpg                  # interactive
    llava-lite-chat outputs/finetune/model --image cat.jpg --question "What is this?"

Interactive mode reads one question per line from stdin; ``/reset`` clears the history,
``/exit`` (or end of input) quits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import torch

from llava_lite.cli.errors import run_cli
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.modeling import LlavaModel


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llava-lite-chat", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a folder written by LlavaModel.save_pretrained")
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


def session_from_args(args: argparse.Namespace) -> ChatSession:
    model = LlavaModel.from_pretrained(args.model_dir, trust_remote_code=args.trust_remote_code)
    model.to(args.device).eval()
    processor = LlavaProcessor.from_model(model, template=args.template)
    settings = DecodingSettings.from_temperature(args.max_new_tokens, args.temperature, args.top_p)
    return ChatSession(model, processor, image=args.image, settings=settings, system=args.system)


def interact(session: ChatSession, stdin: TextIO, stdout: TextIO) -> int:
    """The read-answer loop; returns the number of questions answered."""
    answered = 0
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("USER: ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        question = line.strip()
        if not question:
            continue
        if question in ("/exit", "/quit"):
            break
        if question == "/reset":
            session.reset()
            stdout.write("(history cleared)\n")
            continue
        stdout.write(f"ASSISTANT: {session.ask(question)}\n")
        stdout.flush()
        answered += 1
    return answered


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; a bad model folder or image is one error line (exit 1)."""
    args = build_parser().parse_args(argv)
    run_cli("llava-lite-chat", lambda: _chat(args))


def _chat(args: argparse.Namespace) -> None:
    session = session_from_args(args)
    if args.question is not None:
        print(session.ask(args.question))
        return
    interact(session, sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()

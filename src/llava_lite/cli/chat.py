"""``llava-lite-chat``: talk to a saved model about images or a video, offline, with replies streamed.

Examples::

    llava-lite-chat outputs/finetune/model --image cat.jpg                  # interactive
    llava-lite-chat outputs/finetune/model --image cat.jpg --question "What is this?"
    llava-lite-chat outputs/ov/model --image a.jpg --image b.jpg --question "What differs?"
    llava-lite-chat outputs/ov/model --video clip.mp4 --question "What happens?"

Interactive mode reads one question per line from stdin and prints the reply token by token
after ``ASSISTANT:`` (``USER:`` marks your turn at a terminal). Where the images and the video
go, and the commands (``/image``, ``/video``, ``/clear``, ``/reset``, ``/exit``), are in
``COMMANDS_HELP`` below, which ``--help`` prints.
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

COMMANDS = "/image PATH, /video PATH, /clear, /reset, /exit"
COMMANDS_HELP = """\
Every image (in the order given) and the video go with the first question, as in training;
with several images, a first question holding one <image> per image places them there instead.

interactive commands:
  /image PATH   add an image after those so far and start a new conversation about all of
                them (the history is cleared: the new image joins the first question)
  /video PATH   set the video (a file or a folder of frames), replacing any; a new
                conversation, the images kept
  /clear        drop the images and the video; a new conversation without them
  /reset        clear the history, keeping the images and the video
  /exit         quit (so does end of input); Ctrl-C stops the reply being written
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llava-lite-chat",
        description=__doc__.split("\n\n")[0],
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model_dir", help="a model folder: llava_lite (save_pretrained), llava-hf or original LLaVA"
    )
    p.add_argument(
        "--image",
        action="append",
        default=None,
        help="an image path; repeat for several, in order (omit for a text-only chat)",
    )
    p.add_argument(
        "--video",
        default=None,
        help="a video file or a folder of its frames (a model with a video token, e.g. LLaVA-OneVision)",
    )
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
    return ChatSession(
        model, processor, image=args.image, settings=settings, system=args.system, video=args.video
    )


def interact(session: ChatSession, stdin: TextIO, stdout: TextIO, prompt: bool | None = None) -> int:
    """The read-answer loop; returns the number of questions answered.

    ``prompt`` (default: whether stdin is a terminal) shows ``USER:`` before each question.
    """
    answered = 0
    interactive = stdin.isatty() if prompt is None else prompt
    if interactive:
        stdout.write(
            f"Chatting {_about(session)}; /image PATH adds an image and /video PATH sets the video, "
            f"each starting a new conversation; commands: {COMMANDS}.\n"
        )
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
            session.add_image(argument)
        except (OSError, ValueError) as err:
            stdout.write(f"(image not added: {err})\n")
        else:
            stdout.write(
                f"(image {len(session.images)} added: {argument}; new conversation {_about(session)})\n"
            )
    elif command == "/video" and argument:
        try:
            session.set_video(argument)
        except (OSError, ValueError) as err:
            stdout.write(f"(video not set: {err})\n")
        else:
            stdout.write(f"(video: {argument}; new conversation {_about(session)})\n")
    elif command in ("/image", "/video"):
        stdout.write(f"(usage: {command} PATH)\n")
    elif command == "/clear":
        session.set_images([])
        session.set_video(None)
        stdout.write("(images and video dropped; new conversation)\n")
    else:
        stdout.write(f"(unknown command {command}; valid: {COMMANDS})\n")
    return True


def _about(session: ChatSession) -> str:
    """What the chat is about, e.g. "about 2 images and a video"."""
    n = len(session.images)
    parts = ([f"{n} image{'s' if n > 1 else ''}"] if n else []) + (["a video"] if session.video else [])
    return "about " + " and ".join(parts) if parts else "without images or video"


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
    """Console entry point; a bad model folder, image or video is one error line (exit 1)."""
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

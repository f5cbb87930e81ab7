"""``llava-lite-web``: the Gradio web demo of a saved model (optional extra ``web``).

Examples::

    llava-lite-web outputs/finetune/model                       # http://127.0.0.1:7860
    llava-lite-web outputs/finetune/model --port 8000
    llava-lite-web outputs/finetune/model --host 0.0.0.0        # reachable from other machines

Upload an image (more in the gallery below it, in order) or, for a model with a video token, a
video; chat about them (replies stream), tune temperature / top-p / max new tokens, reset. A
new image or video starts a new conversation. It listens on 127.0.0.1 unless ``--host`` names
another address.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from llava_lite.cli.chat import load_model
from llava_lite.cli.errors import run_cli
from llava_lite.inference import web


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llava-lite-web", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a model folder (as for llava-lite-chat)")
    p.add_argument("--host", default=web.DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=web.DEFAULT_PORT, help="port (default: %(default)s)")
    p.add_argument("--template", default=None, help="conversation template (default: the model's)")
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")
    p.add_argument("--title", default=None, help="page title (default: the model folder's name)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--trust-remote-code", action="store_true")
    return p


def serve(args: argparse.Namespace) -> None:
    """Check what can fail fast (gradio installed, port free) before loading the model."""
    web.import_gradio()
    web.check_port_free(args.host, args.port)
    model, processor = load_model(args)
    app = web.build_app(
        model, processor, title=args.title or f"llava_lite: {args.model_dir}", system=args.system
    )
    url = web.launch(app, args.host, args.port, block=False)
    print(f"llava-lite-web: serving {args.model_dir} at {url} (Ctrl-C stops)", flush=True)
    app.block_thread()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; a missing extra, a bad model folder or a busy port is one error line."""
    args = build_parser().parse_args(argv)
    run_cli("llava-lite-web", lambda: serve(args))


if __name__ == "__main__":
    main()

"""Open what inference reads, a model folder and an image, or fail with one clear error.

``llava-lite-chat``, ``llava-lite-web`` and ``llava-lite-eval`` all start here, so a path that
is not a model (missing, a file, an empty folder, unreadable JSON, corrupt weights) reads the
same in each: one ``ValueError`` / ``OSError`` naming ``model_dir`` and the file at fault, which
the console commands print as one line (:mod:`llava_lite.cli.errors`). An image that does not
open reads ``unreadable_image: PATH: why`` (``missing_image`` when it is not there), without the
training data's record fields, which a chat or a question does not have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from llava_lite.data import LlavaProcessor
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.modeling import load_pretrained
from llava_lite.modeling.llava import CONFIG_NAME

VALID = "valid: a folder written by LlavaModel.save_pretrained, a llava-hf or an original LLaVA folder"
# torch's message for weights whose names or shapes do not match the architecture
_STATE_DICT_MISMATCH = "Error(s) in loading state_dict"


def check_model_dir(path: str | Path) -> Path:
    """``path`` as a folder whose JSON files parse; the checks that need no model built."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"model_dir={path}: no such folder; {VALID}")
    if not folder.is_dir():
        raise NotADirectoryError(f"model_dir={path}: a file, not a model folder; {VALID}")
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"model_dir={path}: no {CONFIG_NAME}: not a llava_lite model folder "
            "(nor a llava-hf or original LLaVA one)"
        )
    for file in sorted(folder.glob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"model_dir={path}: {file.name} is not valid JSON ({err}); {VALID}") from None
    return folder


def load_model_dir(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    template: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, LlavaProcessor]:
    """The model in ``path`` on ``device`` in eval mode, and its processor (``template``: the
    conversation template, default the model's)."""
    folder = check_model_dir(path)
    try:
        model = load_pretrained(folder, trust_remote_code=trust_remote_code)
    except SafetensorError as err:
        raise ValueError(f"model_dir={path}: the weights file is not readable safetensors ({err})") from None
    except RuntimeError as err:
        if _STATE_DICT_MISMATCH not in str(err):
            raise
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"model_dir={path}: the weights do not match config.json ({first})") from None
    model.to(device).eval()
    return model, LlavaProcessor.from_model(model, template=template)


def image_error(err: BadSampleError, where: str = "") -> OSError | ValueError:
    """The error to raise for an image that did not open; ``where`` (e.g. "question 3") leads.

    A missing file is a ``FileNotFoundError`` (the console hint says to check the path).
    """
    message = f"{where}: " if where else ""
    message += f"{err.reason}: {err.detail}" if err.detail else str(err)
    return FileNotFoundError(message) if err.reason == "missing_image" else ValueError(message)

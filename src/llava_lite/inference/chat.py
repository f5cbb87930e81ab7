"""A multi-turn chat about one image, with the history rendered by the model's template.

Every turn re-renders the whole conversation with :meth:`LlavaProcessor.prompt` (the image
belongs to the first question), so the model sees exactly the layout it was trained on.
When the prompt plus ``max_new_tokens`` no longer fits ``model_max_length``, the oldest
turns are dropped (logged), never the new question.

Replies stream: :meth:`ChatSession.stream` yields text as tokens are generated (a
transformers ``TextIteratorStreamer`` fed by ``generate`` in a worker thread), and
:meth:`ChatSession.ask` is the same turn collected. Switching the image
(:meth:`ChatSession.set_image`) starts a new conversation: the templates hold one image, at the
first question, so earlier turns would otherwise be read as being about the new image.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import TextIteratorStreamer

from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.collate import batch_images
from llava_lite.data.processor import PreparedImage
from llava_lite.inference.decoding import DecodingSettings
from llava_lite.inference.loading import image_error

log = logging.getLogger(__name__)

ImageSource = str | Path | Image.Image


class _Cancelled(Exception):
    """Raised inside ``generate`` (from the streamer) to stop a reply nobody reads any more."""


class _CancellableStreamer(TextIteratorStreamer):
    """A ``TextIteratorStreamer`` whose generation stops at the next token once cancelled."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.cancelled = threading.Event()

    def put(self, value: torch.Tensor) -> None:
        if self.cancelled.is_set():
            raise _Cancelled
        super().put(value)


class ChatSession:
    """``ChatSession(model, processor, image).ask("What is this?")`` → the assistant's reply."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        image: ImageSource | None = None,
        settings: DecodingSettings | None = None,
        system: str | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.settings = settings or DecodingSettings()
        self.system = system
        self.history: list[tuple[str, str]] = []
        self.image: PreparedImage | None = None  # preprocessed once per image (tiles and size under AnyRes)
        self.set_image(image)

    def set_image(self, image: ImageSource | None) -> None:
        """Talk about ``image`` (or no image) from now on; a new conversation starts.

        An image that does not open raises ``FileNotFoundError`` / ``ValueError`` (one line
        naming the file) and leaves the session as it was.
        """
        try:
            prepared = (
                None
                if image is None
                else self.processor.prepare_image(str(image) if isinstance(image, Path) else image)
            )
        except BadSampleError as err:
            raise image_error(err) from None
        self.image = prepared
        self.history.clear()

    def reset(self) -> None:
        self.history.clear()

    def fitting_prompt(self, question: str) -> dict[str, Any]:
        """The next turn's prompt (``input_ids [T]``, ``pixel_values``), trimming old turns to fit."""
        limit = self.processor.model_max_length - self.settings.max_new_tokens
        while True:
            prompt = self.processor.prompt(question, self.image, history=self.history, system=self.system)
            if prompt["input_ids"].numel() <= limit:
                return prompt
            if not self.history:
                raise ValueError(
                    f"the question alone needs {prompt['input_ids'].numel()} prompt tokens; with "
                    f"max_new_tokens={self.settings.max_new_tokens} that exceeds "
                    f"model_max_length={self.processor.model_max_length}"
                )
            log.info(
                "chat: dropping the oldest turn to fit model_max_length=%d", self.processor.model_max_length
            )
            self.history.pop(0)

    def stream(self, question: str) -> Iterator[str]:
        """Yield the reply's text as it is generated; once complete, the turn joins the history.

        Stopping early (closing the generator) stops generation at the next token and leaves
        the history as it was.
        """
        if not question.strip():
            raise ValueError("empty question")
        prompt = self.fitting_prompt(question)
        streamer = _CancellableStreamer(self.processor.tokenizer)
        outcome: dict[str, Any] = {}
        worker = threading.Thread(
            target=self._generate, args=(prompt, streamer, outcome), name="llava-lite-chat", daemon=True
        )
        worker.start()
        try:
            yield from streamer
        finally:
            streamer.cancelled.set()  # no-op when generation already ended
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        new_tokens = outcome["tokens"]  # [T_new]
        reply = self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        self.history.append((question, reply))

    def ask(self, question: str) -> str:
        """Answer ``question`` given the image and the turns so far; the turn joins the history."""
        for _ in self.stream(question):
            pass
        return self.history[-1][1]

    def _generate(
        self, prompt: dict[str, Any], streamer: _CancellableStreamer, outcome: dict[str, Any]
    ) -> None:
        """Worker thread: ``generate`` into ``streamer``; the tokens or the error go to ``outcome``."""
        device = next(self.model.parameters()).device
        images = {k: v.to(device) for k, v in batch_images([prompt]).items() if v is not None}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():  # grad mode is per thread
                new_tokens = self.model.generate(
                    prompt["input_ids"].unsqueeze(0).to(device),  # [1, T]
                    **images,  # pixel_values [1 or n_tiles, 3, H, W], image_sizes
                    streamer=streamer,
                    **self.settings.generate_kwargs(self.processor.stop_token_ids),
                )  # [1, T_new]
            outcome["tokens"] = new_tokens[0].cpu()
        except _Cancelled:
            pass  # the reader closed the stream and is not waiting
        except BaseException as err:  # re-raised in the reading thread
            outcome["error"] = err
            streamer.end()  # wake the reader
        finally:
            self.model.train(was_training)

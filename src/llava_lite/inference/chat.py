"""A multi-turn chat about images and a video, with the history rendered by the model's template.

Every turn re-renders the whole conversation with :meth:`LlavaProcessor.prompt`, so the model sees
exactly the layout it was trained on: every image and the video belong to the first question (in
front of it, or where its ``<image>`` markers are when it has one per image). When the prompt
plus ``max_new_tokens`` no longer fits ``model_max_length``, the oldest turns are dropped
(logged), never the new question.

Replies stream: :meth:`ChatSession.stream` yields text as tokens are generated (a
transformers ``TextIteratorStreamer`` fed by ``generate`` in a worker thread), and
:meth:`ChatSession.ask` is the same turn collected. Changing what the chat is about
(:meth:`ChatSession.add_image`, :meth:`~ChatSession.set_images`, :meth:`~ChatSession.set_video`)
starts a new conversation: the new image or video would join the first question, so earlier
answers would otherwise read as being about something they never saw.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import TextIteratorStreamer

from llava_lite.config import NO_VIDEO
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.collate import batch_images
from llava_lite.data.images import open_image
from llava_lite.data.processor import PreparedImage, PreparedVideo, as_image_list
from llava_lite.inference.decoding import DecodingSettings
from llava_lite.inference.loading import image_error

log = logging.getLogger(__name__)

ImageSource = str | Path | bytes | Image.Image | PreparedImage
# A video file or a folder of its frames, its decoded frames, or one prepared already.
VideoSource = str | Path | Sequence[Image.Image] | PreparedVideo


def visual_error(err: BadSampleError, where: str = "") -> OSError | ValueError:
    """:func:`image_error` for images and videos: a missing file of either is a ``FileNotFoundError``."""
    error = image_error(err, where)
    return FileNotFoundError(str(error)) if err.reason == "missing_video" else error


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
    """``ChatSession(model, processor, image).ask("What is this?")`` → the assistant's reply.

    ``image`` is one image or a list (paths, bytes, PIL images); ``video`` a video file, a folder
    of its frames or its decoded frames. Both are prepared once, when set, not every turn.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        image: ImageSource | Sequence[ImageSource] | None = None,
        settings: DecodingSettings | None = None,
        system: str | None = None,
        video: VideoSource | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.settings = settings or DecodingSettings()
        self.system = system
        self.history: list[tuple[str, str]] = []
        # Opened once; prepared together (several images may be read differently from one).
        self._sources: list[Image.Image | PreparedImage] = []
        self.images: list[PreparedImage] = []  # tiles and size under AnyRes
        self.video: PreparedVideo | None = None
        self.set_images(as_image_list(image))
        self.set_video(video)

    @property
    def image(self) -> PreparedImage | None:
        """The one image talked about; None without images or with several (see ``images``)."""
        return self.images[0] if len(self.images) == 1 else None

    def set_image(self, image: ImageSource | None) -> None:
        """Talk about ``image`` (or no image) instead of the images so far; a new conversation starts."""
        self.set_images(as_image_list(image))

    def add_image(self, image: ImageSource) -> None:
        """Talk about ``image`` too, after the images so far; a new conversation starts."""
        self.set_images([*self._sources, image])

    def set_images(self, images: Sequence[ImageSource]) -> None:
        """Talk about ``images`` (in order) from now on; a new conversation starts.

        An image that does not open raises ``FileNotFoundError`` / ``ValueError`` (one line
        naming the file) and leaves the session as it was.
        """
        opened = [self._open(image) for image in images]
        prepared = self.processor.prepare_images(opened) if opened else []
        self._sources, self.images = opened, prepared
        self.history.clear()

    def set_video(self, video: VideoSource | None) -> None:
        """Talk about ``video`` (or no video) with the images from now on; a new conversation starts.

        A model without video, or a video that does not open, raises one line naming the file
        (``FileNotFoundError`` / ``ValueError``) and leaves the session as it was.
        """
        prepared = None
        if isinstance(video, PreparedVideo):
            prepared = video
        elif video is not None:
            where = f"video {video}" if isinstance(video, str | Path) else f"a video of {len(video)} frames"
            if getattr(self.model, "video_token_id", None) is None:
                raise ValueError(f"{where}: {NO_VIDEO}")
            try:
                prepared = self.processor.prepare_video(str(video) if isinstance(video, Path) else video)
            except BadSampleError as err:
                raise visual_error(err) from None
        self.video = prepared
        self.history.clear()

    def reset(self) -> None:
        self.history.clear()

    @staticmethod
    def _open(image: ImageSource) -> Image.Image | PreparedImage:
        if isinstance(image, PreparedImage):
            return image
        try:
            return open_image(str(image) if isinstance(image, Path) else image)
        except BadSampleError as err:
            raise visual_error(err) from None

    def fitting_prompt(self, question: str) -> dict[str, Any]:
        """The next turn's prompt (``input_ids [T]`` and the visual inputs), trimming old turns to fit."""
        limit = self.processor.model_max_length - self.settings.max_new_tokens
        while True:
            prompt = self.processor.prompt(
                question, self.images or None, history=self.history, system=self.system, video=self.video
            )
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
        """Answer ``question`` given the images, the video and the turns so far; the turn joins the history."""
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
                    **images,  # pixel_values [N_tiles, 3, H, W], image_sizes [N, 2], pixel_values_videos [F, 3, H, W]
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

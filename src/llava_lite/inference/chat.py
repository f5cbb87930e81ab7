"""A multi-turn chat about one image, with the history rendered by the model's template.

Every turn re-renders the whole conversation with :meth:`LlavaProcessor.prompt` (the image
belongs to the first question), so the model sees exactly the layout it was trained on.
When the prompt plus ``max_new_tokens`` no longer fits ``model_max_length``, the oldest
turns are dropped (logged), never the new question.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava_lite.inference.decoding import DecodingSettings

log = logging.getLogger(__name__)


class ChatSession:
    """``ChatSession(model, processor, image).ask("What is this?")`` → the assistant's reply."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        image: str | Path | Image.Image | None = None,
        settings: DecodingSettings | None = None,
        system: str | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.settings = settings or DecodingSettings()
        self.system = system
        # Preprocess once: every turn reuses the same pixel values.
        self.pixel_values = (
            None if image is None else processor.load_image(str(image) if isinstance(image, Path) else image)
        )
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.history.clear()

    def fitting_prompt(self, question: str) -> dict[str, Any]:
        """The next turn's prompt (``input_ids [T]``, ``pixel_values``), trimming old turns to fit."""
        limit = self.processor.model_max_length - self.settings.max_new_tokens
        while True:
            prompt = self.processor.prompt(
                question, self.pixel_values, history=self.history, system=self.system
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

    @torch.no_grad()
    def ask(self, question: str) -> str:
        """Answer ``question`` given the image and the turns so far; the turn joins the history."""
        if not question.strip():
            raise ValueError("empty question")
        prompt = self.fitting_prompt(question)
        device = next(self.model.parameters()).device
        pixel_values = prompt["pixel_values"]
        was_training = self.model.training
        self.model.eval()
        try:
            new_tokens = self.model.generate(
                prompt["input_ids"].unsqueeze(0).to(device),  # [1, T]
                pixel_values=None
                if pixel_values is None
                else pixel_values.unsqueeze(0).to(device),  # [1, 3, H, W]
                **self.settings.generate_kwargs(self.processor.stop_token_ids),
            )  # [1, T_new]
        finally:
            self.model.train(was_training)
        reply = self.processor.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()
        self.history.append((question, reply))
        return reply

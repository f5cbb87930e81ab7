"""LLaVA records and images → model inputs, with exact labels.

One object holds what a sample needs from the model side (tokenizer, image processor,
number of image tokens, template), so training, generation, chat and evaluation all build
inputs the same way: ``LlavaProcessor.from_model(model)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from PIL import Image

from llava_lite.config import IGNORE_INDEX, IMAGE_ASPECTS, IMAGE_TOKEN
from llava_lite.data.images import make_square, open_image
from llava_lite.data.schema import normalize_conversation
from llava_lite.data.tokenize import check_reserved_text, encode_conversation, expand_image_slots, fit_length
from llava_lite.image_grid import ImageGrid
from llava_lite.templates import Message, get_template, prompt_for_generation

# What happens to a sample longer than model_max_length (the data config's ``overlong``).
OVERLONG_POLICIES = ("skip", "raise", "truncate")


class PreparedImage(NamedTuple):
    """An image ready for the model: its pixels and the size its token count depends on."""

    pixel_values: torch.Tensor  # [3, H, W] one square view, or [n_tiles, 3, H, W] under AnyRes
    size: tuple[int, int]  # (height, width) of the image as opened


ImageInput = str | bytes | Image.Image | PreparedImage | torch.Tensor


class LlavaProcessor:
    """Tokenises conversations with a template and expands ``<image>`` into image slots.

    Over-long samples follow ``overlong``: ``skip`` (the default) counts and logs them as
    ``too_long`` and trains without them, whatever ``on_bad_sample`` says; ``raise`` stops at
    the first, naming it; ``truncate`` (LLaVA's behaviour, chosen explicitly) cuts the end at
    ``model_max_length`` and trains the cut answer without its end-of-turn token. Every
    truncation is logged with its record and token counts, counted in ``truncations`` (per
    process) and marked in the sample (``"truncated"``), which the collator reports and
    ``LlavaDataModule.truncated_count()`` counts across workers. A cut through the image
    block, or one that leaves nothing trained, is a ``too_long`` / ``no_trained_tokens`` bad
    sample under any policy.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any,
        num_image_tokens: int,
        image_token: str = IMAGE_TOKEN,
        template: str = "vicuna_v1",
        image_aspect: str = "pad",
        model_max_length: int = 2048,
        overlong: str = "skip",
        image_grid: ImageGrid | None = None,
    ) -> None:
        if image_aspect not in IMAGE_ASPECTS:
            raise ValueError(f"image_aspect={image_aspect!r}; valid: {list(IMAGE_ASPECTS)}")
        if overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong={overlong!r}; valid: {list(OVERLONG_POLICIES)}")
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.template = get_template(template)
        ids = tokenizer(image_token, add_special_tokens=False).input_ids
        token_id = tokenizer.convert_tokens_to_ids(image_token)
        if ids != [token_id]:
            raise ValueError(
                f"{image_token!r} must be one special token of the tokenizer (tokenises to {ids}); "
                "add it with tokenizer.add_tokens([image_token], special_tokens=True)"
            )
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens  # one square view's tokens
        # Counts every image's tokens (llava_lite.image_grid); without one, each image is one view.
        self.image_grid = image_grid or ImageGrid(tile=0, patches=0, base_tokens=num_image_tokens)
        if self.image_grid.anyres != (image_aspect == "anyres"):
            raise ValueError(
                f"image_aspect={image_aspect!r} needs an AnyRes image_grid exactly when 'anyres'"
            )
        self.image_token = image_token
        self.image_token_id: int = token_id
        self.image_aspect = image_aspect
        self.model_max_length = model_max_length
        self.overlong = overlong
        self.truncations = 0
        self.reserved_text = self.template.reserved_text(tokenizer)

    @classmethod
    def from_model(cls, model: Any, **overrides: Any) -> LlavaProcessor:
        """The processor matching a ``LlavaModel`` (its tokenizer, image processor and config);
        any constructor argument may be overridden, e.g. ``template="plain"``, ``overlong="raise"``."""
        cfg = model.config
        settings: dict[str, Any] = {
            "tokenizer": model.tokenizer,
            "image_processor": model.image_processor,
            "num_image_tokens": model.num_image_tokens,
            "image_token": cfg.image_token,
            "template": cfg.conv_template,
            "image_aspect": cfg.image_aspect,
            "model_max_length": cfg.model_max_length,
            "image_grid": model.image_grid,
        }
        valid = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(f"LlavaProcessor.from_model: unknown settings {unknown}; valid: {valid}")
        # None means "the model's own" (e.g. a command line's unset --template).
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an assistant turn under this template (pass to ``generate``)."""
        return self.template.stop_token_ids(self.tokenizer)

    # ---- images ---------------------------------------------------------------------
    @property
    def anyres(self) -> bool:
        return self.image_grid.anyres

    def image_tokens(self, size: tuple[int, int]) -> int:
        """Slots an image of ``size`` (height, width) fills (``llava_lite.image_grid``)."""
        return self.image_grid.num_tokens(*size)

    def prepare_image(self, source: ImageInput, image_root: str | None = None) -> PreparedImage:
        """Open (path, fsspec URL, bytes or PIL), convert to RGB, then square it by ``image_aspect``
        and preprocess, or (``anyres``) tile it with transformers' LLaVA-NeXT image processor."""
        if isinstance(source, PreparedImage):
            return source
        if isinstance(source, torch.Tensor):
            if self.anyres:
                raise ValueError(
                    "an AnyRes model needs each image's size: pass a PreparedImage "
                    "(processor.prepare_image(...)), not bare pixel values"
                )
            return PreparedImage(source, (int(source.shape[-2]), int(source.shape[-1])))
        img = open_image(source, image_root)
        size = (img.height, img.width)
        if self.anyres:
            tiles = self.image_processor(images=img, return_tensors="pt")["pixel_values"][0]
            return PreparedImage(tiles.float(), size)  # [n_tiles, 3, H, W]
        square = make_square(img, self.image_aspect, self.image_processor)
        pixels = self.image_processor(images=square, return_tensors="pt")["pixel_values"][0]
        return PreparedImage(pixels.float(), size)  # [3, H, W]

    def load_image(self, source: ImageInput, image_root: str | None = None) -> torch.Tensor:
        """The pixel values of :meth:`prepare_image`: ``[3, H, W]``, or ``[n_tiles, 3, H, W]`` under AnyRes."""
        return self.prepare_image(source, image_root).pixel_values

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """A PIL image → pixel values, as :meth:`load_image` does."""
        return self.load_image(image)

    # ---- training samples -----------------------------------------------------------
    def process_record(
        self, record: dict[str, Any], image: Image.Image | torch.Tensor | None
    ) -> dict[str, Any]:
        """One LLaVA record (+ its image, if any) → ``input_ids [T]``, ``labels [T]``, ``pixel_values``.

        ``image`` may be a PIL image or an already preprocessed ``[3, H, W]`` tensor.
        Raises ``BadSampleError`` (without file name; the dataset adds it) for bad records.
        """
        messages = normalize_conversation(record.get("conversations"), self.image_token, image is not None)
        return self.process_messages(messages, image, str(record.get("id", "")))

    def process_messages(
        self,
        messages: Sequence[Message],
        image: ImageInput | None,
        record_id: str = "",
        image_root: str | None = None,
    ) -> dict[str, Any]:
        """Normalised messages (``llava_lite.data.schema``) + image → the sample ``process_record`` returns.

        The datasets call this with the messages ``check_record`` already normalised and the
        image's path or bytes (under ``image_root``), which is opened only once the text has
        tokenised within the length limit.
        """
        has_image = image is not None
        check_reserved_text(messages, self.reserved_text, self.image_token)
        enc = encode_conversation(messages, self.tokenizer, self.template, self.image_token)
        prepared = None
        n_slots = self.num_image_tokens
        if has_image and self.anyres:  # the slot count depends on the image's size: open it first
            prepared = self.prepare_image(image, image_root)
            n_slots = self.image_tokens(prepared.size)
        input_ids, labels = expand_image_slots(
            enc.input_ids, enc.labels, self.image_token_id, n_slots, 1 if has_image else 0
        )
        n_tokens = len(input_ids)
        input_ids, labels = fit_length(
            input_ids, labels, self.model_max_length, self.overlong, self.image_token_id, record_id
        )
        if len(input_ids) < n_tokens:
            self.truncations += 1
        if has_image and prepared is None:
            prepared = self.prepare_image(image, image_root)
        sample = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),  # [T]
            "labels": torch.tensor(labels, dtype=torch.long),  # [T]
            "pixel_values": None
            if prepared is None
            else prepared.pixel_values,  # [3, H, W], [n, 3, H, W] or None
            "id": record_id,
        }
        if prepared is not None and self.anyres:
            sample["image_sizes"] = [prepared.size]  # (height, width) per image
        if len(input_ids) < n_tokens:  # the collator reports it, the DataModule counts it
            sample["truncated"] = f"{n_tokens} tokens cut to model_max_length={self.model_max_length}"
        return sample

    # ---- generation prompts ---------------------------------------------------------
    def prompt(
        self,
        question: str,
        image: ImageInput | None = None,
        history: Sequence[tuple[str, str]] = (),
        system: str | None = None,
    ) -> dict[str, Any]:
        """``input_ids [T]`` ending with the assistant prefix, ``pixel_values`` (as :meth:`load_image`)
        or None, and under AnyRes ``image_sizes`` ``[(height, width)]``.

        ``history`` holds earlier (question, answer) pairs; the image belongs to the first question.
        """
        messages: list[Message] = [("system", system)] if system else []
        for q, a in history:
            messages += [("user", q), ("assistant", a)]
        messages.append(("user", question))
        prepared = None
        if image is not None:
            first = 1 if system else 0
            text = messages[first][1].replace(self.image_token, "").strip()
            messages[first] = ("user", f"{self.image_token}\n{text}")
            prepared = self.prepare_image(image)
        ids = prompt_for_generation(messages, self.tokenizer, self.template, self.image_token)
        ids, _ = expand_image_slots(
            ids,
            [IGNORE_INDEX] * len(ids),
            self.image_token_id,
            self.num_image_tokens if prepared is None else self.image_tokens(prepared.size),
            0 if prepared is None else 1,
        )
        out: dict[str, Any] = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "pixel_values": None if prepared is None else prepared.pixel_values,
        }
        if prepared is not None and self.anyres:
            out["image_sizes"] = [prepared.size]
        return out

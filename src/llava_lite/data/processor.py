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

from llava_lite.config import IGNORE_INDEX, IMAGE_ASPECTS, IMAGE_TOKEN, NO_VIDEO, VideoConfig
from llava_lite.data.images import make_square, open_image
from llava_lite.data.schema import normalize_conversation
from llava_lite.data.tokenize import check_reserved_text, encode_conversation, expand_image_slots, fit_length
from llava_lite.data.video import VideoSampling, load_frames
from llava_lite.image_grid import ImageGrid
from llava_lite.templates import Message, get_template, prompt_for_generation

# What happens to a sample longer than model_max_length (the data config's ``overlong``).
OVERLONG_POLICIES = ("skip", "raise", "truncate")


class PreparedImage(NamedTuple):
    """An image ready for the model: its pixels and the size its token count depends on."""

    pixel_values: torch.Tensor  # [3, H, W] one square view, or [n_tiles, 3, H, W] under AnyRes
    size: tuple[int, int]  # (height, width) of the image as opened
    tiled: bool = True  # False: one of several images read as its base view alone (OneVision)


class PreparedVideo(NamedTuple):
    """A video ready for the model: its sampled frames, each one view of the tower."""

    pixel_values: torch.Tensor  # [F, 3, H, W]

    @property
    def frames(self) -> int:
        return int(self.pixel_values.shape[0])


ImageInput = str | bytes | Image.Image | PreparedImage | torch.Tensor
# A video file or folder of frames (path or URL), its bytes, decoded frames, or prepared.
VideoInput = str | bytes | Sequence[Image.Image] | PreparedVideo


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
        multi_image: str = "anyres",
        video_token: str | None = None,
        video_processor: Any = None,
        video: VideoConfig | None = None,
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
        self.multi_image = multi_image
        self.video_token = video_token
        self.video_token_id: int | None = None
        if video_token is not None:
            self.video_token_id = int(tokenizer.convert_tokens_to_ids(video_token))
            if tokenizer(video_token, add_special_tokens=False).input_ids != [self.video_token_id]:
                raise ValueError(f"{video_token!r} must be one special token of the tokenizer")
            if video_processor is None:
                raise ValueError("a processor that reads video needs the model's video_processor")
        self.video_processor = video_processor
        video = video or VideoConfig()
        self.video_sampling = VideoSampling(video.num_frames, video.fps, video.min_frames)
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
            "multi_image": cfg.anyres.multi_image,
            "video_token": cfg.video_token,
            "video_processor": model.video_processor,
            "video": cfg.video,
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

    def prepare_images(
        self, sources: Sequence[ImageInput], image_root: str | None = None
    ) -> list[PreparedImage]:
        """A sample's images. Several under ``anyres.multi_image="base"`` are each read as one
        view padded to a square (transformers' LLaVA-OneVision image processor); otherwise each
        is read as :meth:`prepare_image` reads one."""
        if self.tiles_each(len(sources)):
            return [self.prepare_image(source, image_root) for source in sources]
        ready = [s for s in sources if isinstance(s, PreparedImage)]
        if ready:
            if len(ready) != len(sources) or any(p.tiled for p in ready):
                raise ValueError(
                    "several images are prepared together: pass sources, or untiled PreparedImages"
                )
            return list(ready)
        opened = [open_image(source, image_root) for source in sources]  # type: ignore[arg-type]
        views = self.image_processor(images=[opened], return_tensors="pt")["pixel_values"]  # [N, n, 3, H, W]
        return [
            PreparedImage(view[:1].float(), (img.height, img.width), tiled=False)  # [1, 3, H, W]
            for view, img in zip(views, opened, strict=True)
        ]

    def tiles_each(self, count: int) -> bool:
        """Whether each of a sample's ``count`` images is read as one alone is (AnyRes tiles, or one
        square view); False for several under ``anyres.multi_image="base"`` (a base view each)."""
        return count < 2 or not self.anyres or self.multi_image != "base"

    def image_tokens(self, size: tuple[int, int], tiled: bool = True) -> int:
        """Slots an image of ``size`` (height, width) fills (``llava_lite.image_grid``)."""
        return self.image_grid.num_tokens(*size, tiled=tiled)

    # ---- video ----------------------------------------------------------------------
    def prepare_video(self, source: VideoInput, video_root: str | None = None) -> PreparedVideo:
        """Sample a video's frames (a file, a folder of frames, its bytes, or decoded frames) and
        resize each to one view with transformers' LLaVA-OneVision video processor."""
        if isinstance(source, PreparedVideo):
            return source
        if self.video_token_id is None or self.video_processor is None:
            raise ValueError(NO_VIDEO)
        frames = (
            list(source)
            if isinstance(source, list | tuple)
            else load_frames(source, self.video_sampling, video_root)
        )
        pixels = self.video_processor(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]
        return PreparedVideo(pixels.float())  # [F, 3, H, W]

    def video_tokens(self, frames: int) -> int:
        """Slots a video of ``frames`` frames fills (``llava_lite.image_grid``)."""
        return self.image_grid.video_tokens(frames)

    def visual_inputs(self, images: Sequence[PreparedImage], video: PreparedVideo | None) -> dict[str, Any]:
        """A sample's model inputs for its images and video (``LlavaModel.VISUAL_INPUTS``' keys)."""
        out: dict[str, Any] = {"pixel_values": None}
        if images:
            views = [p.pixel_values for p in images]
            if len(views) == 1:
                out["pixel_values"] = views[0]  # [3, H, W] or [n_tiles, 3, H, W]
            else:
                out["pixel_values"] = torch.cat(
                    [v if v.dim() == 4 else v[None] for v in views]
                )  # [N_views, 3, H, W]
            if self.anyres:
                out["image_sizes"] = [p.size for p in images]  # (height, width) per image
                out["image_tiled"] = [p.tiled for p in images]
        if video is not None:
            out["pixel_values_videos"] = video.pixel_values  # [F, 3, H, W]
            out["video_frames"] = [video.frames]
        return out

    def load_image(self, source: ImageInput, image_root: str | None = None) -> torch.Tensor:
        """The pixel values of :meth:`prepare_image`: ``[3, H, W]``, or ``[n_tiles, 3, H, W]`` under AnyRes."""
        return self.prepare_image(source, image_root).pixel_values

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """A PIL image → pixel values, as :meth:`load_image` does."""
        return self.load_image(image)

    # ---- training samples -----------------------------------------------------------
    def process_record(
        self,
        record: dict[str, Any],
        image: ImageInput | Sequence[ImageInput] | None,
        video: VideoInput | None = None,
    ) -> dict[str, Any]:
        """One LLaVA record (+ its image(s) and video, if any) → ``input_ids [T]``, ``labels [T]``,
        the visual inputs of :meth:`visual_inputs`.

        ``image`` may be a PIL image or an already preprocessed ``[3, H, W]`` tensor, or a list.
        Raises ``BadSampleError`` (without file name; the dataset adds it) for bad records.
        """
        images = as_image_list(image)
        messages = normalize_conversation(
            record.get("conversations"), self.image_token, len(images), self.video_token, video is not None
        )
        return self.process_messages(messages, images, str(record.get("id", "")), video=video)

    def process_messages(
        self,
        messages: Sequence[Message],
        image: ImageInput | Sequence[ImageInput] | None,
        record_id: str = "",
        image_root: str | None = None,
        video: VideoInput | None = None,
    ) -> dict[str, Any]:
        """Normalised messages (``llava_lite.data.schema``) + images + video → the sample ``process_record`` returns.

        The datasets call this with the messages ``check_record`` already normalised and the
        images' (video's) paths or bytes (under ``image_root``), which are opened only once the
        text has tokenised within the length limit, unless their slot counts depend on them.
        """
        sources = as_image_list(image)
        check_reserved_text(messages, self.reserved_text, self._markers)
        enc = encode_conversation(messages, self.tokenizer, self.template, self.image_token)
        images: list[PreparedImage] | None = None
        counts = [self.num_image_tokens] * len(sources)
        if sources and self.anyres:  # the slot count depends on the images' sizes: open them first
            images = self.prepare_images(sources, image_root)
            counts = [self.image_tokens(p.size, p.tiled) for p in images]
        input_ids, labels = expand_image_slots(enc.input_ids, enc.labels, self.image_token_id, counts)
        # The slot count depends on the frames decoded; a model without video refuses it here.
        prepared_video = None if video is None else self.prepare_video(video, image_root)
        input_ids, labels = self._expand_video_slots(input_ids, labels, prepared_video)
        n_tokens = len(input_ids)
        input_ids, labels = fit_length(
            input_ids, labels, self.model_max_length, self.overlong, self._slot_ids, record_id
        )
        if len(input_ids) < n_tokens:
            self.truncations += 1
        if images is None:
            images = self.prepare_images(sources, image_root)
        sample = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),  # [T]
            "labels": torch.tensor(labels, dtype=torch.long),  # [T]
            **self.visual_inputs(images, prepared_video),
            "id": record_id,
        }
        if len(input_ids) < n_tokens:  # the collator reports it, the DataModule counts it
            sample["truncated"] = f"{n_tokens} tokens cut to model_max_length={self.model_max_length}"
        return sample

    def _expand_video_slots(
        self, ids: list[int], labels: list[int], video: PreparedVideo | None
    ) -> tuple[list[int], list[int]]:
        """Each video-token id becomes the video's ignored slots (a marker without a video is a
        mismatch); unchanged for a model without video."""
        if self.video_token_id is None:
            return ids, labels
        counts = [] if video is None else [self.video_tokens(video.frames)]
        return expand_image_slots(ids, labels, self.video_token_id, counts)

    @property
    def _markers(self) -> tuple[str, ...]:
        return (self.image_token,) if self.video_token is None else (self.image_token, self.video_token)

    @property
    def _slot_ids(self) -> tuple[int, ...]:
        ids = (self.image_token_id, self.video_token_id)
        return tuple(i for i in ids if i is not None)

    # ---- generation prompts ---------------------------------------------------------
    def prompt(
        self,
        question: str,
        image: ImageInput | Sequence[ImageInput] | None = None,
        history: Sequence[tuple[str, str]] = (),
        system: str | None = None,
        video: VideoInput | None = None,
    ) -> dict[str, Any]:
        """``input_ids [T]`` ending with the assistant prefix, and the visual inputs of
        :meth:`visual_inputs` (``pixel_values`` as :meth:`load_image`, or None).

        ``history`` holds earlier (question, answer) pairs. One image (or a video) belongs to the
        first question, its marker put in front; several images go where the text's markers
        are, or, without markers, one after another in front of the first question.
        """
        messages: list[Message] = [("system", system)] if system else []
        for q, a in history:
            messages += [("user", q), ("assistant", a)]
        messages.append(("user", question))
        sources = as_image_list(image)
        first = 1 if system else 0
        text = messages[first][1]
        markers = sum(content.count(self.image_token) for _, content in messages)
        if len(sources) == 1 or (sources and markers != len(sources)):
            text = (
                "".join(f"{self.image_token}\n" for _ in sources) + text.replace(self.image_token, "").strip()
            )
        prepared_video = None if video is None else self.prepare_video(video)  # refused without video
        if prepared_video is not None:
            text = f"{self.video_token}\n" + text.replace(str(self.video_token), "").strip()
        messages[first] = ("user", text)
        images = self.prepare_images(sources)
        ids = prompt_for_generation(messages, self.tokenizer, self.template, self.image_token)
        ids, _ = expand_image_slots(
            ids,
            [IGNORE_INDEX] * len(ids),
            self.image_token_id,
            [self.image_tokens(p.size, p.tiled) if self.anyres else self.num_image_tokens for p in images],
        )
        ids, _ = self._expand_video_slots(ids, [IGNORE_INDEX] * len(ids), prepared_video)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            **self.visual_inputs(images, prepared_video),
        }


def as_image_list(image: Any) -> list[Any]:
    """A sample's images as a list: None -> [], one image -> [image], a list or tuple as it is."""
    if image is None:
        return []
    several = isinstance(image, list) or (isinstance(image, tuple) and not hasattr(image, "_fields"))
    return list(image) if several else [image]  # a PreparedImage is a (named) tuple, but one image

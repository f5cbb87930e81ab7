"""A ``llava_lite`` model for lmms-eval 0.7 (optional extra ``lmms``), so its image tasks run on our folders.

    lmms-eval --model llava_lite --model_args pretrained=runs/train/s2/model --tasks pope,mme

lmms-eval finds the model through this package's ``lmms_eval.models`` entry point
(:func:`manifest`). Answers go through the same path as ``llava-lite-chat``: the model's
template, the images and video at the first question, decoding until the template's end of
turn, then cut at the task's ``until`` strings. ``loglikelihood`` scores a continuation after
that prompt (multiple-choice tasks).

A document's visuals are PIL images and video files (paths ending in a video extension, or
folders of frames), any number of images and at most one video. Several images go in front of
the question in order, or where the task's ``<image>`` markers are when it has one per image
(interleaved tasks). A video for a model without a video token, or a visual of another kind,
is refused with the document's id.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from llava_lite.config import NO_VIDEO
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.collate import batch_images
from llava_lite.data.processor import PreparedVideo
from llava_lite.inference import ChatSession, DecodingSettings, load_model_dir
from llava_lite.inference.chat import visual_error

MODEL_ID = "llava_lite"
# What lmms-eval's video tasks hand over: paths to files ending so (any case).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".wmv", ".mpg", ".mpeg", ".3gp")


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: where lmms-eval finds ``--model llava_lite``.

    Imported here, not at the top: ``lmms_eval.models`` loads the entry points when it is first
    imported, which would then import this module half-initialised."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaLite")


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


class LlavaLite(lmms):
    """``--model_args pretrained=DIR[,device=cpu,template=NAME,max_new_tokens=N,trust_remote_code=true]``."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str = "auto",
        template: str | None = None,
        max_new_tokens: int | str = 128,
        batch_size: int | str = 1,
        trust_remote_code: bool | str = False,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            raise ValueError(
                f"unknown llava_lite model_args {sorted(unused)}; valid: "
                "['pretrained', 'device', 'template', 'max_new_tokens', 'batch_size', 'trust_remote_code']"
            )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.processor = load_model_dir(
            pretrained, device=device, template=template, trust_remote_code=_flag(trust_remote_code)
        )  # a folder that is not a model: one error naming it, as in llava-lite-eval
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size_per_gpu = int(batch_size)

    # ---- what lmms-eval asks ------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        replies = []
        for request in tqdm(requests, disable=self.rank != 0, desc="llava_lite answering"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            images, video = self._visuals(doc_to_visual, doc_id, task, split)
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            settings = self._settings(kwargs)
            session = ChatSession(self.model, self.processor, image=images, settings=settings, video=video)
            reply = session.ask(self._question(context, len(images)))
            for stop in [until] if isinstance(until, str) else until:
                reply = reply.split(stop)[0] if stop else reply
            replies.append(reply)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), reply)
        return replies

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        return self.generate_until(requests)

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of the continuation's token log-probabilities after the prompt, and whether greedy
        decoding would have produced it."""
        results = []
        device = next(self.model.parameters()).device
        for request in tqdm(requests, disable=self.rank != 0, desc="llava_lite scoring"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target(doc) if callable(doc_to_target) else str(doc_to_target)
            images, video = self._visuals(doc_to_visual, doc_id, task, split)
            prompt = self.processor.prompt(self._question(context, len(images)), images or None, video=video)
            target = self.processor.tokenizer(str(continuation), add_special_tokens=False)["input_ids"]
            if not target:
                raise ValueError(f"{task} doc {doc_id}: empty continuation {continuation!r}")
            ids = torch.cat([prompt["input_ids"], torch.tensor(target)])[None].to(device)  # [1, T]
            visual = {k: v.to(device) for k, v in batch_images([prompt]).items() if v is not None}
            logits = self.model(ids, **visual).logits  # [1, T, V]
            steps = logits[0, -len(target) - 1 : -1].float().log_softmax(-1)  # [T_cont, V]
            wanted = torch.tensor(target, device=device)  # [T_cont]
            score = steps.gather(-1, wanted[:, None]).sum().item()
            results.append((score, bool((steps.argmax(-1) == wanted).all())))
        return results

    # ---- helpers --------------------------------------------------------------------------
    def _visuals(
        self, doc_to_visual: Any, doc_id: int, task: str, split: str
    ) -> tuple[list[Image.Image], PreparedVideo | None]:
        """The document's images (RGB, in order) and its video, prepared; one error naming the doc."""
        where = f"{task} doc {doc_id}"
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        visuals = [v for v in (visuals if isinstance(visuals, list) else [visuals]) if v is not None]
        images = [v.convert("RGB") for v in visuals if isinstance(v, Image.Image)]
        videos = [v for v in visuals if _is_video(v)]
        others = [v for v in visuals if not isinstance(v, Image.Image) and not _is_video(v)]
        if others:
            kind = repr(others[0]) if isinstance(others[0], str) else type(others[0]).__name__
            raise ValueError(
                f"{where}: visual {kind} is neither a PIL image nor a video file or frame folder"
            )
        if len(videos) > 1:
            raise ValueError(f"{where}: {len(videos)} videos; llava_lite answers about one")
        if not videos:
            return images, None
        if getattr(self.model, "video_token_id", None) is None:
            raise ValueError(f"{where}: a video ({videos[0]}); {NO_VIDEO}")
        try:
            return images, self.processor.prepare_video(str(videos[0]))
        except BadSampleError as err:
            raise visual_error(err, where) from None

    def _question(self, context: str, n_images: int = 1) -> str:
        """The task's prompt; its image markers go (the processor puts the images in front)
        unless it has one per image, which places several images where the task wants them."""
        markers = [self.processor.image_token]
        if self.processor.video_token is not None:
            markers.append(self.processor.video_token)
        keep = n_images > 1 and context.count(self.processor.image_token) == n_images
        for marker in markers[1:] if keep else markers:
            context = context.replace(marker, "")
        return context.strip()

    def _settings(self, gen_kwargs: dict[str, Any]) -> DecodingSettings:
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        sample = _flag(gen_kwargs.get("do_sample", False)) and temperature > 0
        return DecodingSettings.from_temperature(
            int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
            temperature if sample else 0.0,
            float(gen_kwargs.get("top_p", 1.0) or 1.0),
        )


def _is_video(visual: Any) -> bool:
    """A video file (by its extension) or a folder of frames, as lmms-eval's video tasks pass them."""
    if not isinstance(visual, str | os.PathLike):
        return False
    path = os.fspath(visual)
    return path.lower().endswith(VIDEO_EXTENSIONS) or os.path.isdir(path)

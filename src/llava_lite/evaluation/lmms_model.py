"""A ``llava_lite`` model for lmms-eval 0.7 (optional extra ``lmms``), so its image tasks run on our folders.

    lmms-eval --model llava_lite --model_args pretrained=runs/train/s2/model --tasks pope,mme

lmms-eval finds the model through this package's ``lmms_eval.models`` entry point
(:func:`manifest`). Answers go through the same path as ``llava-lite-chat``: the model's
template, the image at the first question, decoding until the template's end of turn, then
cut at the task's ``until`` strings. ``loglikelihood`` scores a continuation after that prompt
(multiple-choice tasks). One image per question, as LLaVA was trained; a document with more
is refused with its id.
"""

from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from llava_lite.data.collate import batch_images
from llava_lite.inference import ChatSession, DecodingSettings, load_model_dir

MODEL_ID = "llava_lite"


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
            image = self._image(doc_to_visual, doc_id, task, split)
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            settings = self._settings(kwargs)
            session = ChatSession(self.model, self.processor, image=image, settings=settings)
            reply = session.ask(self._question(context))
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
            image = self._image(doc_to_visual, doc_id, task, split)
            prompt = self.processor.prompt(self._question(context), image)
            target = self.processor.tokenizer(str(continuation), add_special_tokens=False)["input_ids"]
            if not target:
                raise ValueError(f"{task} doc {doc_id}: empty continuation {continuation!r}")
            ids = torch.cat([prompt["input_ids"], torch.tensor(target)])[None].to(device)  # [1, T]
            images = {k: v.to(device) for k, v in batch_images([prompt]).items() if v is not None}
            logits = self.model(ids, **images).logits  # [1, T, V]
            steps = logits[0, -len(target) - 1 : -1].float().log_softmax(-1)  # [T_cont, V]
            wanted = torch.tensor(target, device=device)  # [T_cont]
            score = steps.gather(-1, wanted[:, None]).sum().item()
            results.append((score, bool((steps.argmax(-1) == wanted).all())))
        return results

    # ---- helpers --------------------------------------------------------------------------
    def _image(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Image.Image | None:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        visuals = [v for v in (visuals if isinstance(visuals, list) else [visuals]) if v is not None]
        if len(visuals) > 1:
            raise ValueError(f"{task} doc {doc_id}: {len(visuals)} images; llava_lite answers about one")
        if visuals and not isinstance(visuals[0], Image.Image):
            raise ValueError(f"{task} doc {doc_id}: visual is {type(visuals[0]).__name__}, not an image")
        return visuals[0].convert("RGB") if visuals else None

    def _question(self, context: str) -> str:
        """The task's prompt without image markers: the processor places the image itself."""
        return context.replace(self.processor.image_token, "").strip()

    def _settings(self, gen_kwargs: dict[str, Any]) -> DecodingSettings:
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        sample = _flag(gen_kwargs.get("do_sample", False)) and temperature > 0
        return DecodingSettings.from_temperature(
            int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
            temperature if sample else 0.0,
            float(gen_kwargs.get("top_p", 1.0) or 1.0),
        )

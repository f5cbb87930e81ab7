"""Conversation templates and exact, per-turn label masking.

A template renders a conversation as a list of text :class:`Segment` s, each marked trained
(an assistant answer plus its end-of-turn token) or not (system prompt, user turns, role
prefixes). :func:`encode_conversation` tokenises the whole text once and finds every
segment boundary in token ids: the text up to the boundary is tokenised on its own and must
be an exact prefix of the full token sequence. If a boundary does not survive tokenisation
(a merge across it), the sample is rejected with ``label_mismatch`` — it is never trained
with wrong or empty labels, unlike LLaVA's "tokenization mismatch ... (ignored)".

The same boundary check makes generation consistent with training: the prompt built by
:func:`prompt_for_generation` is the tokenised text up to an assistant answer, which in
training was verified to be a prefix of the full sequence.

Prompt strings equal the original LLaVA's character for character. Tokens: ``<image>`` is
a special token here and the text is tokenised once, as transformers' ``LlavaProcessor``
does; LLaVA's ``tokenizer_image_token`` tokenises the text after the image on its own, so a
non-legacy sentencepiece tokenizer (Vicuna v1.5) gives it one extra ``"▁"`` token there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llava_lite.data.bad_samples import BadSampleError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}

Message = tuple[str, str]  # (role, content), role in ROLES


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


@dataclass
class EncodedConversation:
    """Token ids and labels of one conversation; ``turn_spans`` are the trained [start, end) ranges."""

    input_ids: list[int]
    labels: list[int]
    turn_spans: list[tuple[int, int]]


# ---- normalising LLaVA records --------------------------------------------------------
def normalize_conversation(
    conversations: Any, image_token: str = "<image>", has_image: bool = False
) -> list[Message]:
    """LLaVA ``conversations`` → validated ``(role, content)`` messages.

    Roles alternate user/assistant (after an optional leading system message) and end with
    the assistant. A leading assistant turn is dropped, as LLaVA's ``preprocess`` does (some
    ShareGPT records in ``llava_v1_5_mix665k.json`` open with a "gpt" turn). With an image,
    the first user turn carries exactly one ``image_token``, moved to the front and followed
    by a newline as LLaVA does ("<image>\\nquestion"); a record with an image but no marker
    gets one. Without an image, no marker may appear.
    """
    if not isinstance(conversations, list) or not conversations:
        raise BadSampleError("no_conversations", "'conversations' must be a non-empty list")
    messages: list[Message] = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadSampleError("no_conversations", f"turn {i} is not {{'from': ..., 'value': str}}")
        role = _ROLE_ALIASES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise BadSampleError("not_alternating", f"turn {i} has unknown speaker {turn.get('from')!r}")
        messages.append((role, turn["value"]))
    system = [messages.pop(0)] if messages[0][0] == "system" else []
    if messages and messages[0][0] == "assistant":
        messages.pop(0)
    if not any(role == "assistant" for role, _ in messages):
        raise BadSampleError("no_assistant_turn", "the conversation has no assistant ('gpt') turn")
    for i, (role, _) in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise BadSampleError(
                "not_alternating", f"turn {i + len(system)} is {role!r}, expected {expected!r}"
            )
    if len(messages) % 2:
        raise BadSampleError("not_alternating", "the conversation ends with a user turn")

    markers = sum(content.count(image_token) for _, content in messages)
    if has_image:
        if markers > 1:
            raise BadSampleError("image_token_mismatch", f"{markers} {image_token} markers for one image")
        if markers == 1 and image_token not in messages[0][1]:
            raise BadSampleError("image_token_mismatch", f"{image_token} is not in the first user turn")
        question = messages[0][1].replace(image_token, "").strip()
        messages[0] = ("user", f"{image_token}\n{question}")
    elif markers:
        raise BadSampleError("image_token_mismatch", f"{image_token} marker but the record has no image")
    return system + messages


# ---- templates --------------------------------------------------------------------------
def _lit(text: str | None) -> str:
    """A Jinja string literal (JSON string syntax is valid Jinja)."""
    return json.dumps(text or "")


def _jinja_prelude(image_token: str, default_system: str | None) -> str:
    """Jinja defining ``body(m)`` (a message's text) and ``system`` / ``turns``."""
    return (
        "{%- macro body(m) -%}{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
        "{%- for c in m['content'] if c['type'] == 'image' -%}{{ "
        + _lit(image_token + "\n")
        + " }}{%- endfor -%}"
        "{%- for c in m['content'] if c['type'] == 'text' -%}{{ c['text'] }}{%- endfor -%}"
        "{%- endif -%}{%- endmacro -%}"
        "{%- if messages[0]['role'] == 'system' -%}{%- set system = body(messages[0]) -%}"
        "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = " + _lit(default_system) + " -%}"
        "{%- set turns = messages -%}{%- endif -%}"
    )


class ChatTemplate:
    """Renders messages as segments; subclasses define one prompt format."""

    name: str = ""
    default_system: str | None = None
    uses_bos: bool = True  # prepend the tokenizer's BOS id when the tokenizer normally adds one

    def segments(
        self, messages: Sequence[Message], tokenizer: Any, add_generation_prompt: bool, image_token: str
    ) -> list[Segment]:
        raise NotImplementedError

    def stop_strings(self, tokenizer: Any) -> list[str]:
        """Token strings that end an assistant turn (generation stops there)."""
        return [tokenizer.eos_token] if tokenizer.eos_token else []

    def jinja(self, tokenizer: Any, image_token: str = "<image>") -> str | None:
        """A transformers chat template rendering exactly :meth:`segments`' text, or None.

        Message content may be a string or transformers' list of ``{"type": "image"}`` /
        ``{"type": "text"}`` parts (images first, each as ``"<image>\\n"``). Used for the
        ``chat_template`` of an exported llava-hf processor.
        """
        return None

    def _split_system(self, messages: Sequence[Message]) -> tuple[str | None, list[Message]]:
        if messages and messages[0][0] == "system":
            return messages[0][1], list(messages[1:])
        return self.default_system, list(messages)


class PlainTemplate(ChatTemplate):
    """Stage-1 alignment: ``<image>caption\\n``; the caption and its newline are trained.

    This is LLaVA's ``plain`` format (``conv_llava_plain``, separator ``"\\n"``): the
    instruction text is dropped, so the projector learns to map image features to a
    description, not to follow prompts. A text-only record keeps its question, followed by a
    newline, in place of the image. Generation stops at the newline (or EOS).
    """

    name = "plain"
    sep = "\n"

    def segments(self, messages, tokenizer, add_generation_prompt, image_token):
        _, turns = self._split_system(messages)
        expected = 1 if add_generation_prompt else 2
        if len(turns) != expected:
            raise BadSampleError(
                "not_alternating", f"the plain template takes one caption turn, got {len(turns)}"
            )
        question = turns[0][1]
        prompt = image_token if image_token in question else f"{question}\n"  # text-only: keep the question
        out = [Segment(prompt, False)]
        if not add_generation_prompt:
            out.append(Segment(turns[1][1] + self.sep, True))
        return out

    def stop_strings(self, tokenizer):
        """The token that ends ``"caption\\n"`` (the separator as it tokenises after text), then EOS."""
        newline = tokenizer.convert_ids_to_tokens(
            tokenizer("a" + self.sep, add_special_tokens=False).input_ids[-1]
        )
        return [newline, *super().stop_strings(tokenizer)]


class SeparatorTemplate(ChatTemplate):
    """``SYSTEM USER: q ASSISTANT: a</s>USER: ...`` (Vicuna v1, LLaVA v1 / v1.5)."""

    def __init__(self, name: str, system: str, user: str = "USER", assistant: str = "ASSISTANT") -> None:
        self.name, self.default_system, self.user, self.assistant = name, system, user, assistant

    def segments(self, messages, tokenizer, add_generation_prompt, image_token):
        system, turns = self._split_system(messages)
        out: list[Segment] = []
        prefix = f"{system} " if system else ""
        for i in range(0, len(turns), 2):
            prefix += f"{self.user}: {turns[i][1]} {self.assistant}:"
            out.append(Segment(prefix, False))
            prefix = ""
            if i + 1 < len(turns):
                out.append(Segment(f" {turns[i + 1][1]}{tokenizer.eos_token}", True))
        return out

    def jinja(self, tokenizer, image_token="<image>"):
        user, assistant = _lit(self.user + ": "), _lit(self.assistant + ": ")
        eos, prompt = _lit(tokenizer.eos_token), _lit(self.assistant + ":")
        return (
            _jinja_prelude(image_token, self.default_system)
            + "{%- if system -%}{{ system + ' ' }}{%- endif -%}{%- for m in turns -%}"
            + ("{%- if m['role'] == 'user' -%}{{ " + user + " + body(m) + ' ' }}")
            + ("{%- else -%}{{ " + assistant + " + body(m) + " + eos + " }}{%- endif -%}{%- endfor -%}")
            + ("{%- if add_generation_prompt -%}{{ " + prompt + " }}{%- endif -%}")
        )


class Llama2Template(ChatTemplate):
    """``[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\nq [/INST] a </s><s>[INST] q2 [/INST] a2 </s>``."""

    name = "llama_2"
    default_system = (
        "You are a helpful language and vision assistant. You are able to understand the visual content "
        "that the user provides, and assist the user with a variety of tasks using natural language."
    )

    def segments(self, messages, tokenizer, add_generation_prompt, image_token):
        system, turns = self._split_system(messages)
        out: list[Segment] = []
        for i in range(0, len(turns), 2):
            question = turns[i][1]
            if i == 0 and system:
                question = f"<<SYS>>\n{system}\n<</SYS>>\n\n{question}"
            bos = (tokenizer.bos_token or "") if i else ""  # the first BOS comes from the tokenizer
            out.append(Segment(f"{bos}[INST] {question} [/INST]", False))
            if i + 1 < len(turns):
                out.append(Segment(f" {turns[i + 1][1]} {tokenizer.eos_token}", True))
        return out

    def jinja(self, tokenizer, image_token="<image>"):
        bos, eos = _lit(tokenizer.bos_token), _lit(tokenizer.eos_token)
        return (
            _jinja_prelude(image_token, self.default_system)
            + "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
            "{%- if not loop.first -%}{{ " + bos + " }}{%- endif -%}"
            "{%- if loop.first and system -%}{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}"
            "{%- else -%}{{ '[INST] ' }}{%- endif -%}{{ body(m) + ' [/INST]' }}"
            "{%- else -%}{{ ' ' + body(m) + ' ' + " + eos + " }}{%- endif -%}{%- endfor -%}"
        )


class ChatMLTemplate(ChatTemplate):
    """``<|im_start|>role\\ncontent<|im_end|>\\n`` (Qwen, many instruct models)."""

    name = "chatml"
    default_system = "You are a helpful assistant."
    uses_bos = False

    def segments(self, messages, tokenizer, add_generation_prompt, image_token):
        system, turns = self._split_system(messages)
        text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        out: list[Segment] = []
        for i in range(0, len(turns), 2):
            text += f"<|im_start|>user\n{turns[i][1]}<|im_end|>\n<|im_start|>assistant\n"
            out.append(Segment(text, False))
            text = "\n"
            if i + 1 < len(turns):
                out.append(Segment(f"{turns[i + 1][1]}<|im_end|>", True))
        if not add_generation_prompt:
            out.append(Segment(text, False))  # the newline that closes the last turn, untrained
        return out

    def jinja(self, tokenizer, image_token="<image>"):
        return (
            _jinja_prelude(image_token, self.default_system)
            + "{%- if system -%}{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}{%- endif -%}"
            "{%- for m in turns -%}{{ '<|im_start|>' + m['role'] + '\\n' + body(m) + '<|im_end|>\\n' }}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
        )

    def stop_strings(self, tokenizer):
        return ["<|im_end|>"]


class TokenizerTemplate(ChatTemplate):
    """The tokenizer's own chat template (``tokenizer.apply_chat_template``).

    Turn boundaries come from rendering growing prefixes of the conversation: the text up
    to an answer is the rendering with ``add_generation_prompt=True`` of the messages before
    it, the text up to the end of the answer's turn is the rendering of the messages through
    it; both must be prefixes of the full rendering. Trailing spaces of a generation prompt
    are left to the answer (and stripped from prompts), as a model emits them with its first word.
    """

    name = "tokenizer"
    uses_bos = False  # chat templates write BOS into the text themselves

    def segments(self, messages, tokenizer, add_generation_prompt, image_token):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'tokenizer' needs a tokenizer with a chat_template")
        chats = [{"role": role, "content": content} for role, content in messages]

        def render(upto: int, generation_prompt: bool) -> str:
            return tokenizer.apply_chat_template(
                chats[:upto], tokenize=False, add_generation_prompt=generation_prompt
            )

        full = render(len(chats), add_generation_prompt)
        cuts: list[tuple[int, bool]] = []  # (char position, does the text before it get trained)
        for k, (role, _) in enumerate(messages):
            if role != "assistant":
                continue
            start, end = render(k, True), render(k + 1, False)
            for part in (start, end):
                if not full.startswith(part):
                    raise BadSampleError(
                        "label_mismatch", f"chat template prefix through turn {k} is not a prefix"
                    )
            # A prompt ending in a space ("[/INST] ") would split "▁word" pieces: the space goes with the answer.
            cuts += [(len(start.rstrip(" ")), False), (len(end.rstrip("\n")), True)]
        if add_generation_prompt:
            full = full.rstrip(" ")
        out, pos = [], 0
        for cut, trained in cuts:
            out.append(Segment(full[pos:cut], trained))
            pos = cut
        if pos < len(full):
            out.append(Segment(full[pos:], False))
        return [s for s in out if s.text]

    def jinja(self, tokenizer, image_token="<image>"):
        return getattr(tokenizer, "chat_template", None)

    def stop_strings(self, tokenizer):
        """The first token after an answer in the rendered template (e.g. ``<|eot_id|>``), then EOS."""
        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
        probe = "llava-lite-probe-answer"
        chats = [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}]
        tail = tokenizer.apply_chat_template(chats, tokenize=False).split(probe)[-1].strip()
        ids = tokenizer(tail, add_special_tokens=False).input_ids if tail else []
        if ids:
            first = tokenizer.convert_ids_to_tokens(ids[0])
            stops = [first] + [s for s in stops if s != first]
        return stops


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

TEMPLATES: dict[str, ChatTemplate] = {
    "plain": PlainTemplate(),
    "vicuna_v1": SeparatorTemplate("vicuna_v1", _VICUNA_SYSTEM),
    "llava_v1": SeparatorTemplate("llava_v1", _LLAVA_SYSTEM),
    "llama_2": Llama2Template(),
    "chatml": ChatMLTemplate(),
    "tokenizer": TokenizerTemplate(),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise KeyError(f"unknown conversation template {name!r}; valid: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


# ---- tokenisation -----------------------------------------------------------------------
def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of text by default (Llama: yes; GPT-2, Qwen: no)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos]


def _tokenize(tokenizer: Any, text: str, bos: list[int]) -> list[int]:
    return bos + tokenizer(text, add_special_tokens=False).input_ids


def encode_conversation(
    messages: Sequence[Message], tokenizer: Any, template: str | ChatTemplate, image_token: str = "<image>"
) -> EncodedConversation:
    """Token ids and labels for a whole conversation; labels are ``IGNORE_INDEX`` outside answers.

    Raises ``BadSampleError("label_mismatch")`` when a segment boundary does not fall on a
    token boundary, and ``BadSampleError("no_trained_tokens")`` when nothing is trained.
    """
    tpl = get_template(template) if isinstance(template, str) else template
    segments = tpl.segments(messages, tokenizer, add_generation_prompt=False, image_token=image_token)
    bos = [tokenizer.bos_token_id] if tpl.uses_bos and adds_bos(tokenizer) else []
    full_text = "".join(s.text for s in segments)
    input_ids = _tokenize(tokenizer, full_text, bos)
    labels = [IGNORE_INDEX] * len(input_ids)
    spans: list[tuple[int, int]] = []
    text, start = "", 0
    for i, seg in enumerate(segments):
        text += seg.text
        last = i == len(segments) - 1
        if not last and segments[i + 1].trained == seg.trained:
            continue  # only boundaries between trained and untrained text matter
        prefix = input_ids if last else _tokenize(tokenizer, text, bos)
        if input_ids[: len(prefix)] != prefix:
            raise BadSampleError(
                "label_mismatch",
                f"{tpl.name}: the text before segment {i + 1} does not end on a token boundary",
            )
        end = len(prefix)
        if seg.trained:
            if end <= start:
                raise BadSampleError("label_mismatch", f"{tpl.name}: an assistant turn tokenised to nothing")
            labels[start:end] = input_ids[start:end]
            spans.append((start, end))
        start = end
    if not spans:
        raise BadSampleError("no_trained_tokens", f"{tpl.name}: no assistant token to train on")
    return EncodedConversation(input_ids, labels, spans)


def prompt_for_generation(
    messages: Sequence[Message], tokenizer: Any, template: str | ChatTemplate, image_token: str = "<image>"
) -> list[int]:
    """Token ids of ``messages`` (ending with a user turn) followed by the assistant prefix."""
    tpl = get_template(template) if isinstance(template, str) else template
    if not messages or messages[-1][0] != "user":
        raise ValueError("a generation prompt must end with a user message")
    segments = tpl.segments(messages, tokenizer, add_generation_prompt=True, image_token=image_token)
    bos = [tokenizer.bos_token_id] if tpl.uses_bos and adds_bos(tokenizer) else []
    return _tokenize(tokenizer, "".join(s.text for s in segments), bos)


_WS = re.compile(r"\s+")


def approx_length(messages: Sequence[Message]) -> int:
    """A cheap length estimate in words, for grouping by length before anything is tokenised."""
    return sum(len(_WS.split(content.strip())) for _, content in messages)

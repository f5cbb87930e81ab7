"""Chat templates: the text of a conversation, split into trained and untrained segments.

Shared by the data layer (labels), the model layer (default stop tokens of ``generate``),
export (a Jinja ``chat_template`` and the stop tokens of llava-hf's generation config) and
chat. Depends only on a tokenizer, never on ``llava_lite.data`` or ``llava_lite.modeling``.

A template renders messages as :class:`Segment` s, each marked trained (an assistant answer
plus its end-of-turn token) or not (system prompt, user turns, role prefixes); the data
layer (``llava_lite.data.tokenize.encode_conversation``) turns them into token ids and
exact labels. Prompt strings equal the original LLaVA's character for character.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llava_lite.config import IMAGE_TOKEN, VIDEO_TOKEN

ROLES = ("system", "user", "assistant")
Message = tuple[str, str]  # (role, content), role in ROLES


class TemplateError(ValueError):
    """Messages a template cannot render; ``reason`` is a bad-sample reason the data layer reuses."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.reason, str(self)))


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


# ---- templates --------------------------------------------------------------------------
def _lit(text: str | None) -> str:
    """A Jinja string literal (JSON string syntax is valid Jinja)."""
    return json.dumps(text or "")


def _jinja_prelude(image_token: str, default_system: str | None, video_token: str = VIDEO_TOKEN) -> str:
    """Jinja defining ``body(m)`` (a message's text) and ``system`` / ``turns``."""
    return (
        "{%- macro body(m) -%}{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
        "{%- for c in m['content'] if c['type'] == 'image' -%}{{ "
        + _lit(image_token + "\n")
        + " }}{%- endfor -%}"
        "{%- for c in m['content'] if c['type'] == 'video' -%}{{ "
        + _lit(video_token + "\n")
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
    markers: tuple[str, ...] = ()  # text of the format that reads as a turn boundary, e.g. "[/INST]"

    def segments(
        self, messages: Sequence[Message], tokenizer: Any, add_generation_prompt: bool, image_token: str
    ) -> list[Segment]:
        raise NotImplementedError

    def stop_strings(self, tokenizer: Any) -> list[str]:
        """Token strings that end an assistant turn (generation stops there)."""
        return [tokenizer.eos_token] if tokenizer.eos_token else []

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids of :meth:`stop_strings`: the default end of ``generate`` under this template."""
        return [int(tokenizer.convert_tokens_to_ids(s)) for s in self.stop_strings(tokenizer)]

    def reserved_text(self, tokenizer: Any) -> list[str]:
        """Strings that message text must not spell: every token the tokenizer splits out whole
        (special and added tokens, ``</s>``, ``<|im_end|>``) and this template's own markers."""
        added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
        found = [*tokenizer.all_special_tokens, *added, *self.markers]
        return list(dict.fromkeys(t for t in found if t))

    def jinja(
        self, tokenizer: Any, image_token: str = IMAGE_TOKEN, video_token: str = VIDEO_TOKEN
    ) -> str | None:
        """A transformers chat template rendering exactly :meth:`segments`' text, or None.

        Message content may be a string or transformers' list of ``{"type": "image"}`` /
        ``{"type": "video"}`` / ``{"type": "text"}`` parts (images first, each as
        ``"<image>\\n"``, then videos, each as ``"<video>\\n"``). Used for the
        ``chat_template`` of an exported llava-hf processor.
        """
        return None

    def bos_ids(self, tokenizer: Any, text: str) -> list[int]:
        """The ids before the tokens of ``text`` (a rendering of this template): the tokenizer's
        BOS where this template uses one (:attr:`uses_bos`) and the tokenizer adds one (Llama:
        yes; GPT-2, Qwen: no). Never trained: labels start after it."""
        return [tokenizer.bos_token_id] if self.uses_bos and adds_bos(tokenizer) else []

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
            raise TemplateError(
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

    def jinja(self, tokenizer, image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN):
        user, assistant = _lit(self.user + ": "), _lit(self.assistant + ": ")
        eos, prompt = _lit(tokenizer.eos_token), _lit(self.assistant + ":")
        return (
            _jinja_prelude(image_token, self.default_system, video_token)
            + "{%- if system -%}{{ system + ' ' }}{%- endif -%}{%- for m in turns -%}"
            + ("{%- if m['role'] == 'user' -%}{{ " + user + " + body(m) + ' ' }}")
            + ("{%- else -%}{{ " + assistant + " + body(m) + " + eos + " }}{%- endif -%}{%- endfor -%}")
            + ("{%- if add_generation_prompt -%}{{ " + prompt + " }}{%- endif -%}")
        )


class Llama2Template(ChatTemplate):
    """``[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\nq [/INST] a </s><s>[INST] q2 [/INST] a2 </s>``."""

    name = "llama_2"
    markers = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")
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

    def jinja(self, tokenizer, image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN):
        bos, eos = _lit(tokenizer.bos_token), _lit(tokenizer.eos_token)
        return (
            _jinja_prelude(image_token, self.default_system, video_token)
            + "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
            "{%- if not loop.first -%}{{ " + bos + " }}{%- endif -%}"
            "{%- if loop.first and system -%}{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}"
            "{%- else -%}{{ '[INST] ' }}{%- endif -%}{{ body(m) + ' [/INST]' }}"
            "{%- else -%}{{ ' ' + body(m) + ' ' + " + eos + " }}{%- endif -%}{%- endfor -%}"
        )


class ChatMLTemplate(ChatTemplate):
    """``<|im_start|>role\\ncontent<|im_end|>\\n`` (Qwen, many instruct models)."""

    name = "chatml"
    markers = ("<|im_start|>", "<|im_end|>")
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

    def jinja(self, tokenizer, image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN):
        return (
            _jinja_prelude(image_token, self.default_system, video_token)
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
    uses_bos = True  # where transformers' processor adds it: see bos_ids

    def bos_ids(self, tokenizer, text):
        """BOS unless ``text`` starts with the BOS text, as transformers' processor adds it.

        ``processor.apply_chat_template(tokenize=True)`` encodes the rendering with special
        tokens unless it starts with ``bos_token`` (a template writing ``{{ bos_token }}``), so
        a llava-hf chat template, which carries no BOS (ours exported), gets the tokenizer's BOS
        from the processor, as in the model cards' ``processor(text=prompt, images=...)``: these
        ids equal the built-in template's. transformers' *tokenizer* ``apply_chat_template``
        never adds BOS; where the two part (a BOS-adding tokenizer and a template without BOS,
        e.g. our chatml exported with a Llama tokenizer) we follow the processor.
        """
        bos = tokenizer.bos_token
        if bos and text.startswith(bos):
            return []
        return [tokenizer.bos_token_id] if adds_bos(tokenizer) else []

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
                    raise TemplateError(
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

    def jinja(self, tokenizer, image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN):
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


def tokenize_text(tokenizer: Any, text: str, bos: list[int]) -> list[int]:
    """``bos`` followed by the ids of ``text``, tokenised without the tokenizer's own specials."""
    return bos + tokenizer(text, add_special_tokens=False).input_ids


def tokenize_texts(tokenizer: Any, texts: Sequence[str], bos: list[int]) -> list[list[int]]:
    """``tokenize_text`` of each of ``texts`` in one call: a fast tokenizer encodes a batch in
    Rust at once, where one call per text spends most of its time in Python."""
    return [bos + ids for ids in tokenizer(list(texts), add_special_tokens=False).input_ids]


def prompt_for_generation(
    messages: Sequence[Message], tokenizer: Any, template: str | ChatTemplate, image_token: str = IMAGE_TOKEN
) -> list[int]:
    """Token ids of ``messages`` (ending with a user turn) followed by the assistant prefix."""
    tpl = get_template(template) if isinstance(template, str) else template
    if not messages or messages[-1][0] != "user":
        raise ValueError("a generation prompt must end with a user message")
    segments = tpl.segments(messages, tokenizer, add_generation_prompt=True, image_token=image_token)
    text = "".join(s.text for s in segments)
    return tokenize_text(tokenizer, text, tpl.bos_ids(tokenizer, text))

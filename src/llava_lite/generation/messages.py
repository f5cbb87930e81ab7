"""The Messages API wire format of a teacher request: building the body, parsing the reply.

One body serves every path: live calls, Message Batches ``params``, the cache key and the
dry-run token estimate, so what is hashed and estimated is exactly what is sent.

Structured replies come from a forced tool call (``tool_choice`` names the tool), read by
:func:`llava_lite.claude.replies.read_reply` (stop reasons, one call, text fallback); when a
reply carries text instead, it is read as JSON, then as the paper's
``Question: ... === Answer: ...`` layout. Anything else is a :class:`TeacherError`, as is
a call with an empty list of turns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llava_lite.claude.replies import read_reply
from llava_lite.generation.base import GenerationRequest, TeacherError
from llava_lite.generation.prompts import PromptSet
from llava_lite.symbolic import SymbolicContext

TURNS_TOOL: dict[str, Any] = {
    "name": "record_turns",
    "description": "Record the question-answer turns written about the image, in order.",
    "input_schema": {
        "type": "object",
        "properties": {
            "turns": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                    "required": ["question", "answer"],
                },
            }
        },
        "required": ["turns"],
    },
}
DESCRIPTION_TOOL: dict[str, Any] = {
    "name": "record_description",
    "description": "Record the detailed description written about the image.",
    "input_schema": {
        "type": "object",
        "properties": {"description": {"type": "string"}},
        "required": ["description"],
    },
}


@dataclass
class ContextOptions:
    """Which parts of the symbolic context a response type is shown."""

    captions: bool = True
    boxes: bool = True


# The paper: captions only for conversations; captions + boxes for detail and reasoning.
PAPER_CONTEXT = {
    "conversation": ContextOptions(captions=True, boxes=False),
    "detail": ContextOptions(captions=True, boxes=True),
    "complex_reasoning": ContextOptions(captions=True, boxes=True),
}


def tool_for(response_type: str) -> dict[str, Any]:
    return DESCRIPTION_TOOL if response_type == "detail" else TURNS_TOOL


def render_user_message(
    context: SymbolicContext, options: ContextOptions, instruction: str | None = None
) -> str:
    text = context.render(captions=options.captions, boxes=options.boxes)
    if not text.strip():
        raise ValueError(
            f"image {context.image_id} ({context.file_name}): empty symbolic context "
            f"(captions={options.captions}, boxes={options.boxes})"
        )
    message = f"<image_description>\n{text}\n</image_description>"
    if instruction:
        message += f'\n\nThe person asks: "{instruction}"'
    return message


def few_shot_block(prompts: PromptSet, options: ContextOptions) -> str:
    """The few-shot examples as one text block: part of the cached shared prefix."""
    parts = ["Examples of requests and the exact tool input expected for each:"]
    for i, ex in enumerate(prompts.examples, 1):
        context = ex.context.render(captions=options.captions, boxes=options.boxes)
        reply = json.dumps(ex.response, ensure_ascii=False, indent=1)
        parts.append(
            f'<example index="{i}">\n<image_description>\n{context}\n</image_description>\n'
            f"<tool_input>\n{reply}\n</tool_input>\n</example>"
        )
    return "\n\n".join(parts)


def build_request_body(
    request: GenerationRequest,
    prompts: PromptSet,
    model: str,
    max_tokens: int,
    options: ContextOptions,
    examples_text: str,
    prompt_caching: bool = True,
) -> dict[str, Any]:
    """A complete ``messages.create`` body (also a Message Batches ``params``).

    The system prompt and the few-shot block are identical for every request of a type, so a
    ``cache_control`` breakpoint on the last system block caches tools + system + examples.
    ``examples_text`` is ``few_shot_block(prompts, options)``, which the teacher renders once
    per type.
    """
    if request.response_type != prompts.response_type:
        raise ValueError(f"request is {request.response_type!r} but prompts are {prompts.response_type!r}")
    tool = tool_for(request.response_type)
    examples: dict[str, Any] = {"type": "text", "text": examples_text}
    if prompt_caching:
        examples["cache_control"] = {"type": "ephemeral"}
    return {
        "model": model,
        "max_tokens": max_tokens,
        "system": [{"type": "text", "text": prompts.system}, examples],
        "messages": [
            {"role": "user", "content": render_user_message(request.context, options, request.instruction)}
        ],
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": tool["name"]},
    }


def parse_reply(message: dict[str, Any], request: GenerationRequest) -> list[tuple[str, str]]:
    """Turn a Messages API reply (as a JSON dict) into (question, answer) turns, or raise."""
    content = read_reply(message, tool_for(request.response_type)["name"], error=TeacherError)
    if content.called:
        return _turns_from_structured(content.tool_input, request)
    text = content.text
    structured = _json_in_text(text)
    if structured is not None:
        return _turns_from_structured(structured, request)
    if request.response_type == "detail":
        return [(_detail_question(request), text)]
    turns = parse_qa_layout(text)
    if not turns:
        raise TeacherError("unparseable", "neither a tool call, JSON, nor the Question/Answer layout")
    return turns


_QA_MARKER = re.compile(r"^[=\s]*(question|answer)\s*:\s*", re.IGNORECASE | re.MULTILINE)


def parse_qa_layout(text: str) -> list[tuple[str, str]]:
    """Parse ``Question: ... === Answer: ... ===`` (the paper's layout) into turns.

    Raises ``TeacherError("unparseable")`` when questions and answers do not pair up.
    """
    markers = list(_QA_MARKER.finditer(text))
    turns: list[tuple[str, str]] = []
    question: str | None = None
    for i, m in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        body = re.sub(r"\n\s*={3,}\s*$", "", text[m.end() : end].strip()).strip()
        if m.group(1).lower() == "question":
            if question is not None:
                raise TeacherError("unparseable", "two questions in a row")
            question = body
        else:
            if question is None:
                raise TeacherError("unparseable", "an answer without a question")
            turns.append((question, body))
            question = None
    if question is not None:
        raise TeacherError("unparseable", "a question without an answer")
    return turns


def _detail_question(request: GenerationRequest) -> str:
    if not request.instruction:
        raise ValueError(f"detail request for image {request.context.image_id} has no instruction")
    return request.instruction


def _turns_from_structured(data: Any, request: GenerationRequest) -> list[tuple[str, str]]:
    if not isinstance(data, dict):
        raise TeacherError("malformed_reply", f"tool input is {type(data).__name__}, not an object")
    if request.response_type == "detail":
        description = data.get("description")
        if not isinstance(description, str):
            raise TeacherError("malformed_reply", "no 'description' string")
        return [(_detail_question(request), description)]
    turns = data.get("turns")
    if not isinstance(turns, list) or not turns:
        raise TeacherError("malformed_reply", "no non-empty 'turns' list")
    out = []
    for t in turns:
        if not (
            isinstance(t, dict) and isinstance(t.get("question"), str) and isinstance(t.get("answer"), str)
        ):
            raise TeacherError("malformed_reply", "a turn without 'question' and 'answer' strings")
        out.append((t["question"], t["answer"]))
    return out


def _json_in_text(text: str) -> Any | None:
    """JSON given as text (bare or in a ```json fence), else None."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    candidate = fenced.group(1) if fenced else text
    candidate = candidate.strip()
    if not candidate.startswith(("{", "[")):
        return None
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError:
        return None
    if isinstance(data, list):  # a bare list of turns
        data = {"turns": data}
    return data

"""GPT-assisted instruction data: a text-only teacher writes LLaVA samples from captions and boxes.

Modules, in the order data flows through them: ``prompts`` (versioned system + few-shot
files over the symbolic context of :mod:`llava_lite.symbolic`), ``messages`` (request body,
reply parsing), ``teacher`` (Claude through :mod:`llava_lite.claude`; ``offline`` holds the
rule-based teacher), ``batches`` (Message Batches mode), ``validation``, ``pipeline`` (the
resumable run) and ``settings`` (its typed config). ``base`` holds the request and reply
types and the :class:`Teacher` / :class:`PaidTeacher` interfaces the pipeline talks to.
Heavy imports stay in those modules, so importing this package (as the offline teacher
does) is cheap.
"""

from llava_lite.generation.base import (
    RESPONSE_TYPES,
    GenerationRequest,
    PaidTeacher,
    Teacher,
    TeacherError,
    TeacherReply,
    Usage,
)

__all__ = [
    "RESPONSE_TYPES",
    "GenerationRequest",
    "PaidTeacher",
    "Teacher",
    "TeacherError",
    "TeacherReply",
    "Usage",
]

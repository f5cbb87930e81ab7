"""GPT-assisted instruction data: a text-only teacher writes LLaVA samples from captions and boxes.

Modules, in the order data flows through them: ``prompts`` (versioned system + few-shot
files over the symbolic context of :mod:`llava_lite.symbolic`), ``messages`` (request body,
reply parsing), ``teacher`` (Claude through :mod:`llava_lite.claude`, the built-in teacher),
``batches`` (Message Batches mode), ``validation``, ``pipeline`` (the resumable run) and
``settings`` (its typed config). ``base`` holds the request and reply types and the
:class:`Teacher` / :class:`PaidTeacher` interfaces the pipeline talks to. Any other teacher
(a rule-based one written beside its data, say) is named in config by ``_target_``
(``conf/teacher/``) and built with ``hydra.utils.instantiate``: this package imports no
teacher's home. Heavy imports stay in those modules, so importing this package (as such a
teacher does, for the interfaces) is cheap.
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

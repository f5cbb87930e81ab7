"""GPT-assisted instruction data: a text-only teacher writes LLaVA samples from captions and boxes.

Modules, in the order data flows through them: ``symbolic`` (COCO → context), ``prompts``
(versioned system + few-shot files), ``messages`` (request body, reply parsing), ``teacher``
(Claude via ``AsyncAnthropic``; ``offline`` holds the rule-based teacher), ``cache``
(paid replies, batch ids), ``batches`` (Message Batches mode), ``validation``, ``cost`` and
``estimate`` (dollars, budget, tiktoken dry run), ``pipeline`` (the resumable run) and
``settings`` (its typed config). Heavy imports stay in those modules, so importing this
package (as the offline teacher does) is cheap.
"""

from llava_lite.generation.base import (
    RESPONSE_TYPES,
    GenerationRequest,
    Teacher,
    TeacherError,
    TeacherReply,
    Usage,
)

__all__ = ["RESPONSE_TYPES", "GenerationRequest", "Teacher", "TeacherError", "TeacherReply", "Usage"]

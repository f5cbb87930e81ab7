"""The small interface every teacher implements (Claude, offline rules, recorded replies).

The pipeline owns everything around a teacher (prompt versions, validation, output); a
:class:`Teacher` only turns one request into question/answer turns or raises. A teacher that
pays for its replies is also a :class:`PaidTeacher`: the pipeline checks its model before any
paid work, hands it the run's request cache, asks what each request shows and costs, may
buy replies in batches through it, reads what it bought, and closes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llava_lite.claude.prices import Budget, Prices, Usage
from llava_lite.claude.replies import ReplyError
from llava_lite.symbolic import SymbolicContext

if TYPE_CHECKING:
    from llava_lite.claude.cache import RequestCache
    from llava_lite.claude.estimate import TokenEstimator

RESPONSE_TYPES = ("conversation", "detail", "complex_reasoning")
# The one teacher chosen by name (Claude); any other is named by a config `_target_` (conf/teacher/),
# so this package never has to know the packages teachers come from.
BUILT_IN_TEACHER = "anthropic"
TARGET_KEY = "_target_"
TARGET_SETTING = f"teacher.{TARGET_KEY}"


@dataclass
class BatchSettings:
    """How a paid teacher buys replies in Message Batches (``batch`` in ``conf/generate.yaml``)."""

    enabled: bool = False
    max_requests_per_batch: int = 10_000
    poll_interval_s: float = 30.0
    max_wait_s: float = 26 * 3600.0
    max_rounds: int = 3  # resubmissions of errored / expired requests


@dataclass
class BatchStats:
    """What buying in Message Batches did (summed into the run summary's ``batch``)."""

    submitted: int = 0
    succeeded: int = 0
    batches: int = 0
    unfinished: Counter[str] = field(default_factory=Counter)  # errored / expired / ... / missing: requeued
    skipped_results: Counter[str] = field(default_factory=Counter)  # malformed_line / unknown_id / duplicate
    budget_stopped: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    context: SymbolicContext
    response_type: str  # one of RESPONSE_TYPES
    sample_index: int = 0  # several samples of one type per image get different indices
    instruction: str | None = None  # the fixed question for "detail" (drawn by the pipeline)
    attempt: int = 0  # retries after a rejected reply are new requests with their own cache key
    max_tokens: int | None = None  # None: the teacher's; raised on a retry after a max_tokens cut


@dataclass
class TeacherReply:
    turns: list[tuple[str, str]]  # (question, answer) pairs, in order; no "<image>" marker
    model: str
    usage: Usage = field(default_factory=Usage)
    raw: str | None = None
    cached: bool = False  # replayed from the request cache: already paid for, costs nothing now
    batch: bool = False  # paid at the Message Batches discount


class TeacherError(ReplyError):
    """A reply that is not data (refusal, cut by max_tokens, unparseable); ``reason`` is counted."""

    def __init__(
        self,
        reason: str,
        message: str = "",
        usage: Usage | None = None,
        cached: bool = False,
        batch: bool = False,
    ) -> None:
        super().__init__(reason, message)
        self.usage = usage or Usage()  # a refused or truncated reply is still billed
        self.cached = cached
        self.batch = batch


class Teacher(Protocol):
    name: str

    async def generate(self, request: GenerationRequest) -> TeacherReply: ...


@runtime_checkable
class PaidTeacher(Teacher, Protocol):
    """A teacher that pays for replies (:class:`~llava_lite.generation.teacher.ClaudeTeacher`)."""

    prompt_version: str
    prices: Prices
    paid_requests: int  # replies bought one by one this run
    cache_hits: int  # replies replayed from earlier runs
    batch_replies: int  # replies bought in Message Batches this run (read back from the cache)
    usage: Usage  # billed tokens of this run
    budget: Budget
    cache: RequestCache | None

    @property
    def estimator(self) -> TokenEstimator: ...

    def body(self, request: GenerationRequest) -> dict[str, Any]: ...

    def key(self, request: GenerationRequest, body: dict[str, Any]) -> str: ...

    def worst_case_usd(self, body: dict[str, Any], batch: bool = False) -> float: ...

    def shows(self, context: SymbolicContext, response_type: str) -> bool:
        """Whether the parts of ``context`` this type is shown are non-empty."""
        ...

    async def check_model(self) -> str: ...

    def use_cache(self, cache: RequestCache) -> None: ...

    async def fill_by_batches(self, requests: list[GenerationRequest], settings: BatchSettings) -> BatchStats:
        """Buy stored replies for ``requests`` in Message Batches; later calls only replay them."""
        ...

    async def aclose(self) -> None: ...


def check_target(spec: Mapping[str, Any], setting: str = TARGET_SETTING) -> None:
    """Refuse, in one line naming the setting, a node whose ``_target_`` is not a dotted path."""
    target = spec.get(TARGET_KEY)
    if not isinstance(target, str) or not target.strip() or any(not part for part in target.split(".")):
        raise ValueError(
            f"{setting}={target!r}: must be the dotted path of a class or function "
            "(e.g. mypackage.teachers.MyTeacher)"
        )


def built_from_target(spec: Mapping[str, Any], setting: str = TARGET_SETTING, **kwargs: Any) -> Any:
    """What a config node names by ``_target_``, built with ``hydra.utils.instantiate`` (the node's
    other keys, then ``kwargs``, are its arguments). A target that cannot be imported or refuses
    its arguments is one error line naming ``setting``."""
    check_target(spec, setting)
    from hydra.utils import instantiate  # only runs that build from config pay for it

    try:
        return instantiate({"_convert_": "all", **spec}, **kwargs)
    except Exception as e:
        raise ValueError(f"{setting}={spec[TARGET_KEY]!r}: {_root_cause(e)}") from e


def teacher_from_target(spec: Mapping[str, Any], **kwargs: Any) -> Teacher:
    """The teacher a config node names by ``_target_`` (:func:`built_from_target`); something that
    is not a teacher is one error line naming the setting."""
    teacher = built_from_target(spec, TARGET_SETTING, **kwargs)
    generate = getattr(teacher, "generate", None)
    if not isinstance(getattr(teacher, "name", None), str) or not callable(generate):
        raise ValueError(
            f"{TARGET_SETTING}={spec[TARGET_KEY]!r} built a {type(teacher).__name__}, not a teacher "
            "(one needs a str `name` and an async `generate(request)`)"
        )
    return teacher


def _root_cause(err: BaseException) -> str:
    """The first line of the innermost cause: what Hydra's wrapping says last is what went wrong."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__

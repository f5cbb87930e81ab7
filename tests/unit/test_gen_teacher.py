"""ClaudeTeacher against a local server speaking the Messages API, through the real AsyncAnthropic client."""

import logging
import warnings
from dataclasses import replace

import pytest

from api_helpers import TEST_PRICES, claude_teacher, generate_once
from llava_lite.claude.client import ApiFatalError
from llava_lite.claude.prices import PRICES, Budget, BudgetExceeded, Prices
from llava_lite.claude.settings import DEFAULT_MODEL
from llava_lite.generation.base import GenerationRequest, TeacherError, TeacherReply
from llava_lite.generation.pipeline import GenerationPipeline
from llava_lite.generation.settings import settings_from
from llava_lite.generation.teacher import ClaudeTeacher, build_teacher
from llava_lite.symbolic import ObjectBox, SymbolicContext

KEY = "sk-ant-test-DO-NOT-LEAK-7f3a9c"
CTX = SymbolicContext(
    image_id=3,
    file_name="000000000003.jpg",
    width=640,
    height=480,
    captions=("A red bus waits at a stop.", "People board a city bus."),
    objects=(ObjectBox("bus", (0.1, 0.2, 0.9, 0.8)),),
)
REQUEST = GenerationRequest(context=CTX, response_type="conversation")


def _teacher(api, tmp_path, **kw):
    return claude_teacher(api, tmp_path, KEY, **{"max_retries": 3, **kw})


def _generate(teacher, request=REQUEST):
    return generate_once(teacher, request)


def test_success_then_replayed_from_cache_without_paying(api, tmp_path):
    teacher = _teacher(api, tmp_path)
    reply = _generate(teacher)
    assert len(reply.turns) == 2 and not reply.cached and reply.model == "claude-test"
    assert reply.usage.cache_creation_input_tokens > 0  # the shared prefix was written to the prompt cache
    sent = api.calls(status=200)[0]["body"]
    assert sent["tool_choice"] == {"type": "tool", "name": "record_turns"}
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert teacher.paid_requests == 1 and teacher.budget.spent_usd > 0
    again = _generate(_teacher(api, tmp_path))
    assert again.cached and again.turns == reply.turns
    assert len(api.calls()) == 1


def test_prompt_cache_read_on_the_second_request(api, tmp_path):
    teacher = _teacher(api, tmp_path, cache=None)
    _generate(teacher)
    second = _generate(
        _teacher(api, tmp_path, cache=None), GenerationRequest(CTX, "conversation", sample_index=1)
    )
    assert second.usage.cache_read_input_tokens > 0 and second.usage.cache_creation_input_tokens == 0


def test_429_and_529_are_retried_by_the_sdk(api, tmp_path):
    api.script.extend([{"status": 429}, {"status": 529}])
    reply = _generate(_teacher(api, tmp_path))
    assert reply.turns
    assert [c["status"] for c in api.calls()] == [429, 529, 200]


def test_500_after_the_retry_cap_is_a_counted_failure(api, tmp_path):
    api.script.extend([{"status": 500}] * 5)
    teacher = _teacher(api, tmp_path, max_retries=2)
    with pytest.raises(TeacherError) as err:
        _generate(teacher)
    assert err.value.reason == "api_status_500"
    assert len(api.calls()) == 3  # first try + 2 retries, then stop
    assert teacher.budget.reserved_usd == 0 and teacher.budget.spent_usd == 0
    assert teacher.paid_requests == 0


@pytest.mark.parametrize(
    "behaviour",
    [
        {"raw": b"this is not json"},
        {"raw": b"<html>bad gateway</html>", "content_type": "text/html"},
        {"raw": b'{"unexpected": true}'},
    ],
)
def test_malformed_body_is_a_failure_not_data(api, tmp_path, behaviour):
    api.script.append(behaviour)
    teacher = _teacher(api, tmp_path)
    with pytest.raises(TeacherError) as err:
        _generate(teacher)
    assert err.value.reason == "api_bad_response"
    assert len(teacher.cache) == 0


def test_thinking_block_before_text_is_skipped(api, tmp_path):
    text = "Question: What vehicle is shown?\n===\nAnswer: A red city bus.\n===\nQuestion: What are people doing?\n===\nAnswer: Boarding it."
    api.script.append(
        {
            "content": [
                {
                    "type": "thinking",
                    "thinking": "Question: not this\n===\nAnswer: nor this",
                    "signature": "sig",
                },
                {"type": "text", "text": text},
            ],
            "stop_reason": "end_turn",
        }
    )
    reply = _generate(_teacher(api, tmp_path))
    assert reply.turns == [
        ("What vehicle is shown?", "A red city bus."),
        ("What are people doing?", "Boarding it."),
    ]


@pytest.mark.parametrize("stop", ["max_tokens", "refusal"])
def test_cut_or_refused_reply_is_an_error_and_still_paid_once(api, tmp_path, stop):
    api.script.append({"stop_reason": stop})
    teacher = _teacher(api, tmp_path)
    with pytest.raises(TeacherError) as err:
        _generate(teacher)
    assert err.value.reason == stop and err.value.usage.output_tokens > 0
    assert teacher.paid_requests == 1 and teacher.budget.spent_usd > 0
    with pytest.raises(TeacherError) as again:
        _generate(_teacher(api, tmp_path))
    assert again.value.reason == stop and again.value.cached
    assert len(api.calls()) == 1  # the rerun replayed the stored reply


def test_budget_refuses_a_request_before_sending_it(api, tmp_path):
    teacher = _teacher(api, tmp_path, budget=Budget(0.001), prices=Prices())
    with pytest.raises(BudgetExceeded):
        _generate(teacher)
    assert api.calls() == []


def test_authentication_error_stops_instead_of_being_counted(api, tmp_path):
    api.script.append({"status": 401})
    with pytest.raises(ApiFatalError, match="api_status_401"):
        _generate(_teacher(api, tmp_path))


def test_key_never_appears_in_logs_or_cache(api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    api.script.extend([{"status": 429}, {"stop_reason": "refusal"}])
    teacher = _teacher(api, tmp_path)
    with pytest.raises(TeacherError):
        _generate(teacher)
    assert len(caplog.records) > 0
    assert KEY not in caplog.text
    assert all(KEY.encode() not in p.read_bytes() for p in tmp_path.iterdir())


class _Echo:
    """A teacher from outside the library, as a config's ``_target_`` names one."""

    def __init__(self, greeting: str, repeat: int = 1) -> None:
        self.name = "echo"
        self.greeting, self.repeat = greeting, repeat

    async def generate(self, request: GenerationRequest) -> TeacherReply:
        return TeacherReply(turns=[(self.greeting, self.greeting * self.repeat)], model="echo")


ECHO = f"{__name__}._Echo"


def test_build_teacher_by_name_or_by_target():
    assert isinstance(build_teacher("anthropic", model="claude-test", prices=TEST_PRICES), ClaudeTeacher)
    echo = build_teacher({"_target_": ECHO, "greeting": "hi"}, repeat=2)
    assert isinstance(echo, _Echo) and (echo.greeting, echo.repeat) == ("hi", 2)
    with pytest.raises(KeyError, match=r"valid names: \['anthropic'\].*_target_"):
        build_teacher("offline")  # no longer a name: teacher=offline names it by _target_


@pytest.mark.parametrize(
    "spec, says",
    [
        ({"_target_": "llava_lite.no_such_module.Teacher"}, "No module named 'llava_lite.no_such_module'"),
        ({"_target_": ECHO}, "TypeError: .*greeting"),  # a missing argument
        ({"_target_": ECHO, "greeting": "hi", "colour": "red"}, "unexpected keyword argument 'colour'"),
        ({"_target_": "collections.Counter"}, "built a Counter, not a teacher"),
        ({"_target_": f"{__name__}.ECHO"}, "Expected a callable target"),  # not a class or function
        ({"_target_": ""}, "must be the dotted path"),
        ({"_target_": 3}, "must be the dotted path"),
    ],
)
def test_a_bad_target_is_one_line_naming_the_setting(spec, says):
    with pytest.raises(ValueError, match=says) as caught:
        build_teacher(spec)
    message = str(caught.value)
    assert message.startswith("teacher._target_=") and "\n" not in message


def test_settings_take_a_target_node_whole_and_refuse_the_old_name_form(tmp_path):
    settings = settings_from({"captions_file": "c.json", "teacher": {"_target_": ECHO, "greeting": "hi"}})
    assert settings.teacher.target == {"_target_": ECHO, "greeting": "hi"}
    assert settings.teacher.name == "anthropic" and settings.teacher.concurrency == 8  # the run's defaults
    pipeline = GenerationPipeline(replace(settings, output_dir=str(tmp_path)))
    assert isinstance(pipeline.teacher, _Echo) and pipeline.paid is None
    assert settings_from({"captions_file": "c.json"}).teacher.target is None  # Claude, the default
    with pytest.raises(ValueError, match=r"teacher.name='offline'.*teacher=offline") as caught:
        settings_from({"captions_file": "c.json", "teacher": {"name": "offline"}})
    assert "\n" not in str(caught.value)


def test_the_default_model_is_priced_and_raises_no_deprecation_warning(api, tmp_path):
    teacher = ClaudeTeacher(client_kwargs={"api_key": KEY, "base_url": api.url})  # no prices: the table's
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the SDK warns when it sends a deprecated id
        assert generate_once(teacher, REQUEST).turns
    assert api.calls()[0]["body"]["model"] == DEFAULT_MODEL and teacher.prices == PRICES[DEFAULT_MODEL]

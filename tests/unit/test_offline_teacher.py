"""The synthetic world's offline teacher writes true, varied, deterministic replies from the symbolic
context only, and the shipped ``teacher=offline`` config builds it."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest
from omegaconf import OmegaConf

from llava_lite.generation.base import RESPONSE_TYPES, GenerationRequest, Teacher, TeacherError
from llava_lite.generation.teacher import build_teacher
from llava_lite.hydra_conf import config_dir
from llava_lite.symbolic import load_coco
from llava_lite.synthetic import OfflineTeacher, build_world, load_scenes
from llava_lite.synthetic.checker import check_turns
from llava_lite.synthetic.questions import DETAIL_INSTRUCTIONS, SHORT_ANSWER_PROMPT, WORDINGS
from llava_lite.synthetic.teacher import OfflineTeacher as FromItsModule


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    return build_world(
        tmp_path_factory.mktemp("world"), n_train=60, n_val=0, n_test=0, image_size=96, seed=11
    )


@pytest.fixture(scope="module")
def contexts(world):
    return load_coco(world.captions("train"), world.instances("train"))


def _reply(teacher: OfflineTeacher, request: GenerationRequest):
    return asyncio.run(teacher.generate(request))


def _request(ctx, response_type: str, index: int = 0) -> GenerationRequest:
    instruction = DETAIL_INSTRUCTIONS[index % len(DETAIL_INSTRUCTIONS)] if response_type == "detail" else None
    return GenerationRequest(ctx, response_type, index, instruction)


def test_it_is_a_teacher() -> None:
    teacher: Teacher = OfflineTeacher()
    assert teacher.name == "offline" and OfflineTeacher is FromItsModule


def test_the_shipped_config_builds_it_with_its_arguments() -> None:
    spec = OmegaConf.to_container(OmegaConf.load(config_dir("generate") / "teacher" / "offline.yaml"))
    assert isinstance(spec, dict)
    teacher = build_teacher({**spec, "seed": 4, "short_answer_rate": 0.25})
    assert isinstance(teacher, OfflineTeacher)
    assert (teacher.seed, teacher.short_answer_rate) == (4, 0.25)


@pytest.mark.parametrize("response_type", RESPONSE_TYPES)
def test_answers_agree_with_annotations(world, contexts, response_type: str) -> None:
    truth = {s.image_id: s for s in load_scenes(world, "train")}
    teacher = OfflineTeacher(seed=5)
    checked = 0
    for ctx in contexts:
        for index in range(3):
            reply = _reply(teacher, _request(ctx, response_type, index))
            assert reply.turns and all(q and a for q, a in reply.turns)
            result = check_turns(reply.turns, truth[ctx.image_id], description=response_type == "detail")
            assert result.ok, (ctx.image_id, reply.turns, result.problems)
            checked += result.checked
    assert checked >= len(contexts) * 3  # the checker really compared claims, at least one per reply


def test_checker_catches_wrong_answers(world, contexts) -> None:
    truth = {s.image_id: s for s in load_scenes(world, "train")}
    teacher = OfflineTeacher(seed=5, short_answer_rate=1.0)
    caught = total = 0
    for ctx in contexts[:30]:
        scene = truth[ctx.image_id]
        for q, a in _reply(teacher, _request(ctx, "conversation")).turns:
            colors = {o.color for o in scene.objects}
            wrong = {
                "red": "green", "green": "blue", "blue": "yellow", "yellow": "purple", "purple": "orange",
                "orange": "red", "circle": "square", "square": "triangle", "triangle": "cross", "cross": "circle",
                "left": "right", "right": "left", "center": "left", "top": "bottom", "bottom": "top",
                "middle": "top", "1": "2", "2": "3", "3": "4", "4": "1",
            }[a]  # fmt: skip
            if wrong in colors and a in colors:
                continue  # swapping to another colour that is present may still be right for a different object
            total += 1
            caught += not check_turns([(q, wrong)], scene).ok
    assert total > 50 and caught == total


def test_replies_are_deterministic_and_varied(contexts) -> None:
    a, b = OfflineTeacher(seed=1), OfflineTeacher(seed=1)
    ctx = contexts[0]
    for rt in RESPONSE_TYPES:
        assert _reply(a, _request(ctx, rt)).turns == _reply(b, _request(ctx, rt)).turns
    questions = {q for ctx in contexts for q, _ in _reply(a, _request(ctx, "conversation")).turns}
    stems = {
        re.sub(r"\b(red|green|blue|yellow|purple|orange|circle|square|triangle|cross)\b", "X", q)
        for q in questions
    }
    assert len(stems) >= 15
    other_seed = [_reply(OfflineTeacher(seed=2), _request(c, "conversation")).turns for c in contexts]
    assert other_seed != [_reply(a, _request(c, "conversation")).turns for c in contexts]


def test_conversations_mix_short_and_long_answers(contexts) -> None:
    teacher = OfflineTeacher(seed=0, short_answer_rate=0.4)
    turns = [t for c in contexts for t in _reply(teacher, _request(c, "conversation")).turns]
    short = [a for q, a in turns if q.endswith(SHORT_ANSWER_PROMPT)]
    assert 0.2 < len(short) / len(turns) < 0.6
    assert all(" " not in a for a in short)
    assert all(3 <= len(_reply(teacher, _request(c, "conversation")).turns) <= 6 for c in contexts)


def test_replies_do_not_leak_the_symbolic_source(contexts) -> None:
    teacher = OfflineTeacher()
    for ctx in contexts[:20]:
        for rt in RESPONSE_TYPES:
            text = " ".join(q + " " + a for q, a in _reply(teacher, _request(ctx, rt)).turns).lower()
            assert "caption" not in text and "bounding box" not in text and "<image>" not in text
            assert not re.search(r"\d\.\d", text)


def test_detail_uses_the_requested_instruction(contexts) -> None:
    reply = _reply(
        OfflineTeacher(), GenerationRequest(contexts[0], "detail", 0, "Tell me everything you see.")
    )
    assert reply.turns[0][0] == "Tell me everything you see." and len(reply.turns) == 1


def test_insufficient_context_is_a_teacher_error(contexts) -> None:
    ctx = contexts[0]
    for bad in (
        dataclasses.replace(ctx, captions=("Some shapes.",)),
        dataclasses.replace(ctx, objects=()),
    ):
        with pytest.raises(TeacherError) as err:
            _reply(OfflineTeacher(), _request(bad, "conversation"))
        assert err.value.reason == "context_insufficient"
    with pytest.raises(TeacherError) as err:
        _reply(OfflineTeacher(), GenerationRequest(ctx, "poem"))
    assert err.value.reason == "unknown_response_type"


_SWAPS = {
    "red": "green", "green": "red", "blue": "yellow", "yellow": "blue", "purple": "orange", "orange": "purple",
    "left": "right", "right": "left", "top": "bottom", "bottom": "top", "small": "large", "large": "small",
    "yes": "no", "no": "yes", "Yes": "No", "No": "Yes", "one": "two", "two": "three", "three": "two",
    "four": "one", "circle": "square", "square": "circle",
}  # fmt: skip


def test_checker_catches_falsified_long_answers(world, contexts) -> None:
    """Flip the first colour/shape/size/position/number/yes-no word of each long answer: nearly all are caught."""
    truth = {s.image_id: s for s in load_scenes(world, "train")}
    teacher = OfflineTeacher(seed=2, short_answer_rate=0.0)
    pattern = re.compile(r"\b(" + "|".join(_SWAPS) + r")\b")
    caught = total = 0
    for ctx in contexts:
        for rt in RESPONSE_TYPES:
            for q, a in _reply(teacher, _request(ctx, rt)).turns:
                falsified = pattern.sub(lambda m: _SWAPS[m.group(1)], a, count=1)
                if falsified != a:
                    total += 1
                    caught += not check_turns(
                        [(q, falsified)], truth[ctx.image_id], description=rt == "detail"
                    ).ok
    assert total > 200 and caught / total > 0.95


def test_no_training_text_uses_a_held_out_wording(contexts) -> None:
    """The teacher writes several wordings per question type, never one of the held-out pool."""
    teacher = OfflineTeacher(seed=0, short_answer_rate=0.5)
    questions = [
        q.split("\n")[0].lower()
        for ctx in contexts
        for rt in RESPONSE_TYPES
        for index in range(2)
        for q, _ in _reply(teacher, _request(ctx, rt, index)).turns
    ]
    held_out = [_frame_regex(f) for frames in WORDINGS["held_out"].values() for f in frames]
    leaked = [q for q in questions if any(p.match(q) for p in held_out)]
    assert not leaked, leaked[:5]
    for key, frames in WORDINGS["train"].items():
        used = {f for f in frames if any(_frame_regex(f).match(q) for q in questions)}
        assert len(used) >= 3, (key, used)  # no type is one fixed phrase


def _frame_regex(frame: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(frame.lower()).replace(re.escape("{ref}"), "the .+?") + "$")

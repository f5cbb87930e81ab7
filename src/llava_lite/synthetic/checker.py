"""Check question/answer turns against a scene's ground truth (the instances' attributes).

Independent of how the answers were written: it reads the question, resolves the object it
refers to from the words in it (size, colour, shape, position), recomputes the answer from
the truth, and compares it with the words in the answer. It also flags any object an answer
mentions that is not in the image ("a small green cross in the center" when there is none),
a place given to the wrong object ("A large blue cross sits in the top left.", in any of the
teacher's sentence forms), one place claimed twice in an answer, and in a description the
count, the relation sentence, the colours present and the split by size.
Used to test the offline teacher and the evaluation set, and usable on any teacher's output
for this world.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llava_lite.synthetic.language import NUMBER_WORDS, plural
from llava_lite.synthetic.questions import WORDINGS
from llava_lite.synthetic.scene import CELL_PHRASES, COLORS, SHAPES, SIZES, Scene, SceneObject

_COLOR = "|".join(COLORS)
_SHAPE = "|".join(sorted([*SHAPES, *(plural(s) for s in SHAPES)], key=len, reverse=True))
_POS = "|".join(sorted(CELL_PHRASES, key=len, reverse=True))
_NOUN = re.compile(rf"\b(?:(?P<size>{'|'.join(SIZES)})\s+)?(?P<color>{_COLOR})\s+(?P<shape>{_SHAPE})\b")
_LOCATED_NOUN = re.compile(
    rf"\b(?P<size>{'|'.join(SIZES)})\s+(?P<color>{_COLOR})\s+(?P<shape>{_SHAPE})\s+(?:in|on|at)\s+the\s+(?P<pos>{_POS})\b"
)
_NEGATION = re.compile(r"\b(no|not|none|without|if i added)\b|n't")
_PLACE = re.compile(rf"\b(?:in|on|at)\s+the\s+(?P<pos>{_POS})\b")
_RELATION = re.compile(r"^(the .+?) is (to the left of|to the right of|above|below) (the .+?)[.]?$")
_COLOURS_PRESENT = re.compile(
    rf"^(?:the colou?rs present are (?P<many>.+?)|all of them are (?P<one>{_COLOR}))[.]?$"
)
_SIZE_SPLIT = re.compile(r"^(?P<large>\w+) of them (?:is|are) large and (?P<small>\w+) (?:is|are) small[.]?$")
_SAME_SIZE = re.compile(r"^(?:both|all \w+) objects are (?P<size>large|small)[.]?$")
_REF = "(the .+?)"


def _frame_pattern(frame: str) -> re.Pattern[str]:
    """A question wording ("What color is {ref}?") as a pattern over the lower-cased question."""
    return re.compile("^" + re.escape(frame.lower()).replace(re.escape("{ref}"), _REF) + "$")


# Every wording of both pools (questions.WORDINGS), so held-out paraphrases are checked too.
_FRAMES: dict[str, list[re.Pattern[str]]] = {
    key: [_frame_pattern(f) for pool in WORDINGS.values() for f in pool[key]] for key in WORDINGS["train"]
}
# Colour wordings an earlier teacher wrote, in either spelling (the pools hold one of each).
_FRAMES["colour"].append(
    re.compile(rf"^(?:which colou?r does|can you tell me the colou?r of) {_REF}(?: have)?\?$")
)


def _framed(key: str, question: str) -> re.Match[str] | None:
    return next((m for p in _FRAMES[key] if (m := p.match(question))), None)


@dataclass
class CheckResult:
    checked: int = 0  # claims in the answers compared with the truth (and ambiguous references)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _singular(shape: str) -> str:
    return next(s for s in SHAPES if shape in (s, plural(s)))


def resolve(ref: str, scene: Scene) -> list[SceneObject]:
    """Objects matching every attribute word in a referring expression like 'the small circle on the left'."""
    ref = ref.lower()
    found: list[SceneObject] = list(scene.objects)
    pos = re.search(rf"\b(?:in|on|at)\s+the\s+({_POS})\b", ref)
    if pos:
        found = [o for o in found if o.position == pos.group(1)]
        ref = ref[: pos.start()]
    words = set(re.findall(r"[a-z]+", ref))
    for o in list(found):
        if (
            (words & set(SIZES) and o.size not in words)
            or (words & set(COLORS) and o.color not in words)
            or (words & set(SHAPES) and o.shape not in words)
        ):
            found.remove(o)
    return found


def _numbers(text: str) -> list[int]:
    out = []
    for tok in re.findall(r"[a-z]+|\d+", text.lower()):
        if tok.isdigit():
            out.append(int(tok))
        elif tok in NUMBER_WORDS:
            out.append(NUMBER_WORDS.index(tok))
        elif tok == "no":
            out.append(0)
    return out


def _relation_words(sentence: str) -> bool:
    return bool(re.search(r"\b(?:to the (?:left|right) of|above|below|bigger|smaller)\b", sentence))


def _holds(x: SceneObject, relation: str, y: SceneObject) -> bool:
    """Whether ``x`` is "to the left of" / "to the right of" / "above" / "below" ``y`` in the grid."""
    return {"to the left of": x.cell[1] < y.cell[1], "to the right of": x.cell[1] > y.cell[1],
            "above": x.cell[0] < y.cell[0], "below": x.cell[0] > y.cell[0]}[relation]  # fmt: skip


def _first(pattern: str, text: str) -> str | None:
    m = re.search(rf"\b({pattern})\b", text.lower())
    return m.group(1) if m else None


class _Checker:
    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.result = CheckResult()

    def expect(self, ok: bool, message: str) -> None:
        self.result.checked += 1
        if not ok:
            self.result.problems.append(message)

    def one(self, ref: str, question: str) -> SceneObject | None:
        """The object a question refers to; an ambiguous reference is a problem of the turn
        (counted), a unique one is not a claim and is not counted."""
        found = resolve(ref, self.scene)
        if len(found) != 1:
            self.expect(False, f"{question!r}: {ref!r} matches {len(found)} objects")
            return None
        return found[0]

    def placed(self, answer: str, noun: re.Match[str], pos: str, claimed: set[str]) -> None:
        """A noun given a place ("small red circle", "top left") must be the object there, and
        an answer names each place once ("a green cross on the left and a green cross on the left")."""
        obj = [o for o in self.scene.objects if o.position == pos]
        want = " ".join(w for w in (noun["size"], noun["color"], _singular(noun["shape"])) if w)
        actual = (obj[0].noun() if noun["size"] else obj[0].noun(size=False)) if obj else "nothing"
        self.expect(actual == want and pos not in claimed, (
            f"{answer!r}: says {want} {pos}, image has {actual} there" if actual != want
            else f"{answer!r}: names the {pos} twice"))  # fmt: skip
        claimed.add(pos)

    def mentions(self, answer: str) -> None:
        """Every non-negated object an answer names must exist, at the place it is given."""
        claimed: set[str] = set()
        for sentence in re.split(r"(?<=[.!?])\s+", answer.lower()):
            if _NEGATION.search(sentence):
                continue
            located = list(_LOCATED_NOUN.finditer(sentence))
            for m in located:
                self.placed(answer, m, m["pos"], claimed)
            nouns, places = list(_NOUN.finditer(sentence)), list(_PLACE.finditer(sentence))
            if not located and len(nouns) == 1 and len(places) == 1 and not _relation_words(sentence):
                # "A large blue cross sits in the top left." / "In the top left there is a ..."
                self.placed(answer, nouns[0], places[0]["pos"], claimed)
            for m in nouns:
                shape = _singular(m["shape"])
                hit = [o for o in self.scene.objects if (o.color, o.shape) == (m["color"], shape)
                       and (m["size"] is None or o.size == m["size"])]  # fmt: skip
                self.expect(bool(hit), f"{answer!r}: mentions a {m.group(0)} that is not in the image")

    def subject(self, obj: SceneObject, a: str, question: str) -> None:
        """A long answer that restates its subject ('The red circle is ...') must restate the same object."""
        if m := re.match(r"^(the .+?) is ", a):
            self.expect(obj in resolve(m[1], self.scene), f"{question!r}: answer is about {m[1]!r}")

    def turn(self, question: str, answer: str) -> None:
        q, a = question.split("\n")[0].strip().lower(), answer.strip().lower()
        self.mentions(answer)
        if self.reasoning(q, a, question):
            return
        horizontal = _framed("position_x", q)
        if m := (horizontal or _framed("position_y", q)):
            if obj := self.one(m[1], question):
                truth = ("left", "center", "right")[obj.cell[1]] if horizontal else (
                    ("top", "middle", "bottom")[obj.cell[0]])  # fmt: skip
                self.expect(
                    _first("left|center|right|top|middle|bottom", a) == truth,
                    f"{question!r}: {answer!r}, truth {truth}",
                )
        elif m := _framed("colour", q):
            if obj := self.one(m[1], question):
                self.subject(obj, a, question)
                self.expect(_first(_COLOR, a) == obj.color, f"{question!r}: {answer!r}, truth {obj.color}")
        elif m := _framed("shape", q):
            if obj := self.one(m[1], question):
                self.subject(obj, a, question)
                shapes = re.findall(rf"\b({_SHAPE})\b", a)
                self.expect(
                    bool(shapes) and _singular(shapes[-1]) == obj.shape,
                    f"{question!r}: {answer!r}, truth {obj.shape}",
                )
        elif m := re.match(
            r"^(?:where is|where in the image is|in which part of the picture is) (the .+?)(?: located)?\?$",
            q,
        ):
            if obj := self.one(m[1], question):
                self.subject(obj, a, question)
                said = re.search(rf"\b(?:in|on|at) the ({_POS})\b", a)
                self.expect(
                    bool(said) and said.group(1) == obj.position,
                    f"{question!r}: {answer!r}, truth {obj.position}",
                )
        elif m := re.match(r"^is (the .+?) large or small\?$", q):
            if obj := self.one(m[1], question):
                self.subject(obj, a, question)
                self.expect(
                    _first("large|small", a.split(" is ")[-1]) == obj.size,
                    f"{question!r}: {answer!r}, truth {obj.size}",
                )
        elif m := re.match(r"^which is bigger, (the .+?) or (the .+?)\?$", q):
            x, y = self.one(m[1], question), self.one(m[2], question)
            if x and y:
                big = m[1] if x.size == "large" else m[2]
                self.expect(x.size != y.size and a.startswith(big), f"{question!r}: {answer!r}, truth {big}")
        elif m := re.match(r"^is (the .+?) (to the left of|to the right of|above|below) (the .+?)\?$", q):
            x, y = self.one(m[1], question), self.one(m[3], question)
            if x and y:
                truth = _holds(x, m[2], y)
                self.expect(a.startswith("yes") == truth, f"{question!r}: {answer!r}, truth {truth}")
        elif m := re.match(rf"^(?:is there|can you see) an? ({_COLOR}) ({_SHAPE})\b", q):
            truth = any((o.color, o.shape) == (m[1], m[2]) for o in self.scene.objects)
            self.expect(a.startswith("yes") == truth, f"{question!r}: {answer!r}, truth {truth}")
        elif _framed("count", q) or (re.match(r"^(?:how many|can you count)", q) and " if " not in f" {q} "):
            self.count(q, a, question, answer)

    def reasoning(self, q: str, a: str, question: str) -> bool:
        """The counting and comparison behind the complex-reasoning questions; True if ``q`` was one."""
        objs = self.scene.objects
        if q.startswith("are all the objects in the image the same size"):
            if len(objs) > 1:
                same = len({o.size for o in objs}) == 1
                self.expect(a.startswith("yes") == same, f"{question!r}: {a!r}, truth {same}")
        elif m := re.match(rf"^if i added an? (?:{_COLOR}) ({_SHAPE}) .*how many", q):
            k = sum(o.shape == m[1] for o in objs)
            said = _numbers(a)
            self.expect(
                said[:1] == [k] and said[-1:] == [k + 1], f"{question!r}: {a!r}, truth {k} then {k + 1}"
            )
        elif m := re.match(r"^if (the .+?) were taken out of the picture", q):
            said, n = _numbers(a), len(objs)
            self.expect(len(resolve(m[1], self.scene)) == 1, f"{question!r}: ambiguous reference")
            self.expect(
                (said[:2] == [n, n - 1]) if n > 1 else said[-1:] == [0], f"{question!r}: {a!r}, truth {n - 1}"
            )
        elif q.startswith("which color appears most often"):
            for k, color in re.findall(rf"\b(\w+) ({_COLOR})\b", a.split(", so")[0]):
                truth = sum(o.color == color for o in objs)
                self.expect(_numbers(k) == [truth], f"{question!r}: says {k} {color}, truth {truth}")
        else:
            return False
        return True

    def count(self, q: str, a: str, question: str, answer: str) -> None:
        color = _first(_COLOR, q)
        shape = _first(_SHAPE, q)
        truth = sum(
            (color is None or o.color == color) and (shape is None or o.shape == _singular(shape))
            for o in self.scene.objects
        )
        said = _numbers(a)
        self.expect(bool(said) and said[0] == truth, f"{question!r}: {answer!r}, truth {truth}")

    def description(self, answer: str) -> None:
        """A detailed description names every object with its size, colour and position."""
        a = answer.lower()
        for o in self.scene.objects:
            self.expect(o.noun() in a, f"description misses the {o.noun()}: {answer!r}")
        n = len(self.scene.objects)
        said = _numbers(a.split(".")[0]) or ([1] if "single" in a.split(".")[0] else [])
        self.expect(bool(said) and said[0] == n, f"description's count {said[:1]} != {n}: {answer!r}")
        for sentence in re.split(r"(?<=[.!?])\s+", a):
            self.summary(sentence)

    def summary(self, sentence: str) -> None:
        """A description's closing sentences: how two objects lie, the colours, the sizes."""
        objs = self.scene.objects
        if m := _RELATION.match(sentence):
            x, y = self.one(m[1], sentence), self.one(m[3], sentence)
            if x and y:
                truth = _holds(x, m[2], y)
                self.expect(truth, f"{sentence!r}: not so in the image")
        elif m := _COLOURS_PRESENT.match(sentence):
            said = set(re.findall(rf"\b({_COLOR})\b", m["many"] or m["one"]))
            truth = {o.color for o in objs}
            self.expect(said == truth, f"{sentence!r}: the colours are {', '.join(sorted(truth))}")
        elif m := _SIZE_SPLIT.match(sentence):
            truth = [sum(o.size == size for o in objs) for size in ("large", "small")]
            self.expect(
                _numbers(f"{m['large']} {m['small']}") == truth,
                f"{sentence!r}: truth {truth[0]} large, {truth[1]} small",
            )
        elif m := _SAME_SIZE.match(sentence):
            self.expect({o.size for o in objs} == {m["size"]}, f"{sentence!r}: the sizes differ")


def check_turns(turns: list[tuple[str, str]], scene: Scene, description: bool = False) -> CheckResult:
    """Verify (question, answer) turns about ``scene``; ``description=True`` for detailed descriptions."""
    checker = _Checker(scene)
    for question, answer in turns:
        if description:
            checker.description(answer)
            checker.mentions(answer)
        else:
            checker.turn(question, answer)
    return checker.result

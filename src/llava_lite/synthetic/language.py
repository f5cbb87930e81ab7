"""Small English helpers shared by captions, the offline teacher and the question builder."""

from __future__ import annotations

NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(noun: str, n: int = 2) -> str:
    """'circle' -> 'circles', 'cross' -> 'crosses' (n == 1 keeps the singular)."""
    if n == 1:
        return noun
    return noun + "es" if noun.endswith(("s", "x", "sh", "ch")) else noun + "s"


def count_phrase(n: int, noun: str) -> str:
    """'one circle', 'three crosses'."""
    return f"{number_word(n)} {plural(noun, n)}"


def join_and(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def located(position: str) -> str:
    """The usual preposition for a grid position: 'in the top left', 'on the left', 'at the top'."""
    if position in ("left", "right"):
        return f"on the {position}"
    if position in ("top", "bottom"):
        return f"at the {position}"
    return f"in the {position}"


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]

"""Crash-safe JSON and JSON Lines files: whole lines appended and fsynced, a torn tail
repaired on reopen, whole files written through temp + rename.

A process killed mid-write can leave at most one partial last line (no newline). Reopening
truncates it (logged with its size); the record it held is simply produced again, because
it never counted as done. Any other unreadable line is an error naming the file and line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def repair_torn_tail(path: str | Path) -> int:
    """Cut a partial last line; returns how many bytes were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    dropped = len(data) - keep
    log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write", path, dropped)
    return dropped


# What a last line without a newline is: a torn write to repair first ("error"), one a reader
# that must not write leaves alone ("skip"), or the last record of a file a person wrote ("record").
UNTERMINATED = ("error", "skip", "record")


def numbered_jsonl(path: str | Path, unterminated: str = "error") -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of each non-blank line of ``path``; a line that is not UTF-8
    or not JSON is an error naming ``FILE:LINE``. ``unterminated``: see ``UNTERMINATED``."""
    if unterminated not in UNTERMINATED:
        raise ValueError(f"unterminated={unterminated!r}; valid: {list(UNTERMINATED)}")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {e.start}: {e.reason})") from None
            if not line.strip():
                continue
            ended = raw.endswith(b"\n")
            if not ended and unterminated == "skip":
                log.warning("%s:%d: torn last line left in place and not read", path, lineno)
                return
            if not ended and unterminated == "error":
                raise ValueError(f"{path}:{lineno}: torn last line; call repair_torn_tail first")
            try:
                record = json.loads(line.rstrip("\r\n"))  # columns as the line reads, newline aside
            except json.JSONDecodeError as e:
                torn = "" if ended else "; a torn last line (a run killed mid-write?)"
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.pos + 1}){torn}"
                ) from None
            yield lineno, record


def read_jsonl(path: str | Path, torn_tail_ok: bool = False) -> Iterator[dict[str, Any]]:
    """The records of ``path`` (none when it is missing). A torn last line is an error, or,
    with ``torn_tail_ok`` (a reader that must not write), logged and not a record."""
    if Path(path).exists():
        for _, record in numbered_jsonl(path, "skip" if torn_tail_ok else "error"):
            yield record


class JsonlAppender:
    """Appends one record per line; each line is flushed and fsynced before returning."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_json(path: Path, expected: type, what: str, missing_hint: str = "") -> Any:
    """Read one JSON file that must hold a ``what`` (e.g. "JSON object"), in one clear error each way."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found{missing_hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, expected):
        raise ValueError(f"{path}: expected a {what}, got {type(data).__name__}")
    return data


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write a whole JSON file through a temp file + rename, so readers never see half of it."""
    _write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole JSON Lines file (one record per line) through a temp file + rename."""
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def lock_folder(folder: str | Path, user: str = "run") -> int:
    """An exclusive lock on ``folder`` itself (no lock file is left behind): two runs appending
    to one file would duplicate records. The OS drops the lock when the process dies, so a
    killed run never blocks a rerun. Returns the folder's descriptor to close; ``user`` names
    the kind of run in the error."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"output_dir={folder} is in use by another {user}") from None
    return fd

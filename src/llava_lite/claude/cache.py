"""A persistent store of paid replies and submitted batches (sqlite, one file).

Every reply the API bills for (including refusals and ``max_tokens`` cuts) is stored under
a hash of the full request before anything else happens to it, so a rerun replays it
instead of paying again. Batch ids are stored the moment a batch is created, so a killed
run collects its batches instead of resubmitting. sqlite commits are atomic: a kill at any
moment leaves either the whole row or none of it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    message TEXT NOT NULL,
    batch INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    keys TEXT NOT NULL,
    collected INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
"""


def request_key(body: Mapping[str, Any], **identity: Any) -> str:
    """sha256 of the full request body and what identifies it besides the body (the teacher:
    prompt version, image, response type, sample, attempt; the judge: its kind and prompt
    version); 64 hex chars, also a valid batch ``custom_id``."""
    payload = {"body": body, **identity}
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class RequestCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: one statement, one commit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    # ---- replies ---------------------------------------------------------------------
    def get(self, key: str) -> tuple[dict[str, Any], bool] | None:
        """The stored reply and whether it was paid at the batch discount, or None."""
        row = self._db.execute("SELECT message, batch FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else (json.loads(row[0]), bool(row[1]))

    def put(self, key: str, message: dict[str, Any], batch: bool = False) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO replies (key, message, batch, created) VALUES (?, ?, ?, ?)",
            # ASCII escapes: any string a server sent (lone surrogates included) can be stored
            (key, json.dumps(message), int(batch), time.time()),
        )

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM replies WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    # ---- batches ---------------------------------------------------------------------
    def add_batch(self, batch_id: str, keys: list[str]) -> None:
        self._db.execute(
            "INSERT INTO batches (batch_id, keys, collected, created) VALUES (?, ?, 0, ?)",
            (batch_id, json.dumps(keys), time.time()),
        )

    def open_batches(self) -> list[tuple[str, list[str]]]:
        """Submitted batches whose results were not collected yet, oldest first."""
        rows = self._db.execute(
            "SELECT batch_id, keys FROM batches WHERE collected = 0 ORDER BY created"
        ).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def mark_collected(self, batch_id: str) -> None:
        self._db.execute("UPDATE batches SET collected = 1 WHERE batch_id = ?", (batch_id,))

    def close(self) -> None:
        self._db.close()

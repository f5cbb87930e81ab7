"""A local stand-in for the Anthropic Messages and Message Batches HTTP API.

It binds 127.0.0.1 only and speaks the API's JSON shapes, so the real ``AsyncAnthropic``
client (its retries, parsing and errors included) can be exercised offline. Replies are
well-formed tool calls built from the request (the judge's scores are always 8 and 4); ``script`` makes the next requests
misbehave, and the ``batch_*`` attributes make Message Batches misbehave (see
:meth:`FakeAnthropicAPI._messages` and ``__init__``). ``GET /v1/models`` lists ``models``; ``GET /v1/models/{id}`` answers from
``models`` (id -> ``lifecycle`` / ``retires_at`` overrides); any other id is an active
model unless ``known_models_only`` is set, then it is a 404. Every request is logged (method, path, JSON body, status); the API key
header is never recorded.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# prompt-cache minimum in this stand-in; the real API's minimum depends on the model
_MIN_CACHE_TOKENS = 1


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class FakeAnthropicAPI:
    """``with FakeAnthropicAPI() as api: ... base_url=api.url``."""

    def __init__(self, batch_polls_before_end: int = 1) -> None:
        self.script: deque[dict[str, Any]] = deque()  # behaviours for the next /v1/messages calls
        # next items' outcomes: "errored" | "expired" | "canceled" | "malformed" (a non-Message) | "missing"
        # (no result line) | "duplicate" (two result lines) | "no_usage"; unscripted items succeed
        self.batch_item_script: deque[str] = deque()
        self.batch_polls_before_end = batch_polls_before_end
        self.batch_status: str | None = None  # processing_status reported instead of the real one
        self.batch_results_url: bool | str = True  # False: ended batches have none; a str: that URL
        self.batch_extra_lines: list[bytes] = []  # raw lines added to the next batch's results file
        self.batch_error: int | None = None  # answer every batches request with this status
        # next batch creations: {"status": N} (nothing created), {"drop": True} (created, no answer)
        # or {"delay_s": s} (created, answered late)
        self.batch_create_script: deque[dict[str, Any]] = deque()
        self.models: dict[str, dict[str, Any]] = {}  # GET /v1/models/{id}: fields of that model
        self.known_models_only = False  # True: ids not in ``models`` are unknown (404)
        self.log: list[dict[str, Any]] = []
        self.batches: dict[str, dict[str, Any]] = {}
        self._cached_prefixes: set[str] = set()
        self._lock = threading.Lock()
        self._n = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                api._handle(self, "POST")

            def do_GET(self) -> None:
                api._handle(self, "GET")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAnthropicAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- inspection ------------------------------------------------------------------
    def calls(self, path: str = "/v1/messages", status: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.log if e["path"] == path and (status is None or e["status"] == status)]

    # ---- request handling ------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = h.path.split("?")[0]
        entry: dict[str, Any] = {"method": method, "path": path, "body": body, "status": None}
        with self._lock:
            self.log.append(entry)
        behaviour: dict[str, Any] = {}
        if method == "POST" and path == "/v1/messages":
            with self._lock:
                behaviour = self.script.popleft() if self.script else {}
            status, payload, headers = self._messages(body, behaviour)
        elif path.startswith("/v1/messages/batches") and self.batch_error is not None:
            status, payload, headers = self.batch_error, _status_error(self.batch_error), {}
        elif method == "POST" and path == "/v1/messages/batches":
            with self._lock:
                behaviour = self.batch_create_script.popleft() if self.batch_create_script else {}
            status, payload, headers = self._create(body, behaviour)
        elif method == "GET" and path.startswith("/v1/messages/batches/") and path.endswith("/results"):
            status, payload, headers = self._results(path.split("/")[-2])
        elif method == "GET" and path.startswith("/v1/messages/batches/"):
            status, payload, headers = self._retrieve(path.split("/")[-1])
        elif method == "GET" and path.startswith("/v1/models/"):
            status, payload, headers = self._model(path.removeprefix("/v1/models/"))
        elif method == "GET" and path == "/v1/models":
            status, payload, headers = self._model_list()
        else:
            status, payload, headers = 404, _error("not_found_error", f"no route {method} {path}"), {}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            if behaviour.get("drop"):
                h.close_connection = True
                status = -1  # nothing sent at all
            else:
                self._send(h, status, data, headers, behaviour)
        except (BrokenPipeError, ConnectionResetError):
            status = -1  # the client was gone: nothing was delivered
        entry["status"] = status

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: dict[str, str],
        fault: dict[str, Any],
    ) -> None:
        h.send_response(status)
        h.send_header("content-type", headers.pop("content-type", "application/json"))
        h.send_header("content-length", str(len(data)))
        h.send_header("request-id", f"req_{len(self.log)}")
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if "truncate" in fault:
            h.wfile.write(data[: fault["truncate"]])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early
            return
        step = 8 if "trickle_s" in fault else max(1, len(data))
        for start in range(0, len(data), step):
            if start and "trickle_s" in fault:
                time.sleep(fault["trickle_s"])
            h.wfile.write(data[start : start + step])
            h.wfile.flush()

    def _messages(self, body: dict[str, Any], behaviour: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """One scripted behaviour (keys combine where it makes sense):

        ``hang_s``: sleep, then answer 529. ``delay_s``: sleep, then answer. ``status``: that
        error status, with ``headers`` (default ``retry-after-ms: 1``) and ``error_body`` (raw
        bytes instead of the JSON error).
        ``raw``: a 200 with these body bytes (``content_type``). ``content`` / ``stop_reason``:
        replace those fields of the normal reply; ``message``: fields to set (``None`` sets
        null); ``omit``: fields to delete. Transport faults on the normal reply: ``drop`` (close
        without answering), ``truncate`` (send only that many body bytes, then close),
        ``trickle_s`` (send the body a few bytes at a time, this many seconds apart).
        """
        if "hang_s" in behaviour:
            time.sleep(behaviour["hang_s"])
            return 529, _error("overloaded_error", "hung"), {"retry-after-ms": "1"}
        time.sleep(behaviour.get("delay_s", 0.0))
        if "status" in behaviour:
            status = behaviour["status"]
            headers = dict(behaviour.get("headers", {"retry-after-ms": "1"}))
            if "error_body" in behaviour:
                headers.setdefault("content-type", "text/html")
                return status, behaviour["error_body"], headers
            return status, _status_error(status), headers
        if "raw" in behaviour:
            return 200, behaviour["raw"], {"content-type": behaviour.get("content_type", "application/json")}
        message = self.reply(body)
        if "content" in behaviour:
            message["content"] = behaviour["content"]
        if "stop_reason" in behaviour:
            message["stop_reason"] = behaviour["stop_reason"]
        message.update(behaviour.get("message", {}))
        for key in behaviour.get("omit", ()):
            message.pop(key, None)
        return 200, message, {}

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        """A well-formed tool-call reply to a Messages request, with prompt-cache usage."""
        with self._lock:
            self._n += 1
            n = self._n
        tool = body["tools"][0]["name"] if body.get("tools") else None
        user = body["messages"][-1]["content"]
        user_text = user if isinstance(user, str) else json.dumps(user)
        tag = hashlib.sha1(user_text.encode()).hexdigest()[:6]
        if tool == "record_description":
            content = [
                _tool_use(n, tool, {"description": f"A scene with several things in view, variant {tag}."})
            ]
        elif tool == "record_scores":  # the judge: Assistant 1 scores 8, Assistant 2 scores 4
            content = [
                _tool_use(n, tool, {"explanation": "ok", "assistant_1_score": 8, "assistant_2_score": 4})
            ]
        else:
            turns = [
                {
                    "question": f"What stands out in this picture ({tag})?",
                    "answer": "A few objects in a tidy scene.",
                },
                {
                    "question": f"Where might this be ({tag})?",
                    "answer": "It looks like an ordinary outdoor place.",
                },
            ]
            content = [_tool_use(n, tool or "record_turns", {"turns": turns})]
        system = body.get("system") or []
        prefix = json.dumps(body.get("tools", [])) + json.dumps(
            system if isinstance(system, list) else [system]
        )
        cached = (
            any(isinstance(b, dict) and b.get("cache_control") for b in system)
            if isinstance(system, list)
            else False
        )
        usage = {"input_tokens": _tokens(user_text), "output_tokens": 40}
        if cached and _tokens(prefix) >= _MIN_CACHE_TOKENS:
            with self._lock:
                hit = prefix in self._cached_prefixes
                self._cached_prefixes.add(prefix)
            usage["cache_read_input_tokens" if hit else "cache_creation_input_tokens"] = _tokens(prefix)
        else:
            usage["input_tokens"] += _tokens(prefix)
        return {
            "id": f"msg_{n:06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-test"),
            "content": content,
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": usage,
        }

    def _model(self, model_id: str) -> tuple[int, Any, dict[str, str]]:
        """A ModelInfo: ``models[model_id]`` over an active model's fields."""
        if model_id not in self.models and self.known_models_only:
            return 404, _error("not_found_error", f"model: {model_id}"), {}
        info = {
            "type": "model",
            "id": model_id,
            "display_name": model_id,
            "created_at": "2026-01-01T00:00:00Z",
            "lifecycle": "active",
            "deprecated_at": None,
            "retires_at": None,
        }
        info.update(self.models.get(model_id, {}))
        return 200, info, {}

    def _model_list(self) -> tuple[int, Any, dict[str, str]]:
        """``GET /v1/models``: one page of every model in ``models``."""
        data = [self._model(model_id)[1] for model_id in self.models]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return 200, {"data": data, "has_more": False, "first_id": first, "last_id": last}, {}

    # ---- batches ---------------------------------------------------------------------
    def _create(self, body: dict[str, Any], behaviour: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if "status" in behaviour:  # refused: nothing is created
            return behaviour["status"], _status_error(behaviour["status"]), {"retry-after-ms": "1"}
        created = self._create_batch(body)
        time.sleep(behaviour.get("delay_s", 0.0))  # created, answered late (or not: "drop")
        return 200, created, {}

    def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            batch_id = f"msgbatch_{len(self.batches) + 1:04d}"
        results = []
        for item in body["requests"]:
            with self._lock:
                outcome = self.batch_item_script.popleft() if self.batch_item_script else "succeeded"
            if outcome == "missing":
                continue
            if outcome in ("succeeded", "duplicate"):
                result: dict[str, Any] = {"type": "succeeded", "message": self.reply(item["params"])}
            elif outcome == "no_usage":
                result = {"type": "succeeded", "message": self.reply(item["params"])}
                del result["message"]["usage"]
            elif outcome == "malformed":
                result = {"type": "succeeded", "message": {"type": "message", "content": "not blocks"}}
            elif outcome == "errored":
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": _error("api_error", "x")["error"]},
                }
            else:
                result = {"type": outcome}
            line = {"custom_id": item["custom_id"], "result": result}
            results.extend([line, line] if outcome == "duplicate" else [line])
        with self._lock:
            extra, self.batch_extra_lines = self.batch_extra_lines, []
        batch = {"id": batch_id, "results": results, "extra": extra, "polls": 0, "created_at": _now()}
        with self._lock:
            self.batches[batch_id] = batch
        return self._batch_json(batch, ended=False)

    def _retrieve(self, batch_id: str) -> tuple[int, Any, dict[str, str]]:
        batch = self.batches.get(batch_id)
        if batch is None:
            return 404, _error("not_found_error", batch_id), {}
        batch["polls"] += 1
        return 200, self._batch_json(batch, ended=batch["polls"] > self.batch_polls_before_end), {}

    def _results(self, batch_id: str) -> tuple[int, Any, dict[str, str]]:
        batch = self.batches.get(batch_id)
        if batch is None:
            return 404, _error("not_found_error", batch_id), {}
        lines = b"".join(json.dumps(r).encode() + b"\n" for r in batch["results"])
        lines += b"".join(line.rstrip(b"\n") + b"\n" for line in batch["extra"])
        return 200, lines, {"content-type": "application/binary"}

    def _results_url(self, batch_id: str) -> str | None:
        if isinstance(self.batch_results_url, str):
            return self.batch_results_url
        return f"{self.url}/v1/messages/batches/{batch_id}/results" if self.batch_results_url else None

    def _batch_json(self, batch: dict[str, Any], ended: bool) -> dict[str, Any]:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for r in batch["results"]:
                counts[r["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch["results"])
        return {
            "id": batch["id"],
            "type": "message_batch",
            "processing_status": self.batch_status or ("ended" if ended else "in_progress"),
            "request_counts": counts,
            "created_at": batch["created_at"],
            "expires_at": batch["created_at"],
            "ended_at": _now() if ended else None,
            "results_url": self._results_url(batch["id"]) if ended else None,
        }


def _tool_use(n: int, name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{n:06d}", "name": name, "input": data}


def _status_error(status: int) -> dict[str, Any]:
    return _error(_ERROR_TYPES.get(status, "api_error"), "scripted")


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

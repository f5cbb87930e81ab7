"""Is the configured model still served? Asked of the Models API before any paid work.

``client.models.retrieve(id)`` reports ``lifecycle`` (``active`` / ``deprecated`` /
``retired``) and ``retires_at``. A retired or unknown model is refused in one line (every
request would fail, or the id is misspelled) that suggests another model the API lists, never
the same id; a deprecated one is logged as a warning with
its retirement date; an active one passes. The SDK's own table of deprecated ids only
warns when a message is sent, which is too late to choose another model.
"""

from __future__ import annotations

import difflib
import logging

import anthropic

from llava_lite.claude.client import FATAL_ERRORS, ApiFatalError, describe_error
from llava_lite.claude.settings import DEFAULT_MODEL

log = logging.getLogger(__name__)


async def known_alternative(client: anthropic.AsyncAnthropic, model: str) -> str | None:
    """A model the Models API lists as served, other than ``model``: the closest in spelling (a
    typo's fix), else the library's default, else the first listed; None when it lists none (or
    cannot list). Never ``model`` itself, which is what the caller could not use."""
    try:
        page = await client.models.list(limit=1000)
        served = [m.id for m in page.data if getattr(m, "lifecycle", "active") != "retired" and m.id != model]
    except anthropic.APIError:
        return None
    close = difflib.get_close_matches(model, served, n=1, cutoff=0.6)
    if close:
        return close[0]
    return DEFAULT_MODEL if DEFAULT_MODEL in served else (served[0] if served else None)


async def check_model(client: anthropic.AsyncAnthropic, model: str) -> str:
    """The model's lifecycle stage; ``ApiFatalError`` for a retired or unknown model, a
    refused client, or an API that cannot be reached or answers with an error (after the
    SDK's retries): without an answer nothing is known about the model, so nothing is paid."""
    try:
        info = await client.models.retrieve(model)
    except anthropic.NotFoundError:
        other = await known_alternative(client, model)
        hint = f"; try {other!r}" if other else "; the Models API lists no other model to suggest"
        raise ApiFatalError(
            "model_unknown", f"model={model!r} is not known to the Models API{hint}"
        ) from None
    except FATAL_ERRORS as e:
        raise ApiFatalError(f"api_status_{e.status_code}", describe_error(e, client)) from None
    except anthropic.APIStatusError as e:
        raise ApiFatalError(f"api_status_{e.status_code}", describe_error(e, client)) from None
    except anthropic.APIConnectionError:
        raise ApiFatalError(
            "api_unreachable",
            f"cannot reach the API at {client.base_url}; check base_url / ANTHROPIC_BASE_URL and the network",
        ) from None
    except anthropic.APIError as e:  # e.g. a 200 whose body is not a model
        raise ApiFatalError("api_bad_response", f"models.retrieve({model!r}): {type(e).__name__}") from None
    lifecycle = getattr(info, "lifecycle", None)
    when = getattr(info, "retires_at", None) or getattr(info, "deprecated_at", None)
    date = f" on {str(when)[:10]}" if when is not None else ""  # a datetime or the wire's RFC 3339 text
    if lifecycle == "retired":
        other = await known_alternative(client, model)
        hint = f", e.g. {other!r}" if other else ""
        raise ApiFatalError(
            "model_retired", f"model={model!r} was retired{date}; choose a current model{hint}"
        )
    if lifecycle == "deprecated":
        log.warning(
            "model %r is deprecated and retires%s; plan to move to a current model", model, date or " soon"
        )
    elif lifecycle != "active":
        log.warning("model %r has lifecycle %r, which this library does not know", model, lifecycle)
    return str(lifecycle)

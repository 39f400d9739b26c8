"""Errors users see: one line, a stable exit code, never a traceback (unless --debug)."""

import importlib

BUDGET_MISSED = 3  # deploy and search: the run completed but a budget was not met (a script's signal)
BUDGET_UNCERTAIN = 4  # deploy and search: met by a prediction, not by its upper bound (only the device can tell)


class EdgekitError(Exception):
    """Base of every error meant for the user; the CLI prints `str(err)` on one line."""

    exit_code = 1


class BadInput(EdgekitError):
    """The user's input (file, option, data, target) is wrong: exit 2."""

    exit_code = 2


class Failure(EdgekitError):
    """A step failed on good input (a runtime error, a build that broke): exit 1."""

    exit_code = 1


class MissingRuntime(Failure):
    """A runtime or tool is not installed here; the message names the extra or the device it needs."""


def require(module: str, extra: str):
    """Import a heavy optional runtime lazily, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingRuntime(
            f"the '{module}' runtime is not installed: pip install 'edgekit[{extra}]' ({err})"
        ) from err


def runtime_message(err: BaseException, limit: int = 200) -> str:
    """The informative line of a runtime's multi-line error (OpenVINO and ONNX Runtime lead with
    source locations such as 'Exception from src/...cpp:84:')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    noise = ("Exception from ", "Check '", "Converting input model")
    useful = [line for line in lines if not line.startswith(noise)]
    return (useful[-1] if useful else lines[0] if lines else type(err).__name__)[:limit]

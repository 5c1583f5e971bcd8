"""User-facing errors: the CLI prints their message and exits with their code, no traceback.

Every error a user can cause or act on derives from `GreamError`; the CLI maps exceptions to exit
codes through it alone, so anything else that escapes is a bug and keeps its traceback.
"""


def first_line(exc: BaseException) -> str:
    """An error's message for a one-line report: Ray's goes on with the remote traceback."""
    return (str(exc).strip().splitlines() or [""])[0]


class GreamError(Exception):
    """Base of every user-facing error; `exit_code` 2 means bad input (spec, data, request)."""

    exit_code = 2


class MissingArtefact(GreamError, FileNotFoundError):
    """A stage's input (an earlier stage's output, a run folder) is not there."""


class BadRequest(GreamError, ValueError):
    """A command-line request that cannot be honoured as given."""


class Resumable(GreamError, RuntimeError):
    """The job stopped where it can continue from its last complete checkpoint. Subclasses set
    `exit_code`; the CLI prints the message and the command that resumes (its own with --resume)."""

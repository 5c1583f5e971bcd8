"""User-facing errors: the CLI prints their message and exits with their code, no traceback."""


class MissingArtefact(FileNotFoundError):
    """A stage's input (an earlier stage's output, a run folder) is not there."""

    exit_code = 2


class BadRequest(ValueError):
    """A command-line request that cannot be honoured as given."""

    exit_code = 2


class Resumable(RuntimeError):
    """The job stopped where it can continue from its last complete checkpoint. Subclasses set
    `exit_code`; the CLI prints the message and the command that resumes (its own with --resume)."""

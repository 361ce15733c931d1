"""The two kinds of failure a user can act on, each with its exit status.

Errors are raised at the edge where the channel, field or object is known, so the
message a person reads names it; the CLI prints that message as one line.
"""


class PipeError(Exception):
    """Base of every error the CLI reports as one line instead of a traceback."""

    exit_status = 1


class ConfigError(PipeError):
    """The channel file, an option or a source is wrong: nothing has been written yet."""

    exit_status = 2


class DataError(PipeError):
    """An object could not be streamed mid-epoch: the epoch is cut short on purpose."""

    exit_status = 1


class Stopped(Exception):
    """Shutdown was requested while a worker waited; not an error."""


def in_channel(e: PipeError, name: str) -> PipeError:
    """The same error, its message led by the channel's name (once): mid-epoch errors are raised
    where only an object is known, and a person needs to know which channel's setting to look at."""
    prefix = f"channel {name!r}: "
    return e if str(e).startswith(prefix) else type(e)(prefix + str(e))

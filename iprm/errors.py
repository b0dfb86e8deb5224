"""User errors: bad input or settings, reported as one line that says what to change.

Whatever iprm refuses because of what it was given — a data file, a path, a config value — it raises as an
`IPRMError` whose message names the file, the line or row and the field (or the setting) at fault.
`python -m iprm` prints such an error as one line and exits with status 2; `IPRM_TRACEBACK=1` shows the
traceback too. Anything else is a bug and keeps its traceback.
"""


class IPRMError(Exception):
    """Bad input or settings; the message says where and what to change."""


class ConfigError(IPRMError, ValueError):
    """A setting that cannot work (β ≤ 0, a fraction outside (0, 1], an unknown name, …)."""


class MissingPathError(IPRMError, FileNotFoundError):
    """A file or directory that was named does not exist."""


class RecordError(IPRMError, ValueError):
    """A data file does not hold valid records; the message names the file, line (or row) and field."""


class CorruptArtifactError(IPRMError):
    """A file iprm wrote earlier (a world, an export, a cache shard, a checkpoint) no longer matches what was
    recorded when it was written: truncated, altered or of another kind; the message says how to rebuild."""


class WriteError(IPRMError, OSError):
    """A destination that cannot be written (a directory, no permission, a full disk); the message names the
    path, and whatever was there before is left as it was."""

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno 28] …"
        return self.strerror or super().__str__()

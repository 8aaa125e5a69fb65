"""Errors meant for users: the CLI prints them as one line and exits non-zero."""


class VaricodecError(Exception):
    """Base class of every error varicodec reports to users."""


class FormatError(VaricodecError):
    """A compressed file is malformed, truncated, corrupted or from a newer format."""


class DesyncError(FormatError):
    """Entropy decoding went out of step with the encoder: the decoded symbols fail
    the file's symbol check (different arithmetic beyond the guard, or an altered file)."""


class ModelMismatchError(VaricodecError):
    """A file was written by a model other than the one offered to decode it."""


class VaricodecWarning(UserWarning):
    """A lossy conversion or other surprise the user should hear about (not an error)."""

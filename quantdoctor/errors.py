"""Errors quantdoctor raises on purpose.

`UserInputError` and its subclasses mean the user handed us something we cannot use; the CLI prints their message as one
line and exits 1. Anything else that escapes is a bug (exit 2).
"""

from __future__ import annotations


class QuantDoctorError(Exception):
    """Base class of all errors raised on purpose."""


class UserInputError(QuantDoctorError):
    """Bad user input. The message must say what is wrong and what to do, on one line."""


class DataError(UserInputError):
    """Data that cannot be read or does not fit the model."""


class ModelLoadError(UserInputError):
    """A model file that is missing, unreadable or of an unsupported kind."""


class UnknownNameError(UserInputError):
    """A name (scheme, preset, metric, ...) that is not registered."""


class UsageError(UserInputError):
    """A command line that does not parse: unknown or missing options, values of the wrong type or out of range."""

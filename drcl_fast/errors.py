"""The package's own exception types: each says what was wrong, where, and what to do.

They subclass the built-in type a caller would already catch (ValueError for bad
input, OSError for files), and DRCLError, so the CLI can report every one of them
without a traceback.
"""
from __future__ import annotations


class DRCLError(Exception):
    """Base of every error drcl_fast raises on purpose."""


class DataError(DRCLError, ValueError):
    """A dataset file or array is missing, unreadable or inconsistent."""


class ConfigError(DRCLError, ValueError):
    """An argument, or a combination of arguments, cannot work with this data or machine."""


class BackendError(DRCLError, RuntimeError):
    """A backend was asked for that does not exist or cannot run here."""


class OutputError(DRCLError, OSError):
    """The output directory cannot be written."""


class OutputExistsError(OutputError, FileExistsError):
    """A run would overwrite files that are already there."""


class CheckpointError(DRCLError, RuntimeError):
    """A checkpoint cannot be read, or belongs to a run with other arguments."""


class ModelError(DRCLError, ValueError):
    """A saved model or gallery index is missing, damaged, of a newer format, or belongs to another model."""


class KernelInputError(DRCLError, ValueError):
    """A Triton launcher in ``drcl_fast.kernels`` was given a tensor of the wrong shape, dtype, device or layout."""


class NonFiniteLossError(DRCLError, FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class DataWarning(UserWarning):
    """Data that trains, but probably not as the user intends (e.g. all-zero rows)."""

"""Typed errors. Only the CLI turns them into exit codes and one-line messages."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3


class EdgepackError(Exception):
    """Base of every error edgepack raises on purpose."""

    exit_code = EXIT_ERROR


class ConfigError(EdgepackError):
    """The recipe is missing, unreadable or invalid."""


class ModelLoadError(EdgepackError):
    """The model factory, weights or ONNX file could not be loaded."""


class DataError(EdgepackError):
    """Calibration or evaluation data is unreadable or does not match the input spec."""


class CalibrationError(EdgepackError):
    """Calibration statistics could not be collected or turned into ranges."""


class MissingDependencyError(EdgepackError):
    """A runtime or toolchain is not installed; names the extra that provides it."""

    def __init__(self, what: str, module: str, extra: str):
        super().__init__(
            f"{what} needs the Python package '{module}', which is not installed: "
            f"pip install 'edgepack[{extra}]'"
        )
        self.module = module
        self.extra = extra


class ExportError(EdgepackError):
    """An artifact could not be produced, or does not match the model it came from."""


class PruningError(EdgepackError):
    """Pruning could not be done correctly (self-check mismatch, unsupported pattern)."""


class VerificationError(EdgepackError):
    """A bundle failed its integrity checks (checksums, missing files)."""


SUMMARY_LIMIT = 300  # characters of a library's exception message kept in a one-line error


def describe(exc: BaseException) -> str:
    """'TypeName: first line of the message', bounded: library exceptions can span pages."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > SUMMARY_LIMIT:
        first = first[:SUMMARY_LIMIT] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__

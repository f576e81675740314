"""Progress reporting seen by the pipeline; the CLI supplies a terminal implementation."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Protocol


class Progress(Protocol):
    """Receives the pipeline's long steps and warnings."""

    def step(self, description: str) -> ContextManager[None]:
        """Context manager around one long step."""

    def warn(self, message: str) -> None:
        """A warning worth showing the user."""


class SilentProgress:
    """Reports nothing (library use and tests)."""

    def step(self, description: str) -> ContextManager[None]:
        """No-op step."""
        return contextlib.nullcontext()

    def warn(self, message: str) -> None:
        """Drop the warning."""

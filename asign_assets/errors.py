"""Errors that users see: each names the file (or section) and the problem."""

from __future__ import annotations

from pathlib import Path


class AsignError(Exception):
    """Base class for every error raised on purpose by asign."""


class InputError(AsignError, ValueError):
    """Bad user input, raised before any output is written.

    The message always starts with the offending file (or section) so a user
    can fix it without reading a traceback.
    """

    def __init__(self, source: str | Path | None, problem: str, field: str | None = None):
        self.source = str(source) if source is not None else None
        self.problem = problem
        self.field = field
        where = self.source or "<input>"
        if field:
            where = f"{where}: field '{field}'"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple:
        """Pickle by the constructor's arguments, so the error crosses a process pool intact."""
        return (type(self), (self.source, self.problem, self.field))


class RegistrationError(AsignError):
    """Registration could not align a section well enough to be trusted."""


class RunInterrupted(AsignError):
    """Ctrl-C during a run; the message says what was kept."""

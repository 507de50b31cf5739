"""What the rows.json parser raises."""

from __future__ import annotations


class SourceFormatError(ValueError):
    """The body is not the rows.json we expect; the message names the source and the problem."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class UnsafeIdentifierError(ValueError):
    """A county name cannot become a safe SQL identifier."""

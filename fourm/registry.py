"""Name -> entry tables (samplers, renderers, backends, tasks, tokenizer families...) with one error.

Names come from configs and the command line, so an unknown one is usually a typo: it fails on one
line that lists the names there are, the same way for every table. The tables are dicts, so
``name in table``, ``list(table)`` and ``table.items()`` work as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownNameError(LookupError, ValueError):
    """A name that a registry does not hold. Both a LookupError and a ValueError: the tables it replaced
    raised one or the other, and callers (the CLI among them) catch either as bad input."""


class Registry(dict[str, T]):
    """A name -> entry dict whose ``[name]`` of an unknown name raises :class:`UnknownNameError`
    ("unknown <what> 'x'; known: a, b").

    Args:
        what: what an entry is, for the error ("search backend").
        entries: initial entries, a mapping or (name, entry) pairs.
        sort: list the known names sorted in the error; otherwise in registration order.
        error: the error's text, a format string of ``what``, ``name`` and ``known``, for a table
            whose users already know another wording ("no pixel codec for {name!r}; known: {known}").
    """

    def __init__(self, what: str, entries: Mapping[str, T] | Iterable[tuple[str, T]] = (), *, sort: bool = False,
                 error: str = "unknown {what} {name!r}; known: {known}"):
        super().__init__(entries)
        self.what, self.sort, self.error = what, sort, error

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@TABLE.register("name")`` adds the function or class it decorates."""

        def deco(entry: T) -> T:
            self[name] = entry
            return entry

        return deco

    def names(self) -> list[str]:
        return sorted(self) if self.sort else list(self)

    def check(self, name: str, context: str | None = None) -> str:
        """``name`` itself if the table holds it (validation without the entry), else the error, after
        ``context`` when given (the thing whose setting it is: "tok_rgb: unknown mask schedule ...")."""
        if name not in self:
            error = self._error(name)
            raise UnknownNameError(f"{context}: {error}" if context else error)
        return name

    def _error(self, name: str) -> str:
        return self.error.format(what=self.what, name=name, known=", ".join(self.names()))

    def __missing__(self, name: str):
        raise UnknownNameError(self._error(name))

"""User-facing errors.

A `StillroomError` is a mistake the user can fix: bad input, a wrong recipe
key, a missing file. The CLI prints it as one or a few lines, with no
traceback. Anything else is a bug in stillroom and keeps its traceback.
"""

from __future__ import annotations


class StillroomError(Exception):
    """An error caused by the user's input, with what to do about it.

    `where` names the file, line, column or recipe key; `hint` says how to fix it.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class DataError(StillroomError):
    """Input data that cannot be read or used as given."""


class RecipeError(StillroomError):
    """A recipe (YAML or override) that does not match the schema."""


class ModelError(StillroomError):
    """A model that cannot be loaded, or two models that cannot be paired."""

"""Which teacher layers a layer-selected student keeps: one rule for classifiers and language models."""

from __future__ import annotations

from stillroom.core.errors import RecipeError


def evenly_spaced_layers(total: int, keep: int, where: str = "student.layers") -> list[int]:
    """`keep` of `total` layer indices, evenly spaced with the first and the last included, halves rounded up:
    6 of 12 gives DistilBERT's 0, 2, 4, 7, 9, 11. One layer keeps the first, which every later layer builds on."""
    if not 1 <= keep <= total:
        raise RecipeError(f"cannot keep {keep} of the teacher's {total} layers", where=where,
                          hint=f"choose a number from 1 to {total}, or a list of layer indices")
    if keep == 1:
        return [0]
    return [int(i * (total - 1) / (keep - 1) + 0.5) for i in range(keep)]

"""Shared by the classifier tests."""

from stillroom.distill import pipeline


def prepared(recipe):
    """A workspace with data, teacher and student ready, as `pipeline.run` has them before training."""
    ws = pipeline.start(recipe)
    pipeline.load_splits(ws)
    pipeline.prepare_teacher(ws)
    pipeline.prepare_student(ws)
    return ws

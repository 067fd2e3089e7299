"""Shared test set-up: offline, a private cache, few threads, and tiny real-architecture models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per test process: tests use tiny models, and with two threads a busy machine makes
# OpenMP spin-wait, turning milliseconds into seconds. Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own stillroom cache, so no test depends on another's leftovers."""
    cache = tmp_path_factory.getbasetemp() / "stillroom-cache"
    monkeypatch.setenv("STILLROOM_CACHE", str(cache))


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path

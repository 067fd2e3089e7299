"""The prompt encoder (static student of all-MiniLM-L6-v2, and MiniLM itself) and the nearest-neighbour search."""

from __future__ import annotations

import numpy as np
import pytest

from stillroom.guard import embed
from stillroom.guard.ann import knn
from stillroom.guard.embed import PromptEncoder, agreement, default_encoder

SENTENCES = [
    "How do I reverse a linked list in Python?", "Write a Python function that reverses a linked list.",
    "What are the symptoms of type 2 diabetes?", "Which signs suggest someone has diabetes?",
    "Translate 'good morning' into French.", "How do you say 'good morning' in French?",
    "Explain how a SQL injection attack works against a login form.", "How do attackers exploit SQL injection in a login page?",
    "Write a poem about the ocean.", "Compose a short poem about the sea.",
    "What caused the fall of the Roman Empire?", "Why did the Western Roman Empire collapse?",
    "Solve 3x + 4 = 19.", "Find x if 3x plus 4 equals 19.",
    "Give me tips to sleep better.", "How can I improve my sleep?",
    "My card payment was declined, why?", "Why was my card declined at the shop?",
    "Summarize this article in three bullet points.", "Give me the key points of this text as a short list.",
]


class Counting:
    """A backend that records what it was asked to embed."""

    def __init__(self, inner):
        self.inner, self.dims, self.calls = inner, inner.dims, []

    def __call__(self, texts):
        self.calls.append(sorted(texts))
        return self.inner(texts)


def test_rows_are_unit_float32_and_identical_texts_are_embedded_once():
    encoder = PromptEncoder("static")
    encoder._backend = backend = Counting(encoder.backend)
    x = encoder.encode(["a question", "another one", "a question"])
    assert x.dtype == np.float32 and x.shape == (3, encoder.dims) == (3, embed.DIMS)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.array_equal(x[0], x[2])
    assert backend.calls == [["a question", "another one"]]
    assert np.array_equal(encoder.encode(["another one"])[0], x[1])  # from the cache: the backend is not called again
    assert len(backend.calls) == 1
    assert encoder.encode([]).shape == (0, encoder.dims)
    assert not encoder.encode([""]).any()  # nothing to embed: a zero row, not NaN


def test_default_encoder_is_shared_and_unknown_kinds_are_refused():
    assert default_encoder() is default_encoder("static")
    with pytest.raises(Exception, match="unknown prompt encoder"):
        PromptEncoder("word2vec")


def test_student_places_paraphrases_together():
    x = default_encoder().encode(SENTENCES)
    sims = x @ x.T
    np.fill_diagonal(sims, -1)
    partner = np.arange(len(SENTENCES)) ^ 1  # sentences come in paraphrase pairs
    assert (sims.argmax(axis=1) == partner).mean() >= 0.8


def test_student_agrees_with_its_teacher():
    """The real teacher (all-MiniLM-L6-v2, offline) against the shipped student on the same sentences."""
    student = PromptEncoder("static").encode(SENTENCES)
    teacher = PromptEncoder("minilm").encode(SENTENCES)
    assert teacher.shape == (len(SENTENCES), 384)
    scores = agreement(SENTENCES, student, teacher, k=1)
    assert scores["pairwise_cosine_pearson"] > 0.7
    assert scores["knn1_overlap"] >= 0.7


def test_knn_exact_and_approximate_find_the_true_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16)) * 4
    reference = (centres[rng.integers(40, size=3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    queries = reference[:300] + 0.01
    d2 = ((queries[:, None] - reference[None]) ** 2).sum(-1)
    truth = np.argsort(d2, axis=1)[:, :10]
    dist, idx = knn(reference, queries, 10, exact=True)
    assert np.array_equal(idx, truth)
    assert np.allclose(dist, np.sqrt(np.take_along_axis(d2, truth, 1)), atol=1e-3)
    _, approx = knn(reference, queries, 10, exact=False)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, truth)]) > 0.95
    assert knn(reference, queries[:0], 5)[1].shape == (0, 5)
    assert knn(reference[:3], queries[:2], 5)[1].shape == (2, 3)  # k is capped at the reference size
    with pytest.raises(ValueError, match="same width"):
        knn(reference, queries[:, :3], 5)

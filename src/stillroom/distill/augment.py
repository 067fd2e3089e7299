"""A larger transfer set for the teacher to label (Tang et al. 2019, "Distilling Task-Specific
Knowledge from BERT into Simple Neural Networks", arXiv:1903.12136, section 3.3).

Each variant of a training text is made word by word: with `mask_prob` a word
becomes the mask token, otherwise with `replace_prob` it becomes a random word
of the corpus (drawn by frequency; the paper draws one of the same part of
speech); then with `ngram_prob` only a random n-gram (n in 1..5) is kept.
The variants carry no gold label: the teacher's outputs are their targets.
"""

from __future__ import annotations

import random
from collections import Counter

from stillroom.core.runs import LOG


def _variant(words: list[str], rng: random.Random, vocabulary: list[str], weights: list[int], mask_token: str,
             mask_prob: float, replace_prob: float, ngram_prob: float) -> str:
    out = []
    for word in words:
        roll = rng.random()
        if roll < mask_prob:
            out.append(mask_token)
        elif roll < mask_prob + replace_prob:
            out.append(rng.choices(vocabulary, weights)[0])
        else:
            out.append(word)
    if len(out) > 1 and rng.random() < ngram_prob:
        n = rng.randint(1, min(5, len(out)))
        start = rng.randint(0, len(out) - n)
        out = out[start:start + n]
    return " ".join(out)


def augmented_views(texts: list[str], mask_token: str, mask_prob: float = 0.1, replace_prob: float = 0.1,
                    ngram_prob: float = 0.25, seed: int = 0) -> list[str]:
    """One augmented version of every text, in order (a version may equal its text): a fresh view per epoch
    is one of these lists, drawn per example (see `batches.Batches`)."""
    rng = random.Random(seed)
    counts = Counter(word for text in texts for word in text.split())
    vocabulary, weights = list(counts), list(counts.values())
    return [_variant(text.split(), rng, vocabulary, weights, mask_token, mask_prob, replace_prob, ngram_prob) or text
            for text in texts]


def transfer_set(texts: list[str], copies: int, mask_token: str, mask_prob: float = 0.1, replace_prob: float = 0.1,
                 ngram_prob: float = 0.25, seed: int = 0) -> list[str]:
    """`copies` variants per text, without duplicates of each other or of the originals."""
    if copies <= 0:
        return []
    rng = random.Random(seed)
    counts = Counter(word for text in texts for word in text.split())
    vocabulary, weights = list(counts), list(counts.values())
    seen = set(texts)
    variants, duplicates = [], 0
    for _ in range(copies):
        for text in texts:
            variant = _variant(text.split(), rng, vocabulary, weights, mask_token, mask_prob, replace_prob, ngram_prob)
            if variant in seen:
                duplicates += 1
                continue
            seen.add(variant)
            variants.append(variant)
    LOG.info("transfer set: %d variants of %d texts (%d duplicates dropped)", len(variants), len(texts), duplicates)
    return variants

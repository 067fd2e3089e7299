"""The text test: how green a text is under each watermark key, with an exact binomial p-value.

Green lists come from transformers' own `WatermarkLogitsProcessor` (the object `stillroom serve`
watermarks with), so the detector's green list is the generator's by construction: for "lefthash",
the processor seeds `torch.Generator` with `hashing_key * previous_token` and takes the first
`int(γ·V)` entries of `torch.randperm(V)`; for "selfhash", with the context and the candidate token.

Scoring. Each scored position is a pair (context window, token): the `context_width` tokens before a
token, and the token. Repeated pairs are scored once (Kirchenbauer et al. 2023, Sec. 7; Sander et al.
2024): a text that repeats a phrase, or many answers that share a template, would otherwise count the
same green or red draw many times, and a clean text or model would look watermarked. Under the null
(text not made with this key) each distinct pair's token is green with probability γ = int(γ·V)/V,
independently of the others, so the number of green pairs G among n is Binomial(n, γ).

p-value. p = P(Binomial(n, γ) >= G), computed exactly (`scipy.stats.binom.sf`, and a log-space sum
of the binomial terms when that underflows, down to p ~ 1e-10000). transformers' `WatermarkDetector`
reports the z-score's normal tail `0.5·erfc(z/√2)` instead: a closed-form approximation that is
fine near p = 0.01 but wrong by orders of magnitude far in the tail (the binomial's right tail is
heavier than the normal's for γ < 0.5), and it rounds to 0 below ~1e-308, so it cannot back a claim
such as p < 1e-12. The z-score is reported too, for comparison with the paper.

Several keys. Testing m keys means m chances of a false alarm; p-values are Holm-adjusted (uniformly
more powerful than Bonferroni, same family-wise error guarantee), and the cohorts whose adjusted
p-value is below α are said to have leaked.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from stillroom.guard.provenance.keys import WatermarkKey

Pair = tuple[tuple[int, ...], int]


def watermark_processor(key: WatermarkKey, vocab_size: int, device: str = "cpu"):
    """transformers' `WatermarkLogitsProcessor` for `key`: what `stillroom serve` adds to the logits."""
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    s = key.settings
    return WatermarkLogitsProcessor(vocab_size=vocab_size, device=device, greenlist_ratio=s.greenlist_ratio, bias=s.bias,
                                    hashing_key=key.hashing_key, seeding_scheme=s.seeding_scheme,
                                    context_width=s.context_width)


class GreenList:
    """Is `token` green after `context` under one key? Green lists are cached by their seed context."""

    def __init__(self, key: WatermarkKey, vocab_size: int, cache_size: int | None = None,
                 cache_bytes: int = 64 << 20, known_limit: int = 2_000_000):
        # one boolean mask of V bytes per cached context: bounded in bytes, since SmolLM2's V = 49,152 makes
        # 8,192 masks 400 MB a key, and a campaign alert tests every cohort's key
        cache_size = cache_size if cache_size is not None else max(64, cache_bytes // max(1, vocab_size))
        self.key = key
        self.vocab_size = vocab_size
        self.processor = watermark_processor(key, vocab_size)
        self.gamma = self.processor.greenlist_size / vocab_size
        self.width = key.settings.context_width
        self.selfhash = key.settings.seeding_scheme == "selfhash"
        self._masks: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._known: dict[tuple[int, int], bool] = {}  # lefthash (previous, token) -> green: tests of overlapping pairs
        self._known_limit = known_limit

    def _mask_after(self, previous: int) -> torch.Tensor:
        mask = self._masks.get(previous)
        if mask is None:
            ids = self.processor._get_greenlist_ids(torch.tensor([previous], dtype=torch.long))
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[ids] = True
            self._masks[previous] = mask
            if len(self._masks) > self._cache_size:
                self._masks.popitem(last=False)
        return mask

    def green(self, pairs: Sequence[Pair]) -> np.ndarray:
        """One boolean per pair."""
        out = np.zeros(len(pairs), dtype=bool)
        if not self.selfhash:  # lefthash: the green list depends on the last context token only
            # (previous, token) answers are remembered: one green list per previous token costs a randperm of V, and
            # a benchmark tests many overlapping pair sets (subsets, filters, models) under the same keys
            by_previous: dict[int, list[int]] = {}
            known = self._known
            for i, (context, token) in enumerate(pairs):
                hit = known.get((context[-1], token))
                if hit is None:
                    by_previous.setdefault(context[-1], []).append(i)
                else:
                    out[i] = hit
            if len(known) > self._known_limit:
                known.clear()
            for previous, rows in by_previous.items():
                mask = self._mask_after(previous)
                tokens = torch.tensor([pairs[i][1] for i in rows], dtype=torch.long).clamp(0, self.vocab_size - 1)
                out[rows] = mask[tokens].numpy() & np.array([pairs[i][1] < self.vocab_size for i in rows])
                known.update(((previous, pairs[i][1]), bool(out[i])) for i in rows)
            return out
        for i, (context, token) in enumerate(pairs):
            ids = self.processor._get_greenlist_ids(torch.tensor(list(context) + [token], dtype=torch.long))
            out[i] = bool((ids == token).any())
        return out


def pairs_of(sequence: Sequence[int], width: int) -> list[Pair]:
    """The (context window, token) pairs of one token sequence; its first `width` tokens have no full context."""
    seq = [int(t) for t in sequence]
    return [(tuple(seq[i - width:i]), seq[i]) for i in range(width, len(seq))]


def binomial_log10_sf(green: int, n: int, gamma: float) -> float:
    """log10 P(Binomial(n, γ) >= green), exact: scipy's survival function, else a log-space sum of the terms."""
    from scipy.special import gammaln, logsumexp
    from scipy.stats import binom

    if green <= 0:
        return 0.0
    if green > n:
        return -math.inf
    value = float(binom.logsf(green - 1, n, gamma))
    if math.isfinite(value) and value > -700:
        return value / math.log(10)
    k = np.arange(green, n + 1, dtype=np.float64)
    terms = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1) + k * math.log(gamma) + (n - k) * math.log1p(-gamma)
    return float(logsumexp(terms)) / math.log(10)


def z_score(green: int, n: int, gamma: float) -> float:
    return (green - gamma * n) / math.sqrt(n * gamma * (1 - gamma)) if n else 0.0


@dataclass
class KeyScore:
    """The test of one key: n distinct pairs scored, G green among them, z, exact p (and log10 p)."""

    key_id: str
    cohort: str
    epoch: int
    scored: int
    green: int
    gamma: float
    z: float
    log10_p: float
    total_pairs: int = 0  # before deduplication
    log10_p_adjusted: float | None = None
    fingerprint: str = ""  # the key's keyed hash (WatermarkKey.fingerprint), never the key

    @property
    def p_adjusted(self) -> float | None:
        if self.log10_p_adjusted is None:
            return None
        return 10.0 ** self.log10_p_adjusted if self.log10_p_adjusted > -320 else 0.0

    @property
    def p_value(self) -> float:
        return 10.0 ** self.log10_p if self.log10_p > -320 else 0.0

    @property
    def green_fraction(self) -> float:
        return self.green / self.scored if self.scored else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "cohort": self.cohort, "epoch": self.epoch, "fingerprint": self.fingerprint,
                "scored": self.scored,
                "green": self.green, "green_fraction": self.green_fraction, "gamma": self.gamma, "z": self.z,
                "p_value": self.p_value, "log10_p": self.log10_p, "p_adjusted": self.p_adjusted,
                "log10_p_adjusted": self.log10_p_adjusted, "total_pairs": self.total_pairs}


def score_pairs(pairs: Sequence[Pair], greens: GreenList, dedup: bool = True) -> KeyScore:
    """Score (context, token) pairs under one key; repeated pairs once when `dedup`."""
    total = len(pairs)
    if dedup:
        pairs = list(dict.fromkeys(pairs))
    green = int(greens.green(pairs).sum()) if pairs else 0
    n = len(pairs)
    key = greens.key
    return KeyScore(key.key_id, key.cohort, key.epoch, n, green, greens.gamma, z_score(green, n, greens.gamma),
                    binomial_log10_sf(green, n, greens.gamma), total_pairs=total, fingerprint=key.fingerprint)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down), in the input order."""
    return [10.0 ** v for v in holm_log10([math.log10(p) if p > 0 else -math.inf for p in p_values])]


def holm_log10(log10_p: Sequence[float]) -> list[float]:
    """Holm-Bonferroni in log10 space, so p-values below 1e-308 keep their size after adjustment."""
    m = len(log10_p)
    order = sorted(range(m), key=lambda i: log10_p[i])
    adjusted = [0.0] * m
    running = -math.inf
    for rank, i in enumerate(order):
        running = max(running, min(0.0, math.log10(m - rank) + log10_p[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class ProvenanceResult:
    """A test against several keys: each key's score, Holm-adjusted, and which cohorts leaked at level α."""

    mode: str  # "text", "open-weights" or "black-box"
    scores: list[KeyScore]
    alpha: float = 0.01
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        for score, value in zip(self.scores, holm_log10([s.log10_p for s in self.scores])):
            score.log10_p_adjusted = value

    @property
    def best(self) -> KeyScore | None:
        return min(self.scores, key=lambda s: s.log10_p) if self.scores else None

    @property
    def leaked(self) -> list[KeyScore]:
        return sorted([s for s in self.scores if s.log10_p_adjusted < math.log10(self.alpha)], key=lambda s: s.log10_p)

    def score(self, key_id: str) -> KeyScore:
        return next(s for s in self.scores if s.key_id == key_id)

    def to_dict(self) -> dict[str, Any]:
        """The alert's `provenance` field: the verdict, the attributed key, and every key's test."""
        best = self.best
        leaked = self.leaked
        return {"mode": self.mode, "alpha": self.alpha, "correction": "holm", "keys_tested": len(self.scores),
                "leaked": bool(leaked), "cohorts": sorted({s.cohort for s in leaked}),
                "key_id": leaked[0].key_id if leaked else None,
                "p_value": best.p_value if best else None, "log10_p": best.log10_p if best else None,
                "p_adjusted": best.p_adjusted if best else None,
                "log10_p_adjusted": best.log10_p_adjusted if best else None,
                "scores": [s.to_dict() for s in sorted(self.scores, key=lambda s: s.log10_p)], "notes": self.notes}


class Detector:
    """Tests token sequences against a set of keys; green lists are built once per key and reused."""

    def __init__(self, keys: Iterable[WatermarkKey], vocab_size: int, alpha: float = 0.01):
        self.keys = list(keys)
        if not self.keys:
            raise ValueError("a detector needs at least one key")
        widths = {k.settings.context_width for k in self.keys}
        if len(widths) != 1:
            raise ValueError(f"keys with different context widths {sorted(widths)} cannot share one pass")
        self.width = widths.pop()
        self.vocab_size = vocab_size
        self.alpha = alpha
        self.greens = [GreenList(k, vocab_size) for k in self.keys]

    def test_pairs(self, pairs: Sequence[Pair], mode: str = "text", dedup: bool = True) -> ProvenanceResult:
        return ProvenanceResult(mode, [score_pairs(pairs, g, dedup) for g in self.greens], self.alpha)

    def test_sequences(self, sequences: Iterable[Sequence[int]], mode: str = "text", dedup: bool = True) -> ProvenanceResult:
        """All sequences pooled into one test per key (a harvest, or a suspect's answers)."""
        pairs = [p for seq in sequences for p in pairs_of(seq, self.width)]
        return self.test_pairs(pairs, mode, dedup)

    def test_texts(self, texts: Iterable[str], tokenizer, mode: str = "text", dedup: bool = True) -> ProvenanceResult:
        """Texts are tokenized without special tokens, as the served completion was decoded."""
        sequences = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return self.test_sequences(sequences, mode, dedup)

"""Radioactivity: was a suspect model trained on watermarked text? (Sander et al., "Watermarking Makes
Language Models Radioactive", NeurIPS 2024.)

A model fine-tuned on text watermarked with key k learns the watermark's bias: after a context, it
prefers the tokens green under k. Two ways to see it:

- **open weights** (`read_model`): teacher-force the suspect on texts and take its top-1 next-token
  prediction at every position ("reading mode"). Each (context window, predicted token) pair is scored
  green or not under each key, repeated pairs once. Without deduplication a clean model looks
  radioactive: common contexts ("the", "\\n") recur thousands of times with the same prediction.
- **black box** (`generate_via_api`): sample the suspect's answers to prompts through an
  OpenAI-compatible API (`stillroom serve SUSPECT` hosts a local one), then run the text test.

Unsupervised and supervised reading. The tester may feed any text. Text that carries none of the tested
keys' watermark (held-out prompts, human answers) is the *unsupervised* setting: the suspect has never
seen it, and a clean model's predictions are independent of every key. The provider has better: its log
holds what the flagged campaign asked and the watermarked answers it was served, the very texts a student
of that campaign was trained on (Sander et al.'s *supervised* setting). Fed those, a student that
memorised part of them predicts the served, mostly green, tokens far more often than on unseen text.

The copy filter (`first_windows`). Feeding WATERMARKED text to a CLEAN model creates a false signal by
in-context copying. Under lefthash the green list at a position is seeded by the key and the window's last
token w (transformers' processor seeds from `input_ids[-1]` only). If w occurred earlier in the fed text,
the token that followed it there was chosen with that same green list, and a clean model that copies
("after w came t last time") predicts a green token more often than γ. So a position is scored only if its
seed has NOT been followed by a fed (possibly watermarked) token earlier:

- `"probe"` (default, exact): the texts are read as one stream, in order; a position is scored only at the
  first occurrence of its seed in the whole stream. Why the count is then Binomial(n, γ) for a clean model
  under any key: model the green lists of distinct seeds as independent uniform draws of int(γ·V) tokens
  (the processor's seeded `randperm`). A clean model's weights do not depend on the key, so its prediction
  at stream position s is a function of the text before s, whose watermarked tokens were chosen with the
  green lists of the seeds before s, all different from the seed w at s (first occurrence). The earlier
  scored indicators depend only on the green lists of their own seeds and on their predictions, again
  seeds before s. So, given everything scored before, G(w) is a fresh uniform draw independent of the
  prediction, which is green with probability exactly γ = int(γ·V)/V: the indicators are i.i.d.
  Bernoulli(γ), and at most one pair per seed is scored (top-1), so deduplication has nothing left to do.
- `"text"`: the first occurrence of the seed within each text, and (window, prediction) pairs deduplicated
  across texts. More pairs (a seed is scored again in each text it opens); within one text the argument
  above holds, across texts a second-order dependence remains (text A's prediction at w may depend on
  G(w') through a w' earlier in A, while text B scores w' and has w earlier). Checked on clean models by
  the benchmark's controls, not exact.
- `"off"`: every position; right only when no fed text carries any tested key's watermark.

Prompt tokens: what the attacker sent carries no watermark, so `marked_from[i]` (the prompt's length) says
where the fed (possibly watermarked) answer of text i starts. Only predictions of answer tokens are scored
(the last prompt position predicts the first answer token), and only answer tokens count as "followed by a
fed token" for the filter: a window followed by a prompt token was followed by the attacker's choice.

selfhash seeds from the window and the candidate, with a min-hash that lets different windows share a
seed; the filter keys on the window there, which is not exact. The benchmark and defaults use lefthash.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from stillroom.core.errors import StillroomError
from stillroom.guard.provenance.detect import Detector, Pair, ProvenanceResult

FIRST_WINDOWS = ("probe", "text", "off")


@dataclass
class Reading:
    """One text read by the suspect: its tokens, the suspect's top-k prediction after each position, and where the
    fed (possibly watermarked) part starts (0: all of it)."""

    tokens: list[int]
    predictions: list[list[int]]
    marked_from: int = 0


@torch.inference_mode()
def read_texts(model, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8, top_k: int = 1,
               marked_from: Sequence[int] | None = None, progress: bool = False) -> list[Reading]:
    """A teacher-forced pass over `sequences` (in their order): the suspect's top-k prediction at every real position.
    Sequences are right-padded in batches of similar length; padded positions are never read."""
    model.eval()
    if marked_from is not None and len(marked_from) != len(sequences):
        raise ValueError(f"marked_from has {len(marked_from)} entries for {len(sequences)} sequences")
    readings: list[Reading | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for rows in tqdm(batches, desc="reading the suspect", disable=not progress):
        chunk = [list(map(int, sequences[i])) for i in rows]
        length = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, seq in enumerate(chunk):
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        predicted = logits.topk(top_k, dim=-1).indices  # [B, L, k]
        for r, (index, seq) in enumerate(zip(rows, chunk)):
            readings[index] = Reading(seq, predicted[r, :len(seq)].tolist(),
                                      int(marked_from[index]) if marked_from is not None else 0)
    return readings  # type: ignore[return-value]


def _seed_of(window: tuple[int, ...], selfhash: bool):
    """What the green list after `window` is seeded from: lefthash, the last token (transformers ignores the rest)."""
    return window if selfhash else window[-1]


def scored_pairs(readings: Sequence[Reading], width: int, first_windows: str = "probe",
                 selfhash: bool = False) -> list[Pair]:
    """The (window, prediction) pairs to score, after the copy filter `first_windows` (see the module docstring)."""
    if first_windows not in FIRST_WINDOWS:
        raise ValueError(f"first_windows is {first_windows!r}; choose one of {', '.join(FIRST_WINDOWS)}")
    pairs: list[Pair] = []
    seen: set = set()
    for reading in readings:
        if first_windows == "text":
            seen = set()
        seq, start = reading.tokens, max(0, reading.marked_from)
        for i in range(width - 1, len(seq)):
            window = tuple(seq[i - width + 1:i + 1])
            seed = _seed_of(window, selfhash)
            if i + 1 >= start and (first_windows == "off" or seed not in seen):
                pairs.extend((window, int(token)) for token in reading.predictions[i])
            if i + 1 < len(seq) and i + 1 >= start:
                seen.add(seed)  # the fed token after this window is now in the context of every later position
    return pairs


def reading_pairs(model, sequences: Sequence[Sequence[int]], width: int, pad_id: int, batch_size: int = 8,
                  top_k: int = 1, progress: bool = False, marked_from: Sequence[int] | None = None,
                  first_windows: str = "probe", selfhash: bool = False) -> list[Pair]:
    """(context window, predicted token) pairs of a teacher-forced pass, after the copy filter."""
    readings = read_texts(model, sequences, pad_id, batch_size, top_k, marked_from, progress)
    return scored_pairs(readings, width, first_windows, selfhash)


def score_readings(readings: Sequence[Reading], detector: Detector, first_windows: str = "probe",
                  dedup: bool = True) -> ProvenanceResult:
    """The open-weights test of readings already made (one pass of the suspect serves several filters and subsets)."""
    selfhash = any(k.settings.seeding_scheme == "selfhash" for k in detector.keys)
    pairs = scored_pairs(readings, detector.width, first_windows, selfhash)
    result = detector.test_pairs(pairs, mode="open-weights", dedup=dedup)
    marked = sum(1 for r in readings if r.marked_from < len(r.tokens))
    result.notes.append(f"teacher-forced on {len(readings)} texts ({marked} scored from their answer on), top-"
                        f"{len(readings[0].predictions[0]) if readings and readings[0].predictions else 1} predictions; "
                        f"copy filter {first_windows!r}: {len(pairs)} (context, prediction) pairs, each distinct one "
                        f"scored once")
    return result


def read_model(model, sequences: Sequence[Sequence[int]], detector: Detector, pad_id: int, batch_size: int = 8,
               top_k: int = 1, dedup: bool = True, progress: bool = False, marked_from: Sequence[int] | None = None,
               first_windows: str = "probe") -> ProvenanceResult:
    """The open-weights radioactivity test of `model` against every key of `detector`.

    `marked_from[i]`: where the fed answer of sequence i starts (its prompt's length; default 0, all of it);
    `first_windows`: the copy filter, "probe" (exact, the default), "text", or "off" (only for fed text that carries
    no tested key's watermark)."""
    if first_windows not in FIRST_WINDOWS:
        raise ValueError(f"first_windows is {first_windows!r}; choose one of {', '.join(FIRST_WINDOWS)}")
    readings = read_texts(model, sequences, pad_id, batch_size, top_k, marked_from, progress)
    return score_readings(readings, detector, first_windows, dedup)


def generate_via_api(base_url: str, prompts: Sequence[str], *, model: str = "", max_tokens: int = 96,
                     temperature: float = 1.0, top_p: float = 1.0, api_key: str = "unused", concurrency: int = 16,
                     seed: int = 0, timeout: float = 600.0, progress: bool = False,
                     headers: dict[str, str] | None = None) -> list[str]:
    """The suspect's answers to `prompts` from an OpenAI-compatible chat API (`base_url` ends in /v1).

    Requests go out `concurrency` at a time, so a batching server (`stillroom serve`) decodes them together.
    """
    import httpx

    url = base_url.rstrip("/") + "/chat/completions"
    with httpx.Client(timeout=timeout, headers={"authorization": f"Bearer {api_key}", **(headers or {})}) as client:
        def ask(item: tuple[int, str]) -> str:
            index, prompt = item
            body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                                    "temperature": temperature, "top_p": top_p, "seed": seed + index}
            if model:
                body["model"] = model
            reply = client.post(url, json=body)
            if reply.status_code != 200:
                raise StillroomError(f"the suspect's API answered {reply.status_code}: {reply.text[:200]}", where=url)
            return str(reply.json()["choices"][0]["message"]["content"] or "")

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            try:
                return list(tqdm(pool.map(ask, enumerate(prompts)), total=len(prompts), desc="querying the suspect",
                                 disable=not progress))
            except httpx.HTTPError as exc:
                raise StillroomError(f"cannot reach the suspect's API: {exc}", where=url,
                                     hint="start it with `stillroom serve SUSPECT` and pass its /v1 URL") from None


def black_box(texts: Sequence[str], tokenizer, detector: Detector, dedup: bool = True) -> ProvenanceResult:
    """The black-box radioactivity test: the text test on the suspect's answers."""
    result = detector.test_texts(texts, tokenizer, mode="black-box", dedup=dedup)
    result.notes.append(f"{len(texts)} answers of the suspect, tokenized with the teacher's tokenizer")
    return result

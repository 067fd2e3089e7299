"""Radioactivity: was a suspect model trained on watermarked text? (Sander et al., "Watermarking Makes
Language Models Radioactive", NeurIPS 2024.)

A model fine-tuned on text watermarked with key k learns the watermark's bias: after a context, it
prefers the tokens green under k. Two ways to see it:

- **open weights** (`read_model`): teacher-force the suspect on fixed texts and take its top-1 next-token
  prediction at every position ("reading mode"). Each (context window, predicted token) pair is scored
  green or not under each key, repeated pairs once. The fed text is chosen by the tester and need not be
  watermarked; a clean model's predictions are independent of a secret key, so their green share is
  Binomial(n, γ) and the exact test of `detect` applies. Without deduplication a clean model looks
  radioactive: common contexts ("the", "\\n") recur thousands of times with the same prediction.
- **black box** (`generate_via_api`): sample the suspect's answers to fixed prompts through an
  OpenAI-compatible API (`stillroom serve SUSPECT` hosts a local one), then run the text test.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from stillroom.core.errors import StillroomError
from stillroom.guard.provenance.detect import Detector, Pair, ProvenanceResult


@torch.inference_mode()
def reading_pairs(model, sequences: Sequence[Sequence[int]], width: int, pad_id: int, batch_size: int = 8,
                  top_k: int = 1, progress: bool = False) -> list[Pair]:
    """(context window, predicted token) pairs of a teacher-forced pass: the suspect's top-k prediction after each
    window of `width` real tokens. Sequences are right-padded; padded positions are never read."""
    model.eval()
    pairs: list[Pair] = []
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
        for r, seq in enumerate(chunk):
            for i in range(width - 1, len(seq)):
                context = tuple(seq[i - width + 1:i + 1])
                for token in predicted[r, i].tolist():
                    pairs.append((context, int(token)))
    return pairs


def read_model(model, sequences: Sequence[Sequence[int]], detector: Detector, pad_id: int, batch_size: int = 8,
               top_k: int = 1, dedup: bool = True, progress: bool = False) -> ProvenanceResult:
    """The open-weights radioactivity test of `model` against every key of `detector`."""
    pairs = reading_pairs(model, sequences, detector.width, pad_id, batch_size, top_k, progress)
    result = detector.test_pairs(pairs, mode="open-weights", dedup=dedup)
    result.notes.append(f"teacher-forced on {len(sequences)} texts, top-{top_k} predictions; "
                        f"{len(pairs)} (context, prediction) pairs, scored once each")
    return result


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

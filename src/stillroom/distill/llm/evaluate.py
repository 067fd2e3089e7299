"""What the LLM card measures for each model.

- `nll`: mean negative log-likelihood (nats/token) of the teacher's greedy
  held-out generations under the model;
- `agreement`: share of those positions where the model's top-1 next token is
  the teacher's top-1 (teacher-forced on the teacher's text);
- `tok_s_b1`, `tok_s_b32`: greedy generation throughput, exactly 48 new tokens a
  prompt, at batch 1 and batch 32, on a fixed number of CPU threads;
- `params`, `bytes`: parameter count and serialized size.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from stillroom.core.measure import count_parameters, cpu_threads, serialized_bytes, throughput
from stillroom.distill.llm.generate import GenerationCache, left_pad
from stillroom.distill.types import Item
from stillroom.distill.llm.train import logits_at, make_batch


def heldout_item_metrics(model, items: Sequence[Item], cache: GenerationCache, pad_id: int, batch_size: int = 8,
                         threads: int = 2) -> dict[str, list]:
    """Per item, teacher-forced on its completion: summed NLL of the teacher's tokens (`nll`), positions where the
    model's top-1 is the teacher's top-1 (`agree`), and completion tokens (`tokens`)."""
    per: dict[str, list] = {"nll": [], "agree": [], "tokens": []}
    with cpu_threads(threads), torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = make_batch([(item.prompt_ids, item.completion_ids) for item in chunk], pad_id)
            logits = logits_at(model, batch).float()
            teacher_top1 = torch.cat([cache.sparse(item).ids[:, 0] for item in chunk])
            nll = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="none")
            agree = (logits.argmax(-1) == teacher_top1).long()
            offset = 0
            for item in chunk:
                n = len(item.completion_ids)
                per["nll"].append(float(nll[offset:offset + n].sum()))
                per["agree"].append(int(agree[offset:offset + n].sum()))
                per["tokens"].append(n)
                offset += n
    return per


def heldout_metrics(model, items: Sequence[Item], cache: GenerationCache, pad_id: int, batch_size: int = 8,
                    threads: int = 2) -> dict[str, float]:
    """NLL of the teacher's tokens and top-1 agreement with the teacher's argmax, over all completion tokens."""
    per = heldout_item_metrics(model, items, cache, pad_id, batch_size, threads)
    count = sum(per["tokens"])
    return {"nll": sum(per["nll"]) / count, "agreement": sum(per["agree"]) / count, "eval_tokens": count}


def generation_speed(model, pad_id: int, prompts: Sequence[Sequence[int]], batch: int, new_tokens: int = 48,
                     calls: int = 1, threads: int = 2) -> float:
    """Greedy tokens/s generating exactly `new_tokens` for `batch` prompts at a time, over `calls` batches."""
    pool = [prompts[i % len(prompts)] for i in range(batch * calls)]
    batches = [left_pad(pool[i:i + batch], pad_id) for i in range(0, len(pool), batch)]

    def call(input_ids, mask, n=new_tokens):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           temperature=None, top_p=None, top_k=None, pad_token_id=pad_id)

    with cpu_threads(threads), torch.inference_mode():
        call(*batches[0], n=2)  # warm-up: allocator and kernels, not timed
    return throughput([lambda b=b: call(*b) for b in batches], [batch * new_tokens] * len(batches), threads=threads, warmup=0)


def size_metrics(model) -> dict[str, int]:
    return {"params": count_parameters(model), "bytes": serialized_bytes(model)}

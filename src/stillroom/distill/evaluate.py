"""Quality, size and speed of a classifier: one row of the card."""

from __future__ import annotations

import torch
from sklearn.metrics import f1_score
from torch import nn

from stillroom.core.measure import count_parameters, latency_ms, serialized_bytes, throughput
from stillroom.distill.encoding import Encoded
from stillroom.distill.models import run_model


@torch.inference_mode()
def predict_logits(model: nn.Module, data: Encoded, batch_size: int = 128) -> torch.Tensor:
    was_training = model.training
    model.eval()
    logits = None
    for batch in data.batches(batch_size):
        out = run_model(model, batch["input_ids"], batch["attention_mask"]).logits.float()
        if logits is None:
            logits = out.new_empty((len(data), out.shape[-1]))
        logits[batch["index"]] = out
    model.train(was_training)
    return logits


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    predicted = logits.argmax(-1).numpy()
    truth = labels.numpy()
    return {"accuracy": float((predicted == truth).mean()),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0))}


def evaluator(data: Encoded, batch_size: int = 128):
    """A function `model -> {accuracy, macro_f1, nll}` on `data`, for the training loop's per-epoch evaluation.

    The mean negative log-likelihood breaks ties in accuracy: an easy validation set saturates at
    1.0 early, and without it the first perfect epoch would be kept however much training followed.
    """
    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, data, batch_size)
        nll = float(torch.nn.functional.cross_entropy(logits, data.labels))
        return scores(logits, data.labels) | {"nll": nll}
    return evaluate


def speed(model: nn.Module, data: Encoded, threads: int = 2, samples: int = 100, batch_size: int = 64,
          batches: int = 4) -> dict[str, float]:
    """Latency at batch 1 (median, p90; model forward on tokenized inputs) and throughput at `batch_size`."""
    model.eval()
    singles = [data.batch([i % len(data)]) for i in range(samples)]
    single_calls = [lambda b=b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]) for b in singles]
    latency = latency_ms(single_calls, threads=threads)
    big = [data.batch([(k * batch_size + j) % len(data) for j in range(batch_size)]) for k in range(batches)]
    batch_calls = [lambda b=b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]) for b in big]
    rate = throughput(batch_calls, [batch_size] * batches, threads=threads)
    return {"latency_ms_b1": latency["median"], "latency_p90_ms_b1": latency["p90"], "throughput_b64": rate}


def card_row(name: str, model: nn.Module, test: Encoded, threads: int = 2, samples: int = 100,
             batch_size: int = 64, batches: int = 4) -> dict:
    row = {"name": name, **scores(predict_logits(model, test), test.labels),
           "params": count_parameters(model), "bytes": serialized_bytes(model)}
    row.update(speed(model, test, threads, samples, batch_size, batches))
    return row

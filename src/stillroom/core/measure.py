"""What a card measures: size, CPU latency and throughput, and int8 variants.

Timings run on the CPU with a fixed thread count (2 by default, the size of the
reference machine), after warm-up, and report the median and p90 of repeats.
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time
import warnings
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Parameters, counting tied tensors once. Quantized Linear weights count as parameters too."""
    seen: set[int] = set()
    total = 0
    for tensor in model.parameters():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel()
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(module, "weight"):
            weight, bias = module._weight_bias()
            total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as written to disk (shared tensors stored once).

    `torch.save` is used for every row, float or int8, because safetensors cannot
    hold packed int8 weights; the two formats differ by a header of a few KB.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every `nn.Linear` (weights int8, activations quantized per batch)."""
    quantizable = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(quantizable, {nn.Linear}, dtype=torch.qint8)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_ms(calls: Sequence[Callable[[], object]], threads: int = 2, warmup: int = 3) -> dict[str, float]:
    """Median and p90 latency over a list of single-input calls (one timing each)."""
    with cpu_threads(threads):
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for call in calls[:warmup]:
                call()
            times = []
            for call in calls:
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1000)
    return {"median": statistics.median(times), "p90": percentile(times, 90)}


def throughput(calls: Sequence[Callable[[], object]], items_per_call: Sequence[int], threads: int = 2,
               warmup: int = 1) -> float:
    """Items per second over a list of batched calls."""
    with cpu_threads(threads):
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for call in calls[:warmup]:
                call()
            start = time.perf_counter()
            for call in calls:
                call()
            elapsed = time.perf_counter() - start
    return sum(items_per_call) / elapsed

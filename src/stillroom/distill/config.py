"""The classifier-distillation recipe: every option of a run, in one typed schema.

`stillroom recipes classifier` prints the built-in recipe with comments.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from stillroom.core.recipe import Schema


class DataConfig(Schema):
    path: Optional[str] = None
    """Training data (CSV, TSV, JSONL, Parquet). None: the built-in demo data."""
    text_column: str = "text"
    label_column: str = "label"
    validation_path: Optional[str] = None
    test_path: Optional[str] = None
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    drop_empty: bool = False
    max_length: int = Field(64, ge=4, le=4096)


class AugmentConfig(Schema):
    """A transfer set labelled by the teacher (Tang et al. 2019, "Distilling task-specific knowledge from BERT")."""

    copies: int = Field(0, ge=0)
    """Synthetic variants per training text; 0 turns augmentation off."""
    mask_prob: float = Field(0.1, ge=0.0, le=1.0)
    replace_prob: float = Field(0.1, ge=0.0, le=1.0)
    ngram_prob: float = Field(0.25, ge=0.0, le=1.0)


class FinetuneConfig(Schema):
    epochs: float = Field(3, gt=0)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)


class TeacherConfig(Schema):
    path: Optional[str] = None
    """A local folder: a sequence classifier, or a base encoder that stillroom fine-tunes. None: all-MiniLM-L6-v2."""
    kind: Literal["auto", "classifier", "encoder"] = "auto"
    finetune: FinetuneConfig = FinetuneConfig()
    trust_remote_code: bool = False


class StudentConfig(Schema):
    kind: Literal["layers", "config"] = "layers"
    """layers: keep some of the teacher's layers and its embeddings (DistilBERT); config: a smaller, random model."""
    layers: Optional[list[int]] = None
    """Teacher layers to keep (0-based). None: `num_layers` spread evenly."""
    num_layers: int = Field(2, ge=1)
    hidden_size: Optional[int] = None
    """For kind: config. None keeps the teacher's width."""
    intermediate_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    trim_vocab: bool = False
    """Keep only the vocabulary the data uses (plus single characters), shrinking the embedding matrix."""


class LossConfig(Schema):
    name: Literal["hinton_kd", "ce", "logit_mse", "hidden_cosine", "hidden_mse"]
    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """hinton_kd: weight of the soft-target term; 1 - alpha weighs hard-label cross-entropy."""
    layer_map: Optional[dict[int, int]] = None
    """hidden_*: student hidden-state index -> teacher index (0 is the embeddings). None: uniform, last to last."""


class TrainingConfig(Schema):
    epochs: float = Field(3, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    teacher_signal: Literal["cached", "online"] = "cached"
    """cached: teacher outputs computed once and reused; online: the teacher runs every step."""
    checkpoint_every: int = Field(200, ge=1)
    """Steps between checkpoints; a killed run resumes from the last one."""
    eval_batch_size: int = Field(128, ge=1)
    dropout: Optional[float] = Field(None, ge=0, lt=1)
    """Override the model's dropout probabilities. None keeps them."""


class CardConfig(Schema):
    threads: int = Field(2, ge=1)
    latency_samples: int = Field(100, ge=5)
    throughput_batch_size: int = Field(64, ge=1)
    throughput_batches: int = Field(4, ge=1)
    int8: bool = True


class ClassifierRecipe(Schema):
    kind: Literal["classifier"] = "classifier"
    name: str = "classifier"
    output_dir: str = "runs"
    seed: int = 0
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    losses: list[LossConfig] = [LossConfig(name="hinton_kd")]
    training: TrainingConfig = TrainingConfig()
    scratch_baseline: bool = True
    """Also train the same student on hard labels only, for the card's gap-closed column."""
    card: CardConfig = CardConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return value

    @model_validator(mode="after")
    def _losses_given(self) -> "ClassifierRecipe":
        if not self.losses:
            raise ValueError("losses: give at least one loss, e.g. [{name: hinton_kd}]")
        return self

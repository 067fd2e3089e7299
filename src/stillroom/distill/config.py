"""The classifier-distillation recipe: every option of a run, in one typed schema.

`stillroom recipes classifier` prints the built-in recipe with comments.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from stillroom.core.recipe import BaseRecipe, Schema


class DataConfig(Schema):
    path: Optional[str] = None
    """Training data (CSV, TSV, JSONL, Parquet). None: the built-in demo data."""
    text_column: str = "text"
    label_column: str = "label"
    validation_path: Optional[str] = None
    test_path: Optional[str] = None
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of what remains after the test split is taken (when no validation_path is given)."""
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    drop_empty: bool = False
    max_length: int = Field(64, ge=4, le=4096)
    unlabeled: Optional[str] = None
    """Texts with no labels (CSV, TSV, JSONL, Parquet; the `text_column`) that the teacher labels: the transfer
    set a team has when a large model already labels its traffic. Only the teacher-signal rows use them."""

    @model_validator(mode="after")
    def _splits_need_data(self) -> "DataConfig":
        if self.path is None and (self.test_path or self.validation_path or self.unlabeled):
            raise ValueError("test_path, validation_path and unlabeled need data.path too; "
                             "without it the built-in demo data is used")
        return self


class AugmentConfig(Schema):
    """A transfer set labelled by the teacher (Tang et al. 2019, "Distilling task-specific knowledge from BERT")."""

    copies: int = Field(0, ge=0)
    """Fixed synthetic variants per training text, added to the transfer set once; 0 turns them off."""
    views: int = Field(0, ge=0)
    """Fresh views: every epoch each transfer-set text is shown as one of its `views + 1` versions (the text
    and `views` augmented ones), drawn anew, and the teacher scores that same version: live, or from a cache
    of all versions. 0 turns them off (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient
    and consistent")."""
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

    @model_validator(mode="after")
    def _options_fit_the_kind(self) -> "StudentConfig":
        if self.kind == "layers" and any(v is not None for v in (self.hidden_size, self.intermediate_size,
                                                                  self.num_attention_heads)):
            raise ValueError("hidden_size, intermediate_size and num_attention_heads apply to kind: config only")
        if self.kind == "config" and self.layers is not None:
            raise ValueError("layers applies to kind: layers only; use num_layers for kind: config")
        return self


class LossConfig(Schema):
    name: Literal["hinton_kd", "pseudo_label", "ce", "logit_mse", "hidden_cosine", "hidden_mse"]
    weight: float = Field(1.0, ge=0.0)
    temperature: Optional[float] = Field(None, gt=0)
    """hinton_kd only; None means 2.0."""
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0)
    """hinton_kd and pseudo_label: weight of the teacher term; 1 - alpha weighs gold-label cross-entropy. None means 0.5."""

    @property
    def kd_temperature(self) -> float:
        return 2.0 if self.temperature is None else self.temperature

    @property
    def kd_alpha(self) -> float:
        return 0.5 if self.alpha is None else self.alpha
    layer_map: Optional[dict[int, int]] = None
    """hidden_*: student hidden-state index -> teacher index (0 is the embeddings). None: for a student built
    from teacher layers, each layer's output to the output of the teacher layer it copies; otherwise uniform,
    last to last (TinyBERT)."""

    @model_validator(mode="after")
    def _options_fit_the_loss(self) -> "LossConfig":
        if self.name != "hinton_kd" and self.temperature is not None:
            raise ValueError(f"temperature applies to hinton_kd only, not to {self.name}")
        if self.name not in ("hinton_kd", "pseudo_label") and self.alpha is not None:
            raise ValueError(f"alpha applies to hinton_kd and pseudo_label only, not to {self.name}")
        if not self.name.startswith("hidden_") and self.layer_map is not None:
            raise ValueError(f"layer_map applies to hidden_cosine and hidden_mse only, not to {self.name}")
        return self


class TrainingConfig(Schema):
    epochs: float = Field(3, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    teacher_signal: Literal["cached", "online", "sparse"] = "cached"
    """cached: teacher outputs computed once and reused; online: the teacher runs every step;
    sparse: the cached top-`sparse_k` log-probabilities per example and the tail mass."""
    sparse_k: int = Field(8, ge=1)
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


class ClassifierRecipe(BaseRecipe):
    kind: Literal["classifier"] = "classifier"
    name: str = "classifier"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    losses: list[LossConfig] = [LossConfig(name="hinton_kd")]
    training: TrainingConfig = TrainingConfig()
    scratch_baseline: bool = True
    """Also train the baselines below, for the card's gap-closed column; false trains the distilled student only."""
    baselines: list[Literal["scratch", "teacher_init", "pseudo_label"]] = ["scratch", "teacher_init", "pseudo_label"]
    """scratch: the student's architecture from the pre-trained encoder (never the fine-tuned teacher), a fresh
    head, hard labels only, what a user without a teacher gets; teacher_init: the student copied from the
    fine-tuned teacher, hard labels only; pseudo_label: the distilled student's transfer set and views with the
    teacher's argmax as hard labels. Each trains for as many steps as the distilled student."""
    card: CardConfig = CardConfig()

    @model_validator(mode="after")
    def _losses_given(self) -> "ClassifierRecipe":
        if not self.losses:
            raise ValueError("losses: give at least one loss, e.g. [{name: hinton_kd}]")
        return self

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with MiniLM's real tokenizer, saved like any local encoder folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from stillroom.distill.models import default_encoder_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-encoder")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_encoder_path()).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_recipe(tiny_encoder_dir, tmp_path):
    """A classifier recipe on the demo data with the tiny encoder as teacher: seconds, not minutes."""
    from stillroom.distill.config import ClassifierRecipe

    def make(**overrides):
        data = {
            "name": "tiny", "output_dir": str(tmp_path / "runs"), "seed": 0,
            "teacher": {"path": str(tiny_encoder_dir), "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 64}},
            "student": {"num_layers": 2},
            "training": {"epochs": 1, "batch_size": 64, "lr": 1e-3, "checkpoint_every": 5},
            "card": {"threads": 1, "latency_samples": 5, "throughput_batches": 1, "int8": False},
        }
        for key, value in overrides.items():
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return ClassifierRecipe.model_validate(data)

    return make

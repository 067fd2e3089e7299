import math
import random
from unittest import mock

import torch

from stillroom.distill.encoding import Encoded
from stillroom.distill.evaluate import evaluator
from stillroom.distill.batches import epoch_batches, process_share
from stillroom.distill.trainer import _improves


def test_epoch_batches_cover_every_example_once_and_are_reproducible():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(1003)]
    batches = epoch_batches(lengths, 32, seed=1, epoch=2)
    assert len(batches) == math.ceil(1003 / 32)
    assert sorted(torch.cat(batches).tolist()) == list(range(1003))
    assert all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(lengths, 32, seed=1, epoch=2)))
    assert not all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(lengths, 32, seed=1, epoch=3)))
    padded = sum(len(b) * max(lengths[i] for i in b.tolist()) for b in batches)
    assert padded < 0.7 * 1003 * 60, "grouping by length should cut padding well below random batches"


def test_eval_batches_return_indices_to_restore_order():
    data = Encoded([[1] * n for n in (5, 2, 9, 1)], torch.tensor([0, 1, 2, 3]), pad_id=0)
    seen = []
    for batch in data.batches(2):
        assert batch["input_ids"].shape[1] == max(len(data.input_ids[i]) for i in batch["index"].tolist())
        seen += batch["index"].tolist()
    assert sorted(seen) == [0, 1, 2, 3] and seen == [3, 1, 0, 2]


def test_every_process_gets_a_share_even_of_a_one_example_batch():
    assert [process_share(torch.tensor([7]), rank, 2).tolist() for rank in (0, 1)] == [[7], [7]]
    shares = [process_share(torch.arange(5), rank, 2).tolist() for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == [0, 1, 2, 3, 4]
    assert process_share(torch.arange(5), 0, 1).tolist() == [0, 1, 2, 3, 4]


def test_best_checkpoint_ties_in_accuracy_go_to_the_lower_validation_nll():
    state = {"best_metric": 1.0, "best_nll": 0.40}
    assert _improves({"accuracy": 1.0, "nll": 0.25}, "accuracy", state)
    assert not _improves({"accuracy": 1.0, "nll": 0.50}, "accuracy", state)
    assert _improves({"accuracy": 0.9, "nll": 0.1}, "accuracy", {"best_metric": -math.inf})
    assert not _improves({"accuracy": 0.9, "nll": 0.1}, "accuracy", state)


def test_evaluator_reports_the_validation_nll():
    data = Encoded([[1, 2], [3]], torch.tensor([0, 1]), pad_id=0)
    model = lambda input_ids, attention_mask: None  # noqa: E731
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    evaluate = evaluator(data)
    with mock.patch("stillroom.distill.evaluate.predict_logits", return_value=logits):
        scores = evaluate(model)
    assert scores["accuracy"] == 1.0
    assert math.isclose(scores["nll"], float(torch.nn.functional.cross_entropy(logits, data.labels)), rel_tol=1e-6)

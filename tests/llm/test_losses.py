"""Each divergence against values computed by hand on tiny distributions, dense and from the sparse cache."""

from __future__ import annotations

import math

import pytest
import torch

from stillroom.core.errors import RecipeError
from stillroom.distill.llm.generate import topk_targets
from stillroom.distill.llm.losses import LOSSES
from stillroom.distill.types import DenseTarget, SparseTargets

P = [0.7, 0.2, 0.1]  # teacher
Q = [0.2, 0.5, 0.3]  # student
# By hand:
# KL(P||Q) = .7 ln 3.5 + .2 ln .4 + .1 ln(1/3)                  = 0.583815
# KL(Q||P) = .2 ln(2/7) + .5 ln 2.5 + .3 ln 3                   = 0.537176
# M = (P+Q)/2 = [.45, .35, .2]
# KL(P||M) = .7 ln(.7/.45) + .2 ln(.2/.35) + .1 ln(.1/.2)      = 0.128045
# KL(Q||M) = .2 ln(.2/.45) + .5 ln(.5/.35) + .3 ln(.3/.2)      = 0.137791
# JSD(0.5) = (0.128045 + 0.137791) / 2                          = 0.132918
FORWARD, REVERSE, JSD_HALF = 0.583815, 0.537176, 0.132918


def logits(probs):
    return torch.tensor([probs]).log()


def loss(name, teacher_probs=P, student_probs=Q, **kwargs):
    fn = LOSSES.get(name)(**kwargs)
    return float(fn(logits(student_probs), DenseTarget(logits(teacher_probs)), torch.tensor([0])))


def test_forward_kl_by_hand():
    assert loss("forward_kl") == pytest.approx(FORWARD, abs=1e-5)


def test_reverse_kl_by_hand():
    assert loss("reverse_kl") == pytest.approx(REVERSE, abs=1e-5)


def test_jsd_half_by_hand_and_symmetric():
    assert loss("jsd", beta=0.5) == pytest.approx(JSD_HALF, abs=1e-5)
    assert loss("jsd", teacher_probs=Q, student_probs=P, beta=0.5) == pytest.approx(JSD_HALF, abs=1e-5)


def test_jsd_beta_quarter_follows_gkd_definition():
    beta = 0.25
    m = [beta * p + (1 - beta) * q for p, q in zip(P, Q)]  # [.325, .425, .25]
    kl_pm = sum(p * math.log(p / mi) for p, mi in zip(P, m))
    kl_qm = sum(q * math.log(q / mi) for q, mi in zip(Q, m))
    assert loss("jsd", beta=beta) == pytest.approx(beta * kl_pm + (1 - beta) * kl_qm, abs=1e-6)
    assert loss("jsd", beta=beta) != pytest.approx(loss("jsd", beta=0.75), abs=1e-4)


def test_temperature_softens_both_sides_and_scales_by_t_squared():
    t = 2.0
    soft = lambda probs: [x ** (1 / t) / sum(y ** (1 / t) for y in probs) for x in probs]
    p, q = soft(P), soft(Q)
    expected = t * t * sum(a * math.log(a / b) for a, b in zip(p, q))
    assert loss("forward_kl", temperature=t) == pytest.approx(expected, abs=1e-5)


def test_sft_is_cross_entropy_on_the_teacher_token():
    fn = LOSSES.get("sft")()
    assert not fn.needs_teacher
    value = float(fn(logits(Q), None, torch.tensor([1])))
    assert value == pytest.approx(-math.log(0.5), abs=1e-6)


def test_sparse_forward_kl_by_hand():
    # teacher [.6, .25, .1, .05] keeps top-2 + tail .15; student [.3, .3, .2, .2] -> [.3, .3] + tail .4
    # KL = .6 ln(.6/.3) + .25 ln(.25/.3) + .15 ln(.15/.4) = 0.223184
    teacher = topk_targets(logits([0.6, 0.25, 0.1, 0.05]), k=2)
    assert teacher.ids.tolist() == [[0, 1]]
    assert float(teacher.log_tail.exp()) == pytest.approx(0.15, abs=1e-6)
    fn = LOSSES.get("forward_kl")()
    value = float(fn(logits([0.3, 0.3, 0.2, 0.2]), teacher, torch.tensor([0])))
    assert value == pytest.approx(0.223184, abs=1e-5)


def test_sparse_reverse_kl_by_hand():
    # KL(q||p) over buckets = .3 ln(.3/.6) + .3 ln(.3/.25) + .4 ln(.4/.15) = 0.239084
    teacher = SparseTargets(torch.tensor([[0.6, 0.25]]).log(), torch.tensor([[0, 1]]), torch.tensor([0.15]).log())
    fn = LOSSES.get("reverse_kl")()
    value = float(fn(logits([0.3, 0.3, 0.2, 0.2]), teacher, torch.tensor([0])))
    assert value == pytest.approx(0.3 * math.log(0.5) + 0.3 * math.log(1.2) + 0.4 * math.log(0.4 / 0.15), abs=1e-5)
    assert value == pytest.approx(0.239084, abs=1e-5)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_sparse_with_full_top_k_equals_dense_and_smaller_k_never_exceeds_it(name):
    torch.manual_seed(0)
    teacher_logits, student_logits = torch.randn(5, 12) * 2, torch.randn(5, 12)
    fn = LOSSES.get(name)()
    dense = fn(student_logits, DenseTarget(teacher_logits), None)
    full = fn(student_logits, topk_targets(teacher_logits, 12), None)
    assert float(full) == pytest.approx(float(dense), abs=1e-5)
    for k in (1, 3, 6):
        assert float(fn(student_logits, topk_targets(teacher_logits, k), None)) <= float(dense) + 1e-6


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_sparse_losses_have_finite_gradients(name):
    torch.manual_seed(1)
    student_logits = torch.randn(4, 50, requires_grad=True)
    target = topk_targets(torch.randn(4, 50) * 5, 8)
    LOSSES.get(name)(temperature=2.0)(student_logits, target, None).backward()
    assert torch.isfinite(student_logits.grad).all() and student_logits.grad.abs().sum() > 0


def test_dense_shapes_must_match():
    with pytest.raises(ValueError, match="vocabularies must match"):
        LOSSES.get("forward_kl")()(torch.randn(2, 10), DenseTarget(torch.randn(2, 12)), None)


def test_unknown_loss_lists_the_names():
    with pytest.raises(RecipeError, match="forward_kl, jsd, reverse_kl, sft"):
        LOSSES.get("kl")

import math

import pytest
import torch
import torch.nn.functional as F

from stillroom.distill.config import LossConfig
from stillroom.distill.losses import (IGNORE, CrossEntropy, HiddenCosine, HiddenMSE, HintonKD, LogitMSE, Outputs,
                                      build_losses, uniform_layer_map)


def _softmax(values, t):
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def test_hinton_kd_matches_a_hand_computed_value():
    s, t, y, temperature, alpha = [1.0, 0.0, -1.0], [2.0, 1.0, 0.0], 0, 2.0, 0.3
    p_t, p_s = _softmax(t, temperature), _softmax(s, temperature)
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    ce = -math.log(_softmax(s, 1.0)[y])
    expected = alpha * temperature ** 2 * kl + (1 - alpha) * ce

    loss = HintonKD(temperature, alpha)(Outputs(torch.tensor([s])), Outputs(torch.tensor([t])), torch.tensor([y]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hinton_kd_scales_the_soft_term_by_t_squared():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    for temperature in (1.0, 2.0, 4.0, 8.0):
        kl = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1), reduction="batchmean")
        loss = HintonKD(temperature, alpha=1.0)(Outputs(student), Outputs(teacher), labels)
        assert loss.item() == pytest.approx(temperature ** 2 * kl.item(), rel=1e-5)


def test_t_squared_keeps_soft_gradients_comparable_across_temperatures():
    # Without T², gradients shrink as 1/T²; with it, their size stays of the same order (Hinton et al. 2015, §2).
    torch.manual_seed(1)
    teacher = torch.randn(64, 10) * 3
    norms = {}
    for temperature in (2.0, 8.0):
        student = (torch.randn(64, 10) * 3).requires_grad_()
        HintonKD(temperature, 1.0)(Outputs(student), Outputs(teacher), torch.zeros(64, dtype=torch.long)).backward()
        norms[temperature] = student.grad.norm().item()
    assert 0.25 < norms[8.0] / norms[2.0] < 4.0


def test_hard_label_term_ignores_unlabelled_transfer_examples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labelled = CrossEntropy()(Outputs(logits), None, torch.tensor([0, IGNORE]))
    assert labelled.item() == pytest.approx(F.cross_entropy(logits[:1], torch.tensor([0])).item())
    teacher = torch.tensor([[0.0, 3.0], [3.0, 0.0]])
    none = HintonKD(2.0, 0.0)(Outputs(logits), Outputs(teacher), torch.tensor([IGNORE, IGNORE]))
    assert none.item() == 0.0
    soft_only = HintonKD(2.0, 1.0)(Outputs(logits), Outputs(teacher), torch.tensor([IGNORE, IGNORE]))
    mixed = HintonKD(2.0, 0.5)(Outputs(logits), Outputs(teacher), torch.tensor([IGNORE, IGNORE]))
    assert mixed.item() == pytest.approx(0.5 * soft_only.item()) and soft_only.item() > 0


def test_logit_mse():
    loss = LogitMSE()(Outputs(torch.tensor([[1.0, 2.0]])), Outputs(torch.tensor([[3.0, 2.0]])), torch.tensor([0]))
    assert loss.item() == pytest.approx(2.0)


def test_hidden_losses_are_zero_on_equal_states_and_project_different_widths():
    states = {1: torch.randn(4, 8), 2: torch.randn(4, 8)}
    same = Outputs(torch.zeros(4, 2), states)
    assert HiddenCosine({1: 1, 2: 2}, 8, 8)(same, same, None).item() == pytest.approx(0.0, abs=1e-6)
    assert HiddenMSE({1: 1, 2: 2}, 8, 8)(same, same, None).item() == pytest.approx(0.0, abs=1e-6)
    narrow = Outputs(torch.zeros(4, 2), {2: torch.randn(4, 4)})
    loss = HiddenMSE({2: 6}, 4, 8)
    value = loss(narrow, Outputs(torch.zeros(4, 2), {6: torch.randn(4, 8)}), None)
    value.backward()
    assert loss.projections["2"].weight.grad is not None


def test_uniform_layer_map_sends_last_to_last():
    assert uniform_layer_map(2, 6) == {1: 3, 2: 6}
    assert uniform_layer_map(3, 6) == {1: 2, 2: 4, 3: 6}


def test_composite_loss_weights_terms_and_reports_each():
    composite = build_losses([LossConfig(name="ce", weight=2.0), LossConfig(name="logit_mse", weight=0.5)], 0, 0, 0, 0)
    s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([1])
    total, parts = composite(Outputs(s), Outputs(t), y)
    assert set(parts) == {"ce", "logit_mse"}
    assert total.item() == pytest.approx(2.0 * parts["ce"] + 0.5 * parts["logit_mse"], rel=1e-6)
    assert composite.uses_teacher

"""The mathematics of distill.losses, checked against references written differently
(numpy, explicit loops over positions)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import losses

BATCH, SEQ, VOCAB = 2, 5, 11


def _inputs(seed=0, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(BATCH, SEQ, VOCAB, generator=generator) * scale
    teacher = torch.randn(BATCH, SEQ, VOCAB, generator=generator) * scale
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)
    labels[0, 0] = labels[0, 1] = labels[1, 4] = losses.IGNORE_INDEX
    return student, teacher, labels


def _np_log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    shifted = row - row.max()
    return shifted - math.log(np.exp(shifted).sum())


def reference_kl(student, teacher, labels, temperature, reverse=False):
    """Mean over kept positions of sum_v p (log p - log q), one position at a time:
    p = teacher, q = student (forward) or the other way round (reverse)."""
    s, t, lab = student.numpy(), teacher.numpy(), labels.numpy()
    values = []
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if lab[b, i] == losses.IGNORE_INDEX:
                continue
            log_t = _np_log_softmax(t[b, i] / temperature)
            log_s = _np_log_softmax(s[b, i] / temperature)
            log_p, log_q = (log_s, log_t) if reverse else (log_t, log_s)
            values.append(sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q)))
    return sum(values) / len(values)


def reference_topk_kl(student, topk_ids, topk_logprobs, labels):
    """Tail-bucket forward KL at T = 1: buckets = the teacher's k ids + everything else."""
    s, ids, lps, lab = student.numpy(), topk_ids.numpy(), topk_logprobs.numpy(), labels.numpy()
    values = []
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if lab[b, i] == losses.IGNORE_INDEX:
                continue
            student_probs = np.exp(_np_log_softmax(s[b, i]))
            teacher_top = np.exp(lps[b, i].astype(np.float64))
            teacher_buckets = list(teacher_top) + [1.0 - teacher_top.sum()]
            student_top = [student_probs[v] for v in ids[b, i]]
            student_buckets = student_top + [1.0 - sum(student_top)]
            values.append(sum(p * (math.log(p) - math.log(q))
                              for p, q in zip(teacher_buckets, student_buckets) if p > 0))
    return sum(values) / len(values)


def _topk(teacher_logits, k):
    top = F.log_softmax(teacher_logits.float(), -1).topk(k, dim=-1)
    return top.indices, top.values


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_kl_matches_reference(temperature):
    student, teacher, labels = _inputs()
    got = losses.forward_kl(student, teacher, labels, temperature)
    assert float(got) == pytest.approx(reference_kl(student, teacher, labels, temperature),
                                       rel=1e-5, abs=1e-6)


def test_forward_kl_without_labels_uses_every_position():
    student, teacher, _ = _inputs(seed=3)
    every = torch.zeros(BATCH, SEQ, dtype=torch.long)
    assert float(losses.forward_kl(student, teacher, None)) == pytest.approx(
        reference_kl(student, teacher, every, 1.0), rel=1e-5)


def test_forward_kl_ignores_masked_positions():
    student, teacher, labels = _inputs()
    changed = student.clone()
    changed[labels == losses.IGNORE_INDEX] += 100 * torch.randn(VOCAB)
    assert torch.allclose(losses.forward_kl(student, teacher, labels),
                          losses.forward_kl(changed, teacher, labels))


def test_kl_is_zero_for_identical_inputs():
    _, teacher, labels = _inputs()
    assert float(losses.forward_kl(teacher.clone(), teacher, labels)) == pytest.approx(0, abs=1e-6)
    ids, logprobs = _topk(teacher, 4)
    assert float(losses.forward_kl_topk(teacher.clone(), ids, logprobs, labels)) == \
        pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_kl_is_non_negative(seed):
    student, teacher, labels = _inputs(seed)
    for temperature in (0.5, 1.0, 3.0):
        assert float(losses.forward_kl(student, teacher, labels, temperature)) > 0
        ids, logprobs = _topk(teacher, 3)
        assert float(losses.forward_kl_topk(student, ids, logprobs, labels, temperature)) >= 0


def test_reverse_kl_matches_reference():
    student, teacher, labels = _inputs(seed=14)
    for temperature in (1.0, 2.0):
        assert float(losses.reverse_kl(student, teacher, labels, temperature)) == pytest.approx(
            reference_kl(student, teacher, labels, temperature, reverse=True), rel=1e-5)


def test_forward_kl_is_not_reverse_kl():
    student, teacher, labels = _inputs(seed=1)
    student = student * 0.2  # flat student, peaked teacher: an asymmetric pair
    teacher = teacher * 3.0
    forward = float(losses.forward_kl(student, teacher, labels))
    reverse = reference_kl(student, teacher, labels, 1.0, reverse=True)
    assert forward == pytest.approx(reference_kl(student, teacher, labels, 1.0), rel=1e-5)
    assert abs(forward - reverse) > 0.1


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_with_full_vocabulary_equals_dense(temperature):
    """With k = vocab the tail is empty: float rounding of sum(p_top) must not become a
    tail bucket that the student (whose tail is exactly empty) is charged ~1e30 for."""
    student, teacher, labels = _inputs(seed=2)
    ids, logprobs = _topk(teacher, VOCAB)
    dense = losses.forward_kl(student, teacher, labels, temperature)
    topk = losses.forward_kl_topk(student, ids, logprobs, labels, temperature)
    assert float(topk) == pytest.approx(float(dense), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("k", [1, 4, 10])
def test_topk_tail_bucket_matches_reference(k):
    student, teacher, labels = _inputs(seed=4)
    ids, logprobs = _topk(teacher, k)
    got = losses.forward_kl_topk(student, ids, logprobs, labels)
    assert float(got) == pytest.approx(reference_topk_kl(student, ids, logprobs, labels),
                                       rel=1e-4, abs=1e-6)
    # with a tail, the bucketed KL is a lower bound of the dense one (data processing)
    assert float(got) <= float(losses.forward_kl(student, teacher, labels)) + 1e-6


def test_topk_buckets_are_distributions():
    student, teacher, _ = _inputs(seed=5)
    ids, logprobs = _topk(teacher, 3)
    for temperature in (1.0, 2.0):
        t, s = losses.topk_buckets(student, ids, logprobs, temperature)
        assert t.shape == s.shape == (BATCH, SEQ, 4)
        assert torch.allclose(t.exp().sum(-1), torch.ones(BATCH, SEQ), atol=1e-5)
        assert torch.allclose(s.exp().sum(-1), torch.ones(BATCH, SEQ), atol=1e-5)


def _with_shared_neg_inf():
    student, teacher, labels = _inputs(seed=6)
    student[..., [2, 7]] = float("-inf")
    teacher[..., [2, 7]] = float("-inf")
    return student.requires_grad_(True), teacher, labels


def test_dense_kl_is_finite_with_neg_inf_logits():
    student, teacher, labels = _with_shared_neg_inf()
    loss = losses.forward_kl(student, teacher, labels, 2.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_topk_kl_is_finite_with_neg_inf_logits():
    student, teacher, labels = _with_shared_neg_inf()
    ids, logprobs = _topk(teacher, VOCAB)
    assert torch.isinf(logprobs).any()
    loss = losses.forward_kl_topk(student, ids, logprobs, labels)
    loss.backward()
    assert float(loss.detach()) >= 0
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0
    # k = vocab: still the dense loss
    dense = losses.forward_kl(student.detach(), teacher, labels)
    assert float(loss.detach()) == pytest.approx(float(dense), rel=1e-4, abs=1e-6)


def test_topk_gradient_is_finite_with_full_vocabulary():
    student, teacher, labels = _inputs(seed=7)
    student.requires_grad_(True)
    ids, logprobs = _topk(teacher, VOCAB)
    losses.forward_kl_topk(student, ids, logprobs, labels, 2.0).backward()
    assert torch.isfinite(student.grad).all()


def test_chunking_does_not_change_the_result(monkeypatch):
    student, teacher, labels = _inputs(seed=8)
    ids, logprobs = _topk(teacher, 4)
    dense = losses.forward_kl(student, teacher, labels, 2.0)
    topk = losses.forward_kl_topk(student, ids, logprobs, labels, 2.0)
    monkeypatch.setattr(losses, "CHUNK_POSITIONS", 3)  # 7 kept positions: chunks 3, 3, 1
    assert torch.allclose(losses.forward_kl(student, teacher, labels, 2.0), dense, atol=1e-6)
    assert torch.allclose(losses.forward_kl_topk(student, ids, logprobs, labels, 2.0), topk,
                          atol=1e-6)


def test_cross_entropy_matches_torch_on_kept_positions():
    student, _, labels = _inputs(seed=9)
    keep = labels != losses.IGNORE_INDEX
    by_hand = -F.log_softmax(student[keep], -1).gather(-1, labels[keep][:, None]).mean()
    assert torch.allclose(losses.cross_entropy(student, labels), by_hand, atol=1e-6)
    assert torch.allclose(losses.cross_entropy(student, labels),
                          F.cross_entropy(student[keep], labels[keep]), atol=1e-6)


@pytest.mark.parametrize("ce_weight,kd_weight,temperature",
                         [(0.0, 1.0, 1.0), (0.5, 1.0, 2.0), (1.0, 0.0, 1.0), (0.3, 0.7, 3.0)])
def test_distillation_loss_combines_parts_dense(ce_weight, kd_weight, temperature):
    student, teacher, labels = _inputs(seed=10)
    keep = labels != losses.IGNORE_INDEX
    ce = float(F.cross_entropy(student[keep], labels[keep]))
    kd = reference_kl(student, teacher, labels, temperature)
    out = losses.distillation_loss(student, labels, ce_weight=ce_weight, kd_weight=kd_weight,
                                   temperature=temperature, teacher_logits=teacher)
    expected = ce_weight * ce + kd_weight * temperature**2 * kd
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    if ce_weight:
        assert float(out["ce"]) == pytest.approx(ce, rel=1e-5)
    if kd_weight:
        assert float(out["kd"]) == pytest.approx(kd, rel=1e-5)


@pytest.mark.parametrize("ce_weight,temperature", [(0.0, 1.0), (0.5, 1.0), (0.5, 2.0)])
def test_distillation_loss_combines_parts_topk(ce_weight, temperature):
    student, teacher, labels = _inputs(seed=11)
    keep = labels != losses.IGNORE_INDEX
    ids, logprobs = _topk(teacher, 4)
    ce = float(F.cross_entropy(student[keep], labels[keep]))
    kd = float(losses.forward_kl_topk(student, ids, logprobs, labels, temperature))
    if temperature == 1.0:  # the tail-bucket formula, independently
        assert kd == pytest.approx(reference_topk_kl(student, ids, logprobs, labels), rel=1e-4)
    out = losses.distillation_loss(student, labels, ce_weight=ce_weight, kd_weight=2.0,
                                   temperature=temperature, topk_ids=ids, topk_logprobs=logprobs)
    assert float(out["kd"]) == pytest.approx(kd, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(ce_weight * ce + 2.0 * temperature**2 * kd,
                                               rel=1e-5)
    # given both, dense teacher logits take precedence over the top-k input
    dense = losses.distillation_loss(student, labels, ce_weight=0.0, kd_weight=1.0,
                                     temperature=temperature, teacher_logits=teacher,
                                     topk_ids=ids, topk_logprobs=logprobs)
    assert float(dense["kd"]) == pytest.approx(
        reference_kl(student, teacher, labels, temperature), rel=1e-5)


def test_distillation_loss_gradient_flows_to_student():
    student, teacher, labels = _inputs(seed=12)
    student.requires_grad_(True)
    out = losses.distillation_loss(student, labels, ce_weight=1.0, kd_weight=1.0,
                                   temperature=2.0, teacher_logits=teacher)
    out["loss"].backward()
    assert torch.isfinite(student.grad).all()
    # masked positions get no gradient
    assert student.grad[labels == losses.IGNORE_INDEX].abs().max() == 0
    assert student.grad[labels != losses.IGNORE_INDEX].abs().max() > 0


def _all_masked():
    student, teacher, labels = _inputs(seed=13)
    return student.requires_grad_(True), teacher, torch.full_like(labels, losses.IGNORE_INDEX)


def test_all_masked_kl_is_zero_with_a_graph():
    student, teacher, labels = _all_masked()
    ids, logprobs = _topk(teacher, 4)
    for loss in (losses.forward_kl(student, teacher, labels),
                 losses.forward_kl_topk(student, ids, logprobs, labels)):
        assert float(loss.detach()) == 0.0
        assert loss.requires_grad
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(grad).all() and grad.abs().max() == 0


@pytest.mark.parametrize("ce_weight,kd_weight", [(0.0, 1.0), (1.0, 0.0), (0.5, 1.0)])
def test_all_masked_distillation_loss_is_zero_not_nan(ce_weight, kd_weight):
    student, teacher, labels = _all_masked()
    out = losses.distillation_loss(student, labels, ce_weight=ce_weight, kd_weight=kd_weight,
                                   temperature=2.0, teacher_logits=teacher)
    assert not torch.isnan(out["loss"]), out
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()
    assert torch.isfinite(student.grad).all()

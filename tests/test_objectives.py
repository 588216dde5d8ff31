"""Every objective in distill.lm.losses.OBJECTIVES (dense and top-k), checked against
plain-numpy float64 references that loop over positions and work with probabilities
(not log-probs), plus the identities the docstrings promise, and the training loss
(distill.lm.losses.distillation_loss) built from them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.lm import losses

BATCH, SEQ, VOCAB = 2, 4, 9
IGNORED = [(0, 1), (1, 0), (1, 3)]  # 5 of 8 positions kept

# (objective, option value) pairs; the option name comes from OBJECTIVES
CASES = [
    ("forward_kl", None),
    ("reverse_kl", None),
    ("generalized_jsd", 0.1),
    ("generalized_jsd", 0.5),
    ("generalized_jsd", 0.9),
    ("skew_kl", 0.1),
    ("skew_kl", 0.5),
    ("skew_reverse_kl", 0.1),
    ("skew_reverse_kl", 0.5),
    ("total_variation", None),
]
CASE_IDS = [name if value is None else f"{name}-{value}" for name, value in CASES]
NAMES = sorted(losses.OBJECTIVES)


def _inputs(seed=0, scale=2.0, vocab=VOCAB):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(BATCH, SEQ, vocab, generator=generator) * scale
    teacher = torch.randn(BATCH, SEQ, vocab, generator=generator) * scale
    labels = torch.randint(0, vocab, (BATCH, SEQ), generator=generator)
    for b, i in IGNORED:
        labels[b, i] = losses.IGNORE_INDEX
    return student, teacher, labels


def _topk(teacher_logits, k):
    top = F.log_softmax(teacher_logits.float(), -1).topk(k, dim=-1)
    return top.indices, top.values


def _options(name, value):
    option = losses.OBJECTIVES[name].option
    return {} if option is None else {option: value}


def _dense(name, value, student, teacher, labels, temperature=1.0):
    return losses.OBJECTIVES[name].dense(student, teacher, labels, temperature,
                                         **_options(name, value))


def _sparse(name, value, student, ids, logprobs, labels, temperature=1.0):
    return losses.OBJECTIVES[name].topk(student, ids, logprobs, labels, temperature,
                                        **_options(name, value))


# --- numpy references ---------------------------------------------------------

def _np_softmax(row):
    row = np.asarray(row, dtype=np.float64)
    e = np.exp(row - row.max())
    return e / e.sum()


def _np_kl(p, q):
    """sum_v p_v log(p_v / q_v) over p_v > 0, from probabilities."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _np_divergence(name, value, p_t, p_s):
    if name == "forward_kl":
        return _np_kl(p_t, p_s)
    if name == "reverse_kl":
        return _np_kl(p_s, p_t)
    if name == "generalized_jsd":
        m = value * p_t + (1 - value) * p_s
        return value * _np_kl(p_t, m) + (1 - value) * _np_kl(p_s, m)
    if name == "skew_kl":
        return _np_kl(p_t, value * p_t + (1 - value) * p_s)
    if name == "skew_reverse_kl":
        return _np_kl(p_s, value * p_s + (1 - value) * p_t)
    if name == "total_variation":
        return 0.5 * float(np.abs(p_t - p_s).sum())
    raise AssertionError(f"no reference for {name}")


def _kept(labels):
    lab = labels.numpy()
    return [(b, i) for b in range(lab.shape[0]) for i in range(lab.shape[1])
            if lab[b, i] != losses.IGNORE_INDEX]


def reference_dense(name, value, student, teacher, labels, temperature):
    s, t = student.double().numpy(), teacher.double().numpy()
    values = [_np_divergence(name, value, _np_softmax(t[b, i] / temperature),
                             _np_softmax(s[b, i] / temperature))
              for b, i in _kept(labels)]
    return sum(values) / len(values)


def reference_buckets(name, value, student, ids, logprobs, labels):
    """At T = 1: teacher = top-k probs + tail (1 - sum); student = its probs at the
    teacher's ids + its mass outside them (summed over the complement)."""
    s, idx, lps = student.double().numpy(), ids.numpy(), logprobs.double().numpy()
    values = []
    for b, i in _kept(labels):
        p_s = _np_softmax(s[b, i])
        top = np.exp(lps[b, i])
        p_t = np.append(top, 1.0 - top.sum())
        outside = np.ones(p_s.shape[0], dtype=bool)
        outside[idx[b, i]] = False
        q = np.append(p_s[idx[b, i]], p_s[outside].sum())
        values.append(_np_divergence(name, value, p_t, q))
    return sum(values) / len(values)


def test_cases_cover_every_objective():
    assert sorted({name for name, _ in CASES}) == NAMES
    assert {name: objective.option for name, objective in losses.OBJECTIVES.items()} == {
        "forward_kl": None, "reverse_kl": None, "generalized_jsd": "beta",
        "skew_kl": "alpha", "skew_reverse_kl": "alpha", "total_variation": None}
    # each is registered under its divergence's name, and that divergence is public
    for name, objective in losses.OBJECTIVES.items():
        assert objective.name == name
        assert objective.divergence is getattr(losses, name)


# --- 1. the divergences alone, and dense objectives, equal the numpy reference --

@pytest.mark.parametrize("name,value", [*CASES, ("generalized_jsd", 0.3)],
                         ids=[*CASE_IDS, "generalized_jsd-0.3"])
def test_divergence_alone_matches_reference_per_row(name, value):
    """A divergence is a public function of (log p_T, log p_S) over the last axis, usable
    without logits, labels or a batch: one value per row."""
    generator = torch.Generator().manual_seed(20)
    log_t = F.log_softmax(torch.randn(3, VOCAB, generator=generator) * 2, -1)
    log_s = F.log_softmax(torch.randn(3, VOCAB, generator=generator) * 2, -1)
    got = getattr(losses, name)(log_t, log_s, **_options(name, value))
    assert got.shape == (3,)
    for row in range(3):
        expected = _np_divergence(name, value, log_t[row].double().exp().numpy(),
                                  log_s[row].double().exp().numpy())
        assert expected > 1e-3
        assert float(got[row]) == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_dense_matches_reference(name, value, temperature):
    student, teacher, labels = _inputs(seed=21)
    got = float(_dense(name, value, student, teacher, labels, temperature))
    expected = reference_dense(name, value, student, teacher, labels, temperature)
    assert expected > 1e-3  # a meaningful, non-degenerate comparison
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_dense_ignores_masked_positions_and_none_labels_keeps_all(name, value):
    student, teacher, labels = _inputs(seed=22)
    changed = student.clone()
    changed[labels == losses.IGNORE_INDEX] += 50 * torch.randn(VOCAB)
    assert torch.allclose(_dense(name, value, student, teacher, labels),
                          _dense(name, value, changed, teacher, labels), atol=1e-6)
    every = torch.zeros(BATCH, SEQ, dtype=torch.long)
    assert float(_dense(name, value, student, teacher, None)) == pytest.approx(
        reference_dense(name, value, student, teacher, every, 1.0), rel=1e-5, abs=1e-6)


# --- 2. zero for identical inputs, non-negative -------------------------------

@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_zero_for_identical_inputs(name, value):
    _, teacher, labels = _inputs(seed=23)
    for temperature in (1.0, 2.0):
        dense = _dense(name, value, teacher.clone(), teacher, labels, temperature)
        assert float(dense) == pytest.approx(0.0, abs=1e-6)
        # k < vocab only at T = 1: at T != 1 the teacher's tail is softened as one
        # token while the student's is its real softened mass (documented approximation)
        for k in (3, VOCAB) if temperature == 1.0 else (VOCAB,):
            ids, logprobs = _topk(teacher, k)
            sparse = _sparse(name, value, teacher.clone(), ids, logprobs, labels, temperature)
            assert float(sparse) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_non_negative_on_random_draws(name, value):
    for seed in range(20):
        student, teacher, labels = _inputs(seed=100 + seed, scale=1.0 + seed % 4)
        temperature = (0.5, 1.0, 2.0)[seed % 3]
        assert float(_dense(name, value, student, teacher, labels, temperature)) > 0
        ids, logprobs = _topk(teacher, 1 + seed % VOCAB)
        assert float(_sparse(name, value, student, ids, logprobs, labels, temperature)) >= 0


# --- 3. KL directions -----------------------------------------------------------

def test_forward_and_reverse_kl_differ_on_asymmetric_inputs():
    student, teacher, labels = _inputs(seed=24)
    student, teacher = student * 0.2, teacher * 3.0  # flat student, peaked teacher
    forward = float(_dense("forward_kl", None, student, teacher, labels))
    reverse = float(_dense("reverse_kl", None, student, teacher, labels))
    assert forward == pytest.approx(
        reference_dense("forward_kl", None, student, teacher, labels, 1.0), rel=1e-5)
    assert reverse == pytest.approx(
        reference_dense("reverse_kl", None, student, teacher, labels, 1.0), rel=1e-5)
    assert abs(forward - reverse) > 0.1
    # reverse KL of (s, t) is forward KL of (t, s)
    assert float(_dense("reverse_kl", None, teacher, student, labels)) == \
        pytest.approx(forward, rel=1e-5)
    skew = float(_dense("skew_kl", 0.1, student, teacher, labels))
    skew_reverse = float(_dense("skew_reverse_kl", 0.1, student, teacher, labels))
    assert abs(skew - skew_reverse) > 0.05


# --- 4. generalized JSD -------------------------------------------------------

def _gjsd(student, teacher, labels=None, temperature=1.0, **options):
    """Generalized JSD over a batch of teacher logits, by the generic batch function."""
    return losses.dense_divergence(losses.generalized_jsd, student, teacher, labels,
                                   temperature, **options)


def test_generalized_jsd_half_is_symmetric():
    student, teacher, labels = _inputs(seed=25)
    for temperature in (1.0, 2.0):
        a = _gjsd(student, teacher, labels, temperature, beta=0.5)
        b = _gjsd(teacher, student, labels, temperature, beta=0.5)
        assert float(a) > 1e-3
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # and bounded by log 2, as the JSD is (beta left at its default, 0.5)
    assert float(_gjsd(student * 20, teacher * 20, labels)) <= math.log(2) + 1e-6
    # other betas are not symmetric
    a = _gjsd(student, teacher, labels, beta=0.2)
    b = _gjsd(teacher, student, labels, beta=0.2)
    assert not torch.allclose(a, b, rtol=1e-3)


def test_generalized_jsd_endpoints_are_the_kls():
    student, teacher, labels = _inputs(seed=26)
    ids, logprobs = _topk(teacher, 4)
    for temperature in (1.0, 2.0):
        forward = _dense("forward_kl", None, student, teacher, labels, temperature)
        reverse = _dense("reverse_kl", None, student, teacher, labels, temperature)
        assert not torch.allclose(forward, reverse, rtol=1e-2)
        assert torch.allclose(_gjsd(student, teacher, labels, temperature, beta=0.0), forward)
        assert torch.allclose(_gjsd(student, teacher, labels, temperature, beta=1.0), reverse)
        for beta, kl in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
            assert torch.allclose(
                losses.topk_divergence(losses.generalized_jsd, student, ids, logprobs, labels,
                                       temperature, beta=beta),
                _sparse(kl, None, student, ids, logprobs, labels, temperature))


def test_generalized_jsd_near_the_ends_vanishes_like_the_kls():
    student, teacher, labels = _inputs(seed=27)
    forward = float(_dense("forward_kl", None, student, teacher, labels))
    reverse = float(_dense("reverse_kl", None, student, teacher, labels))
    small = 1e-3
    low = float(_gjsd(student, teacher, labels, beta=small))
    high = float(_gjsd(student, teacher, labels, beta=1 - small))
    assert low / small == pytest.approx(forward, rel=5e-2)
    assert high / small == pytest.approx(reverse, rel=5e-2)
    # continuity at the ends would be gjsd -> 0; the documented endpoints are the
    # limits divided by the vanishing weight, so they are far from the near-end values
    assert low < 0.01 * forward and high < 0.01 * reverse


# --- 5. skew KLs at alpha = 0 ---------------------------------------------------

def test_skew_kls_at_alpha_zero_are_the_plain_kls():
    student, teacher, labels = _inputs(seed=28)
    ids, logprobs = _topk(teacher, 4)
    for temperature in (1.0, 2.0):
        for skew, kl in (("skew_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")):
            assert torch.allclose(_dense(skew, 0.0, student, teacher, labels, temperature),
                                  _dense(kl, None, student, teacher, labels, temperature))
            assert torch.allclose(
                _sparse(skew, 0.0, student, ids, logprobs, labels, temperature),
                _sparse(kl, None, student, ids, logprobs, labels, temperature))
    # alpha = 1 mixes in only the reference distribution itself: zero loss
    assert float(_dense("skew_kl", 1.0, student, teacher, labels)) == pytest.approx(0, abs=1e-6)
    assert float(_dense("skew_reverse_kl", 1.0, student, teacher, labels)) == \
        pytest.approx(0, abs=1e-6)
    # skewing bounds the loss: it shrinks as alpha grows
    values = [float(_dense("skew_kl", a, student, teacher, labels)) for a in (0, 0.1, 0.5)]
    assert values[0] > values[1] > values[2] > 0


# --- 6. total variation -------------------------------------------------------

def test_total_variation_is_bounded_and_symmetric():
    for seed in range(10):
        scale = (1.0, 5.0, 50.0)[seed % 3]
        student, teacher, labels = _inputs(seed=200 + seed, scale=scale)
        for temperature in (1.0, 2.0):
            a = _dense("total_variation", None, student, teacher, labels, temperature)
            b = _dense("total_variation", None, teacher, student, labels, temperature)
            assert 0.0 < float(a) <= 1.0 + 1e-6
            assert torch.allclose(a, b, atol=1e-7)
            ids, logprobs = _topk(teacher, 3)
            sparse = _sparse("total_variation", None, student, ids, logprobs, labels, temperature)
            assert 0.0 <= float(sparse) <= 1.0 + 1e-6
    # near-disjoint one-hots: TV close to its upper bound 1
    student = torch.full((1, 1, VOCAB), -1e4)
    teacher = student.clone()
    student[..., 0] = teacher[..., 1] = 0.0
    assert float(_dense("total_variation", None, student, teacher, None)) == \
        pytest.approx(1.0, abs=1e-6)


# --- 7. top-k with k = vocab is the dense loss --------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_topk_full_vocabulary_equals_dense(name, value, temperature):
    """With k = vocab the tail is empty: float rounding of sum(p_top) must not become a
    tail bucket that the student (whose tail is exactly empty) is charged ~1e30 for, and
    the empty student tail must not make the gradient NaN."""
    student, teacher, labels = _inputs(seed=29)
    student.requires_grad_(True)
    ids, logprobs = _topk(teacher, VOCAB)
    dense = float(_dense(name, value, student.detach(), teacher, labels, temperature))
    loss = _sparse(name, value, student, ids, logprobs, labels, temperature)
    assert float(loss.detach()) == pytest.approx(dense, rel=1e-4, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all()


# --- 8. top-k with k < vocab equals the bucket reference ------------------------

@pytest.mark.parametrize("k", [1, 4, VOCAB - 1])
@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_topk_buckets_match_reference(name, value, k):
    student, teacher, labels = _inputs(seed=30)
    ids, logprobs = _topk(teacher, k)
    got = float(_sparse(name, value, student, ids, logprobs, labels))
    expected = reference_buckets(name, value, student, ids, logprobs, labels)
    assert expected > 1e-4
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # merging the tail into one bucket loses information: at T = 1 the bucketed value is
    # a lower bound of the dense one (data processing inequality; all are f-divergences).
    # With k = VOCAB - 1 the tail is one token and the two are equal in exact arithmetic:
    # float32 sums in another order then differ by a few ulps, so the slack is relative.
    dense = float(_dense(name, value, student, teacher, labels))
    assert got <= dense * (1 + 1e-5) + 1e-6


def test_topk_buckets_are_distributions():
    student, teacher, _ = _inputs(seed=5)
    ids, logprobs = _topk(teacher, 3)
    for temperature in (1.0, 2.0):
        t, s = losses.topk_buckets(student, ids, logprobs, temperature)
        assert t.shape == s.shape == (BATCH, SEQ, 4)
        assert torch.allclose(t.exp().sum(-1), torch.ones(BATCH, SEQ), atol=1e-5)
        assert torch.allclose(s.exp().sum(-1), torch.ones(BATCH, SEQ), atol=1e-5)


# --- 9. shared -inf logits ------------------------------------------------------

NEG_INF_COLUMNS = [2, 7]


def _with_shared_neg_inf():
    student, teacher, labels = _inputs(seed=31)
    student[..., NEG_INF_COLUMNS] = float("-inf")
    teacher[..., NEG_INF_COLUMNS] = float("-inf")
    finite = [v for v in range(VOCAB) if v not in NEG_INF_COLUMNS]
    return student, teacher, labels, finite


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_dense_finite_with_shared_neg_inf(name, value, temperature):
    student, teacher, labels, finite = _with_shared_neg_inf()
    student.requires_grad_(True)
    loss = _dense(name, value, student, teacher, labels, temperature)
    assert torch.isfinite(loss)
    # zero-probability entries change nothing: the loss over the finite entries only
    reduced = _dense(name, value, student.detach()[..., finite], teacher[..., finite], labels,
                     temperature)
    assert float(loss.detach()) == pytest.approx(float(reduced), rel=1e-5, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all(), f"{name}: non-finite gradient {grad}"
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_topk_finite_with_shared_neg_inf(name, value, temperature):
    student, teacher, labels, finite = _with_shared_neg_inf()
    student.requires_grad_(True)
    ids, logprobs = _topk(teacher, VOCAB)
    assert torch.isinf(logprobs).any()
    loss = _sparse(name, value, student, ids, logprobs, labels, temperature)
    assert torch.isfinite(loss)
    dense = _dense(name, value, student.detach(), teacher, labels, temperature)
    assert float(loss.detach()) == pytest.approx(float(dense), rel=1e-4, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all(), f"{name}: non-finite gradient {grad}"
    assert grad.abs().sum() > 0


# --- 10. chunking ---------------------------------------------------------------

@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_chunking_does_not_change_the_result(name, value, monkeypatch):
    student, teacher, labels = _inputs(seed=32)
    ids, logprobs = _topk(teacher, 4)

    def run():
        s = student.clone().requires_grad_(True)
        dense = _dense(name, value, s, teacher, labels, 2.0)
        sparse = _sparse(name, value, s, ids, logprobs, labels, 2.0)
        (grad,) = torch.autograd.grad(dense + sparse, s)
        return dense.detach(), sparse.detach(), grad

    whole = run()
    monkeypatch.setattr(losses, "CHUNK_POSITIONS", 2)  # 5 kept positions: chunks 2, 2, 1
    chunked = run()
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


# --- 11. the registry's call, its label, distillation_loss dispatch ------------

KD_BETA, KD_ALPHA = 0.3, 0.25
KD_OPTIONS = {"kd_beta": KD_BETA, "kd_alpha": KD_ALPHA}


def _chosen_option(name):
    return {"generalized_jsd": KD_BETA, "skew_kl": KD_ALPHA,
            "skew_reverse_kl": KD_ALPHA}.get(name)


@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_registry_call_reads_the_teacher_dict_and_its_kd_option(name, value):
    """objective(student, labels, teacher, T, options) is .dense when the teacher signal
    has 'logits', else .topk, with the option value read from options['kd_' + option]."""
    student, teacher, labels = _inputs(seed=36)
    ids, logprobs = _topk(teacher, 4)
    objective = losses.OBJECTIVES[name]
    options = {"kd_beta": 0.7, "kd_alpha": 0.6}  # the other kd_* key must be left alone
    if objective.option is not None:
        options[f"kd_{objective.option}"] = value
    for temperature in (1.0, 2.0):
        assert torch.allclose(
            objective(student, labels, {"logits": teacher}, temperature, options),
            _dense(name, value, student, teacher, labels, temperature))
        assert torch.allclose(
            objective(student, labels, {"topk_ids": ids, "topk_logprobs": logprobs},
                      temperature, options),
            _sparse(name, value, student, ids, logprobs, labels, temperature))
    if objective.option is None:  # an objective without an option needs no options
        assert torch.allclose(objective(student, labels, {"logits": teacher}),
                              _dense(name, None, student, teacher, labels))


def test_label_names_the_objective_with_its_option_value():
    options = {"kd_beta": 0.5, "kd_alpha": 0.1}
    assert {name: objective.label(options) for name, objective in losses.OBJECTIVES.items()} == {
        "forward_kl": "forward_kl", "reverse_kl": "reverse_kl",
        "generalized_jsd": "generalized_jsd(0.5)", "skew_kl": "skew_kl(0.1)",
        "skew_reverse_kl": "skew_reverse_kl(0.1)", "total_variation": "total_variation"}
    assert losses.OBJECTIVES["generalized_jsd"].label({"kd_beta": 0.25}) == "generalized_jsd(0.25)"


@pytest.mark.parametrize("name", NAMES)
def test_distillation_loss_dispatches_dense(name):
    student, teacher, labels = _inputs(seed=33)
    ce_weight, kd_weight, temperature = 0.3, 0.7, 2.0
    value = _chosen_option(name)
    out = losses.distillation_loss(student, labels, {"logits": teacher}, ce_weight=ce_weight,
                                   kd_weight=kd_weight, temperature=temperature, kd_loss=name,
                                   options=KD_OPTIONS)
    direct = float(_dense(name, value, student, teacher, labels, temperature))
    assert float(out["kd"]) == pytest.approx(direct, rel=1e-6)
    assert float(out["kd"]) == pytest.approx(
        reference_dense(name, value, student, teacher, labels, temperature), rel=1e-5)
    if value is not None:  # the option reached the objective (defaults are 0.5 / 0.1)
        default = float(losses.OBJECTIVES[name].dense(student, teacher, labels, temperature))
        assert float(out["kd"]) != pytest.approx(default, rel=1e-3)
    ce = float(losses.cross_entropy(student, labels))
    assert float(out["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(
        ce_weight * ce + kd_weight * temperature**2 * direct, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", NAMES)
def test_distillation_loss_dispatches_topk(name, temperature):
    student, teacher, labels = _inputs(seed=34)
    ce_weight, kd_weight = 0.5, 2.0
    value = _chosen_option(name)
    ids, logprobs = _topk(teacher, 4)
    out = losses.distillation_loss(student, labels, {"topk_ids": ids, "topk_logprobs": logprobs},
                                   ce_weight=ce_weight, kd_weight=kd_weight,
                                   temperature=temperature, kd_loss=name, options=KD_OPTIONS)
    direct = float(_sparse(name, value, student, ids, logprobs, labels, temperature))
    assert float(out["kd"]) == pytest.approx(direct, rel=1e-6)
    if temperature == 1.0:
        assert float(out["kd"]) == pytest.approx(
            reference_buckets(name, value, student, ids, logprobs, labels), rel=1e-4)
    if value is not None:
        default = float(losses.OBJECTIVES[name].topk(student, ids, logprobs, labels, temperature))
        assert float(out["kd"]) != pytest.approx(default, rel=1e-3)
    ce = float(losses.cross_entropy(student, labels))
    assert float(out["loss"]) == pytest.approx(
        ce_weight * ce + kd_weight * temperature**2 * direct, rel=1e-5)
    # k = vocab through the training objective: the dense objective with the same option
    full_ids, full_logprobs = _topk(teacher, VOCAB)
    full = losses.distillation_loss(student, labels,
                                    {"topk_ids": full_ids, "topk_logprobs": full_logprobs},
                                    ce_weight=0.0, kd_weight=1.0, temperature=temperature,
                                    kd_loss=name, options=KD_OPTIONS)
    assert float(full["kd"]) == pytest.approx(
        float(_dense(name, value, student, teacher, labels, temperature)), rel=1e-4, abs=1e-6)
    assert float(full["loss"]) == pytest.approx(temperature**2 * float(full["kd"]), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_logits_take_precedence_over_topk(temperature):
    student, teacher, labels = _inputs(seed=11)
    ids, logprobs = _topk(teacher, 4)
    both = {"logits": teacher, "topk_ids": ids, "topk_logprobs": logprobs}
    out = losses.distillation_loss(student, labels, both, ce_weight=0.0, kd_weight=1.0,
                                   temperature=temperature)
    assert float(out["kd"]) == pytest.approx(
        reference_dense("forward_kl", None, student, teacher, labels, temperature), rel=1e-5)


# --- 12. cross-entropy, the weights, masking --------------------------------------

def test_cross_entropy_matches_torch_on_kept_positions():
    student, _, labels = _inputs(seed=9)
    keep = labels != losses.IGNORE_INDEX
    by_hand = -F.log_softmax(student[keep], -1).gather(-1, labels[keep][:, None]).mean()
    assert torch.allclose(losses.cross_entropy(student, labels), by_hand, atol=1e-6)
    assert torch.allclose(losses.cross_entropy(student, labels),
                          F.cross_entropy(student[keep], labels[keep]), atol=1e-6)


@pytest.mark.parametrize("ce_weight,kd_weight,temperature",
                         [(0.0, 1.0, 1.0), (0.5, 1.0, 2.0), (1.0, 0.0, 1.0), (0.3, 0.7, 3.0)])
def test_distillation_loss_combines_parts_with_either_weight_zero(ce_weight, kd_weight,
                                                                  temperature):
    """Total = ce_weight * CE + kd_weight * T^2 * KD, the default objective forward KL."""
    student, teacher, labels = _inputs(seed=10)
    keep = labels != losses.IGNORE_INDEX
    ce = float(F.cross_entropy(student[keep], labels[keep]))
    kd = reference_dense("forward_kl", None, student, teacher, labels, temperature)
    out = losses.distillation_loss(student, labels, {"logits": teacher}, ce_weight=ce_weight,
                                   kd_weight=kd_weight, temperature=temperature)
    expected = ce_weight * ce + kd_weight * temperature**2 * kd
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    if ce_weight:
        assert float(out["ce"]) == pytest.approx(ce, rel=1e-5)
    if kd_weight:
        assert float(out["kd"]) == pytest.approx(kd, rel=1e-5)


def test_distillation_loss_gradient_flows_to_kept_positions_only():
    student, teacher, labels = _inputs(seed=12)
    student.requires_grad_(True)
    out = losses.distillation_loss(student, labels, {"logits": teacher}, ce_weight=1.0,
                                   kd_weight=1.0, temperature=2.0)
    out["loss"].backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[labels == losses.IGNORE_INDEX].abs().max() == 0
    assert student.grad[labels != losses.IGNORE_INDEX].abs().max() > 0


def _all_masked():
    student, teacher, labels = _inputs(seed=13)
    return student.requires_grad_(True), teacher, torch.full_like(labels, losses.IGNORE_INDEX)


def test_all_masked_kl_is_zero_with_a_graph():
    student, teacher, labels = _all_masked()
    ids, logprobs = _topk(teacher, 4)
    for loss in (_dense("forward_kl", None, student, teacher, labels),
                 _sparse("forward_kl", None, student, ids, logprobs, labels)):
        assert float(loss.detach()) == 0.0
        assert loss.requires_grad
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(grad).all() and grad.abs().max() == 0


@pytest.mark.parametrize("ce_weight,kd_weight", [(0.0, 1.0), (1.0, 0.0), (0.5, 1.0)])
def test_all_masked_distillation_loss_is_zero_not_nan(ce_weight, kd_weight):
    student, teacher, labels = _all_masked()
    out = losses.distillation_loss(student, labels, {"logits": teacher}, ce_weight=ce_weight,
                                   kd_weight=kd_weight, temperature=2.0)
    assert not torch.isnan(out["loss"]), out
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()
    assert torch.isfinite(student.grad).all()


# --- 13. large vocabulary -------------------------------------------------------

@pytest.mark.parametrize("name,value", CASES, ids=CASE_IDS)
def test_large_vocabulary_is_finite(name, value):
    vocab = 49152
    generator = torch.Generator().manual_seed(35)
    student = torch.randn(1, 3, vocab, generator=generator) * 30
    teacher = torch.randn(1, 3, vocab, generator=generator) * 30
    for temperature in (1.0, 2.0):
        s = student.clone().requires_grad_(True)
        loss = _dense(name, value, s, teacher, None, temperature)
        assert torch.isfinite(loss), f"{name} at T={temperature}: {loss}"
        assert float(loss.detach()) >= 0
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", sorted(losses.OBJECTIVES))
def test_topk_finite_when_the_top_k_holds_almost_all_teacher_mass(name):
    """A confident teacher: its top-k sums to 1 within float rounding, yet k < vocab
    and the student still puts mass outside. Every objective (reverse KL included)
    must stay finite, with finite gradients."""
    vocab, k = 50, 5
    teacher_logits = torch.full((1, 3, vocab), -40.0)
    teacher_logits[..., :k] = torch.tensor([30.0, 2.0, 1.0, 0.0, -1.0])
    top = torch.log_softmax(teacher_logits, -1).topk(k)
    student = torch.randn(1, 3, vocab, requires_grad=True)
    value = losses.OBJECTIVES[name].topk(student, top.indices, top.values)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(student.grad).all()

"""distill.lm.alignment: spans by bytes across two tokenizations, and the cross-tokenizer
losses against direct references."""

import math

import pytest
import torch

from distill.lm import alignment, losses
from distill.lm.alignment import Span


def _spans(teacher, student):
    return alignment.align_spans([t.encode() if isinstance(t, str) else t for t in teacher],
                                 [s.encode() if isinstance(s, str) else s for s in student])


def test_spans_close_where_both_tokenizations_break():
    spans, t_done, s_done = _spans(["Hel", "lo", " wor", "ld", "!"], ["Hello", " ", "world", "!"])
    assert spans == [Span(range(0, 2), range(0, 1)), Span(range(2, 4), range(1, 3)),
                     Span(range(4, 5), range(3, 4))]
    assert (t_done, s_done) == (5, 4)
    assert [s.one_to_one for s in spans] == [False, False, True]


def test_identical_tokenizations_give_one_token_spans_everywhere():
    tokens = ["The", " cat", " sat", ".", "\n"]
    spans, t_done, s_done = _spans(tokens, tokens)
    assert all(span.one_to_one for span in spans) and len(spans) == 5
    assert [span.teacher.start for span in spans] == [span.student.start for span in spans]
    assert alignment.coverage(spans, 5) == {"one_to_one": 1.0, "multi_token": 0.0,
                                            "unaligned": 0.0}


def test_multi_byte_utf8_and_byte_fallback_pieces_align_on_bytes():
    # "café ok": one student token for "café"; the teacher spells é as two byte pieces
    spans, *_ = _spans([b"caf", b"\xc3", b"\xa9", b" ok"], [b"caf\xc3\xa9", b" ok"])
    assert spans == [Span(range(0, 3), range(0, 1)), Span(range(3, 4), range(1, 2))]
    # a break inside a character (after \xc3) is still a break of both byte streams
    spans, *_ = _spans([b"a\xc3", b"\xa9"], [b"a\xc3", b"\xa9"])
    assert all(span.one_to_one for span in spans) and len(spans) == 2


def test_alignment_stops_where_the_texts_differ_and_counts_the_rest_unaligned():
    # end-of-turn markers spelled differently: of other length, and of the same length
    spans, t_done, s_done = _spans(["Hi", "<|im_end|>"], ["Hi", "</s>"])
    assert spans == [Span(range(0, 1), range(0, 1))] and (t_done, s_done) == (1, 1)
    spans, t_done, s_done = _spans(["Hi", "xy"], ["Hi", "zw"])
    assert len(spans) == 1 and (t_done, s_done) == (1, 1)
    assert alignment.coverage(spans, 2) == {"one_to_one": 0.5, "multi_token": 0.0,
                                            "unaligned": 0.5}


def test_empty_special_tokens_join_a_span():
    spans, t_done, s_done = _spans([b"", b"a", b"b", b""], [b"ab"])
    assert spans == [Span(range(0, 4), range(0, 1))] and (t_done, s_done) == (4, 1)


def test_span_sums_are_the_chain_rule_probability_of_each_span():
    logprobs = torch.log(torch.tensor([0.5, 0.8, 0.25, 0.9]))
    spans = [Span(range(0, 2), range(0, 1)), Span(range(2, 4), range(1, 3))]
    sums = alignment.span_sums(logprobs, spans, "teacher")
    assert sums.exp().tolist() == pytest.approx([0.4, 0.225])
    # the spans cover the text: their probabilities multiply to the text's
    assert sums.sum().item() == pytest.approx(logprobs.sum().item())
    student = alignment.span_sums(torch.log(torch.tensor([0.3, 0.5, 0.5])), spans, "student")
    assert student.exp().tolist() == pytest.approx([0.3, 0.25])


def test_span_kl_is_the_bernoulli_kl_and_zero_only_at_equal_probabilities():
    p_t, p_s = torch.tensor([0.4, 0.9]), torch.tensor([0.2, 0.9])
    reference = sum(a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
                    for a, b in zip(p_t.tolist(), p_s.tolist())) / 2
    assert alignment.span_kl(p_t.log(), p_s.log()).item() == pytest.approx(reference, rel=1e-5)
    assert alignment.span_kl(p_t.log(), p_t.log()).item() == pytest.approx(0.0, abs=1e-7)
    certain = torch.zeros(1, requires_grad=True)  # P = 1 on both sides: finite, zero
    value = alignment.span_kl(certain.detach(), certain)
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(certain.grad).all()
    # a student sure of a span (P_S = 1) that the teacher gives 0.5 is pushed down
    sure = torch.zeros(1, requires_grad=True)
    alignment.span_kl(torch.log(torch.tensor([0.5])), sure).backward()
    assert torch.isfinite(sure.grad).all() and sure.grad.item() > 1.0


def test_mapped_topk_with_every_id_shared_reduces_to_the_same_tokenizer_loss():
    torch.manual_seed(0)
    logits, teacher = torch.randn(2, 5, 32), torch.randn(2, 5, 32).log_softmax(-1)
    top = teacher.topk(6, dim=-1)
    valid = torch.ones_like(top.indices, dtype=torch.bool)
    mapped = alignment.mapped_buckets(logits, top.indices, top.values, valid)
    direct = losses.topk_buckets(logits, top.indices, top.values)
    for ours, theirs in zip(mapped, direct):
        torch.testing.assert_close(ours, theirs)
    assert losses.forward_kl(*mapped).mean().item() == pytest.approx(
        losses.topk_divergence(losses.forward_kl, logits, top.indices, top.values).item(),
        rel=1e-6)


def test_unmapped_strings_go_to_the_tail_and_both_sides_stay_distributions():
    vocab = {b" the": 3, b" a": 7, b"x": 1}
    # the teacher has " the" twice (two spellings), " an" the student lacks, and " a"
    ids, logprobs, valid = alignment.map_topk(
        [[(b" the", math.log(0.3)), (b" an", math.log(0.2)), (b" the", math.log(0.1)),
          (b" a", math.log(0.1))], [(b" zz", math.log(0.5))]], vocab, k=4)
    assert ids[0, :2].tolist() == [3, 7] and valid[0].tolist() == [True, True, False, False]
    assert logprobs[0, :2].exp().tolist() == pytest.approx([0.4, 0.1])
    assert not valid[1].any()
    logits = torch.randn(2, 10, requires_grad=True)
    teacher, student = alignment.mapped_buckets(logits, ids, logprobs, valid)
    assert teacher.exp().sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert student.exp().sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert teacher[0, -1].exp().item() == pytest.approx(0.5)  # " an" and the rest
    kl = losses.forward_kl(teacher, student)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-6)  # nothing mapped: nothing to learn
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_uld_is_the_l1_distance_of_the_sorted_probabilities():
    torch.manual_seed(1)
    logits = torch.randn(3, 20)
    teacher = torch.randn(3, 50).log_softmax(-1).topk(5, dim=-1).values[:, torch.randperm(5)]
    got = alignment.uld_distance(logits, teacher)
    for row in range(3):
        t = sorted(teacher[row].exp().tolist(), reverse=True)
        s = sorted(torch.softmax(logits[row], -1).tolist(), reverse=True)[:5]
        t, s = t + [1 - sum(t)], s + [1 - sum(s)]
        assert got[row].item() == pytest.approx(sum(abs(a - b) for a, b in zip(t, s)), rel=1e-5)
    # the same sorted distribution, other token order: distance 0
    same = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).log_softmax(-1)
    shuffled = same[:, [2, 0, 3, 1]]
    assert alignment.uld_distance(shuffled, same.topk(4).values).item() == pytest.approx(
        0.0, abs=1e-6)


def test_hybrid_weighs_the_two_parts_and_skips_an_empty_one():
    matched, unmatched = torch.tensor([1.0, 3.0]), torch.tensor([4.0])
    assert alignment.hybrid(matched, unmatched, 0.5, 2.0).item() == pytest.approx(9.0)
    assert alignment.hybrid(matched, torch.tensor([])).item() == pytest.approx(2.0)


def test_end_tokens_on_both_sides_pair_up_one_to_one():
    # each model ends its answer with a special token of no bytes: a span of its own
    spans, t_done, s_done = _spans([b"Hi", b"!", b""], [b"Hi!", b""])
    assert spans == [Span(range(0, 2), range(0, 1)), Span(range(2, 3), range(1, 2))]
    assert (t_done, s_done) == (3, 2) and spans[1].one_to_one
    # two on one side, one on the other: the pair's span takes the extra one
    spans, *_ = _spans([b"a", b"", b""], [b"a", b""])
    assert spans == [Span(range(0, 1), range(0, 1)), Span(range(1, 3), range(1, 2))]

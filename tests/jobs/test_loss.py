"""InfoNCE as a pure function of embeddings: small cases computed by hand, masking, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from e5studio.jobs.train.loss import E5_TEMPERATURE, false_negative_mask, info_nce, score_distillation


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def idx(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def test_one_query_two_passages_by_hand() -> None:
    # logits = [1, 0] / t; loss = -log(e^(1/t) / (e^(1/t) + e^0)) = log(1 + e^(-1/t))
    q, p = t([[1, 0]]), t([[1, 0], [0, 1]])
    assert info_nce(q, p, idx([0]), temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert info_nce(q, p, idx([0]), temperature=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_non_trivial_scores_by_hand() -> None:
    # scores q.p = 0.96 (positive), 0.6, 0.8; t = 0.1: logits 9.6, 6, 8
    q, p = t([[0.6, 0.8]]), t([[0.8, 0.6], [1, 0], [0, 1]])
    expected = -9.6 + math.log(math.exp(9.6) + math.exp(6) + math.exp(8))  # = log(1 + e^-3.6 + e^-1.6)
    assert expected == pytest.approx(0.2063800, abs=1e-6)
    assert info_nce(q, p, idx([0]), temperature=0.1).item() == pytest.approx(expected, abs=1e-5)


def test_positive_need_not_be_the_first_column() -> None:
    q, p = t([[0.6, 0.8]]), t([[1, 0], [0.8, 0.6], [0, 1]])
    assert info_nce(q, p, idx([1]), temperature=0.1).item() == pytest.approx(0.2063800, abs=1e-5)


def test_other_queries_passages_are_negatives_and_the_loss_is_the_mean() -> None:
    # two queries, each with its own positive; each one's positive is the other's negative
    q = t([[1, 0], [0, 1]])
    p = t([[1, 0], [0, 1]])
    per_query = math.log(1 + math.exp(-1))
    assert info_nce(q, p, idx([0, 1]), temperature=1.0).item() == pytest.approx(per_query, abs=1e-6)
    # query 2's positive now points away (score -1, the other passage 0): -(-1) + log(e^0 + e^-1)
    worse = info_nce(q, t([[1, 0], [0, -1]]), idx([0, 1]), temperature=1.0).item()
    assert worse == pytest.approx((per_query + 1 + math.log(1 + math.exp(-1))) / 2, abs=1e-6)


def test_false_negatives_are_left_out_of_the_denominator() -> None:
    # passage 2 is the same document as the positive (another query's copy): with the mask it does not count
    q, p = t([[1, 0]]), t([[1, 0], [0, 1], [1, 0]])
    masked = info_nce(q, p, idx([0]), torch.tensor([[False, False, True]]), temperature=1.0)
    unmasked = info_nce(q, p, idx([0]), temperature=1.0)
    assert masked.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert unmasked.item() == pytest.approx(math.log(2 + math.exp(-1)), abs=1e-6)


def test_masking_a_query_own_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="own positive"):
        info_nce(t([[1, 0]]), t([[1, 0], [0, 1]]), idx([0]), torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(t([[1, 0]]), t([[1, 0]]), idx([0]), temperature=0.0)


def test_gradient_matches_the_closed_form() -> None:
    # dL/dq = (sum_j softmax_j p_j - p_pos) / t
    q = t([[0.6, 0.8]]).requires_grad_(True)
    p = t([[0.8, 0.6], [1, 0], [0, 1]])
    temperature = 0.1
    info_nce(q, p, idx([0]), temperature=temperature).backward()
    weights = torch.softmax(q.detach() @ p.T / temperature, dim=1)  # [1, 3]
    expected = (weights @ p - p[0]) / temperature
    torch.testing.assert_close(q.grad, expected, atol=1e-5, rtol=1e-5)


def test_low_precision_inputs_are_computed_in_fp32_and_the_default_temperature_is_e5s() -> None:
    assert E5_TEMPERATURE == 0.01
    q = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    p = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    loss16 = info_nce(q.half(), p.bfloat16(), idx([0, 3, 6, 9]))
    assert loss16.dtype == torch.float32
    assert math.isfinite(loss16.item())
    ref = info_nce(q, p, idx([0, 3, 6, 9]))
    assert loss16.item() == pytest.approx(ref.item(), rel=0.05)


def test_false_negative_mask_by_doc_id() -> None:
    # two groups of 3: query 0's positives are docs {1, 5}; query 1's are {7}
    doc_ids = [1, 9, 5, 7, 1, 2]
    mask = false_negative_mask([frozenset({1, 5}), frozenset({7})], doc_ids, [0, 3])
    assert mask.tolist() == [
        [False, False, True, False, True, False],  # own slot kept; doc 5 and the second copy of doc 1 masked
        [False, False, False, False, False, False],  # doc 7 only in its own positive slot
    ]
    assert mask.dtype == torch.bool


# -- score distillation from the frozen base model (--distill-weight) ---------------------------------


def _kl_by_hand(student: list[list[float]], teacher: list[list[float]], keep: list[list[bool]]) -> float:
    """Mean over rows of sum_j P_t(j) * (log P_t(j) - log P_s(j)), softmax over the kept columns only."""
    total = 0.0
    for s_row, t_row, k_row in zip(student, teacher, keep, strict=True):
        s_kept = [v for v, k in zip(s_row, k_row, strict=True) if k]
        t_kept = [v for v, k in zip(t_row, k_row, strict=True) if k]
        s_norm = math.log(sum(math.exp(v) for v in s_kept))
        t_norm = math.log(sum(math.exp(v) for v in t_kept))
        total += sum(math.exp(tv - t_norm) * ((tv - t_norm) - (sv - s_norm)) for sv, tv in zip(s_kept, t_kept,
                                                                                             strict=True))
    return total / len(student)


def test_score_distillation_is_zero_when_the_model_scores_like_the_base() -> None:
    q, p = t([[0.6, 0.8], [1, 0]]), t([[0.8, 0.6], [1, 0], [0, 1]])
    assert score_distillation(q, p, q.clone(), p.clone(), temperature=0.05).item() == pytest.approx(0.0, abs=1e-7)


def test_score_distillation_by_hand_with_excluded_columns() -> None:
    q, p = t([[0.6, 0.8], [1, 0]]), t([[0.8, 0.6], [1, 0], [0, 1]])
    tq, tp = t([[0.8, 0.6], [0.6, 0.8]]), t([[1, 0], [0.6, 0.8], [0, 1]])
    exclude = torch.tensor([[False, False, True], [False, False, False]])
    temperature = 0.5
    student = (q @ p.T / temperature).tolist()
    teacher = (tq @ tp.T / temperature).tolist()
    expected = _kl_by_hand(student, teacher, (~exclude).tolist())
    got = score_distillation(q, p, tq, tp, exclude, temperature).item()
    assert expected > 0.01 and got == pytest.approx(expected, abs=1e-6)
    # an excluded column's scores do not matter
    moved = p.clone()
    moved[2] = torch.tensor([0.6, -0.8])
    exclude_both = torch.tensor([[False, False, True], [False, False, True]])
    assert score_distillation(q, p, tq, tp, exclude_both, temperature).item() == pytest.approx(
        score_distillation(q, moved, tq, tp, exclude_both, temperature).item(), abs=1e-7)


def test_score_distillation_pulls_the_model_towards_the_base() -> None:
    q = t([[0.6, 0.8]]).requires_grad_(True)
    p, tq, tp = t([[0.8, 0.6], [1, 0]]), t([[1, 0]]), t([[0.8, 0.6], [1, 0]])
    loss = score_distillation(q, p, tq, tp, temperature=0.1)
    loss.backward()
    assert q.grad is not None
    step = q.detach() - 0.01 * q.grad
    assert score_distillation(step, p, tq, tp, temperature=0.1).item() < loss.item()
    with pytest.raises(ValueError):
        score_distillation(q, p, tq, tp, temperature=0.0)

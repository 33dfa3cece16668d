"""The E5 fine-tuning objective: InfoNCE over every passage of the global batch, as a pure function.

For queries q_1..q_B and passages p_1..p_N (all unit vectors; N = B * train_n_passages when every query
brings its own group), with s_ij = q_i . p_j and temperature t (E5: 0.01):

    L = 1/B * sum_i  -log( exp(s_{i,pos(i)} / t) / sum_{j in D(i)} exp(s_ij / t) )

pos(i) is the column of query i's own positive. D(i) is every column except false negatives: passages
whose doc id is a positive of query i, other than its own positive slot (they appear as another query's
positive or negative, or as a duplicate). Every other query's passages are negatives of query i.

References: Wang et al., "Text Embeddings by Weakly-Supervised Contrastive Pre-training" (E5, 2022),
eq. 1 and section 4.2 (fine-tuning with mined hard negatives, t = 0.01); sentence-transformers
``losses/MultipleNegativesRankingLoss.py`` is the same loss with scale = 1 / t.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

E5_TEMPERATURE = 0.01


def info_nce(queries: torch.Tensor, passages: torch.Tensor, positive_index: torch.Tensor,
             exclude: torch.Tensor | None = None, temperature: float = E5_TEMPERATURE) -> torch.Tensor:
    """Mean InfoNCE loss (fp32 scalar) of B queries against N passages.

    queries [B, d], passages [N, d] (any float dtype; computed in fp32), positive_index [B] int64
    (column of each query's positive), exclude [B, N] bool (True = left out of the denominator; never
    the positive's own column), temperature > 0.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    logits = queries.float() @ passages.float().T / temperature  # [B, N]
    if exclude is not None:
        if bool(exclude.gather(1, positive_index[:, None]).any()):
            raise ValueError("exclude masks a query's own positive")
        logits = logits.masked_fill(exclude, float("-inf"))  # [B, N]
    return F.cross_entropy(logits, positive_index)


def score_distillation(queries: torch.Tensor, passages: torch.Tensor, teacher_queries: torch.Tensor,
                       teacher_passages: torch.Tensor, exclude: torch.Tensor | None = None,
                       temperature: float = 0.05) -> torch.Tensor:
    """Mean KL(teacher || model) of each query's distribution over the in-batch passages (fp32 scalar).

    Learning without Forgetting (Li & Hoiem, 2016) for embeddings: the frozen base model's scores
    t_ij = q'_i . p'_j and the model's s_ij = q_i . p_j, both at ``temperature``, over the same columns as the
    InfoNCE term (``exclude`` True = left out: false negatives). Zero while the model scores like the base; its
    gradient pulls the model's similarity structure back towards the base's while InfoNCE moves the positives up.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    student = queries.float() @ passages.float().T / temperature  # [B, N]
    teacher = teacher_queries.float() @ teacher_passages.float().T / temperature  # [B, N]
    if exclude is not None:  # a large finite value, not -inf: both sides' excluded terms are exactly 0, not NaN
        student = student.masked_fill(exclude, -1e4)
        teacher = teacher.masked_fill(exclude, -1e4)
    return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True,
                    reduction="batchmean")


def false_negative_mask(query_positives: Sequence[frozenset[int]], passage_doc_ids: Sequence[int],
                        positive_index: Sequence[int]) -> torch.Tensor:
    """[B, N] bool: True where passage j's doc id is a positive of query i and j is not i's own positive."""
    doc_ids = np.asarray(passage_doc_ids, dtype=np.int64)  # [N]
    mask = np.zeros((len(query_positives), len(doc_ids)), dtype=bool)  # [B, N]
    for i, positives in enumerate(query_positives):
        if positives:
            mask[i] = np.isin(doc_ids, np.fromiter(positives, dtype=np.int64, count=len(positives)))
        mask[i, positive_index[i]] = False
    return torch.from_numpy(mask)

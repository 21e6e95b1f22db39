"""Attention-map similarity across heads and across queries (Park et al. 2023): identical maps give
1, maps on disjoint keys 0, and the mean leaves out a map with itself."""

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from sslvit.analysis.attention_similarity import head_similarity, off_diagonal_mean, query_similarity


def test_identical_heads_and_uniform_queries_are_fully_similar():
    probs = torch.full((2, 3, 5, 5), 0.2)  # every head and every query attends uniformly
    assert_close(head_similarity(probs, num_prefix=1), torch.ones(2))
    assert_close(query_similarity(probs, num_prefix=1), torch.ones(2, 3))


def test_each_query_on_its_own_key_is_dissimilar_across_queries():
    n = 4
    probs = torch.eye(1 + n).expand(1, 2, -1, -1)  # every token attends only to itself, in both heads
    assert_close(query_similarity(probs, num_prefix=1), torch.zeros(1, 2))
    assert_close(head_similarity(probs, num_prefix=1), torch.ones(1))  # the two heads agree


def test_against_a_loop_over_pairs():
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 6, 6).softmax(-1)
    rows = probs[:, :, 1:]  # [B, H, N, T] patch queries
    heads = torch.stack([torch.stack([F.cosine_similarity(rows[b, h], rows[b, g], dim=-1).mean()
                                      for h in range(3) for g in range(3) if h != g]).mean() for b in range(2)])
    assert_close(head_similarity(probs, num_prefix=1), heads)
    n = rows.shape[2]
    queries = torch.tensor([[torch.stack([F.cosine_similarity(rows[b, h, i], rows[b, h, j], dim=0)
                                          for i in range(n) for j in range(n) if i != j]).mean()
                             for h in range(3)] for b in range(2)])
    assert_close(query_similarity(probs, num_prefix=1), queries)


def test_one_item_has_no_pairs():
    assert off_diagonal_mean(torch.ones(2, 1, 1)).isnan().all()

"""The vectorised retrieval metrics equal torchmetrics' per-query functions."""

import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_average_precision, retrieval_hit_rate

from sslvit.eval.retrieval import average_precision, hit_rate


def test_against_torchmetrics():
    g = torch.Generator().manual_seed(0)
    relevant = torch.rand(200, 12, generator=g) < 0.25  # [q, k], item 0 the nearest
    relevant[0] = False  # a query with nothing relevant retrieved: AP 0
    scores = torch.linspace(1.0, 0.1, 12)  # decreasing and positive: torchmetrics treats scores <= 0 as not retrieved
    for k in (1, 5, 12):
        ap = average_precision(relevant[:, :k])
        hit = hit_rate(relevant[:, :k])
        for q in range(relevant.shape[0]):
            torch.testing.assert_close(ap[q], retrieval_average_precision(scores, relevant[q], top_k=k))
            torch.testing.assert_close(hit[q], retrieval_hit_rate(scores, relevant[q], top_k=k).float())


def test_a_worked_example():
    # relevant at ranks 1 and 3 of 4: AP = (1/1 + 2/3) / 2
    rel = torch.tensor([[True, False, True, False]])
    assert float(average_precision(rel)) == pytest.approx((1 + 2 / 3) / 2)
    assert float(hit_rate(rel[:, 1:2])) == 0.0

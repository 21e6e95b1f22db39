"""Weighted k-NN classification on FAISS (DINO's protocol, Caron et al. 2021, Sec. 4.1 / App.).

Cosine similarity is the inner product of L2-normalised features in a FAISS index; each of
the k neighbours votes for its label with weight exp(sim / T).  Queries run in chunks, so
memory stays bounded by chunk x k, never queries x bank.
"""

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from sslvit.errors import ConfigError


def build_index(bank: torch.Tensor) -> faiss.Index:
    """Exact inner-product index over the L2-normalised bank [M, D]."""
    x = F.normalize(bank.float(), dim=1).numpy()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x))
    return index


def knn_scores(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Class scores [Q, C]: sum over the k nearest bank items of exp(cos / T), per label."""
    num_classes = num_classes or int(bank_labels.max()) + 1
    k = min(k, bank.shape[0])
    index = build_index(bank)
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start : start + chunk].float(), dim=1).numpy()
        sims, ids = index.search(np.ascontiguousarray(q), k)  # [q, k] each
        sims, ids = torch.from_numpy(sims), torch.from_numpy(ids)
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, bank_labels[ids], (sims / temperature).exp())  # [q, C]
        out.append(votes)
    return torch.cat(out)


def knn_top1(bank, bank_labels, queries, query_labels, k: int = 20, temperature: float = 0.07) -> float:
    """Fraction of queries whose highest-scoring class is their label."""
    if (bank_labels < 0).any() or (query_labels < 0).any():
        raise ConfigError("k-NN needs labelled samples: some shards named for evaluation have no .cls member")
    scores = knn_scores(bank, bank_labels, queries, k, temperature, int(max(bank_labels.max(), query_labels.max())) + 1)
    return (scores.argmax(dim=1) == query_labels).float().mean().item()

"""Weighted k-NN classification on FAISS (DINO's protocol, Caron et al. 2021, Sec. 4.1 and App.).

Cosine similarity is the inner product of L2-normalised features in a FAISS index; each of the k
neighbours votes for its label with weight exp(sim / T).  The index searches once at the largest k
(FAISS returns the neighbours sorted by similarity) and every smaller k is read off the first k
columns.  Queries run in chunks, so memory stays bounded by chunk x (k + classes), never queries x
bank.  An exact flat index by default; ``kind="ivf"`` (an inverted file, ``nlist`` cells, ``nprobe``
searched) for banks of millions.  On the GPUs when FAISS was built with them (faiss-gpu).
"""

import math
from typing import Iterator, Optional, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.aggregation import MeanMetric

from sslvit.errors import ConfigError
from sslvit.eval.classes import train_classes
from sslvit.eval.features import collective_device
from sslvit.eval.retrieval import average_precision, hit_rate

ADD_ROWS = 65536  # the bank goes into the index in blocks: memory is the index plus one normalised block
IVF_TRAIN_PER_CELL = 64  # k-means training points per cell: FAISS wants 39 to 256; training costs its share of the search


def normalized(x: torch.Tensor) -> np.ndarray:
    """[n, D] -> L2-normalised float32, C-contiguous, as FAISS takes it."""
    return np.ascontiguousarray(F.normalize(x.float(), dim=1).numpy())


def build_index(
    bank: torch.Tensor,
    kind: str = "flat",
    nlist: Optional[int] = None,  # ivf: cells; default 4 sqrt(M), the low end of FAISS's 4-16 sqrt(M) advice
    nprobe: int = 16,  # ivf: cells searched per query
    gpu: Optional[int] = None,  # a GPU id, or None: every GPU FAISS sees (none with faiss-cpu)
    seed: int = 0,
) -> faiss.Index:
    """An inner-product index over the L2-normalised bank [M, D]."""
    m, d = bank.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        if nlist is None:
            nlist = min(m, max(1, round(4 * math.sqrt(m))))
        elif not 1 <= nlist <= m:
            raise ConfigError(f"nlist={nlist} must be from 1 to the {m} samples in the bank")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        clustering = to_gpu(faiss.IndexFlatIP(d), gpu)  # k-means on the GPUs when there are any
        index.clustering_index = clustering  # (SWIG keeps no reference: ``clustering`` lives until train is done)
        sample = torch.randperm(m, generator=torch.Generator().manual_seed(seed))[: nlist * IVF_TRAIN_PER_CELL]
        index.train(normalized(bank[sample.sort().values]))
        index.clustering_index = None
        index.nprobe = min(nprobe, nlist)
    else:
        raise ConfigError(f"index kind {kind!r} is not 'flat' or 'ivf'")
    index = to_gpu(index, gpu)
    for start in range(0, m, ADD_ROWS):
        index.add(normalized(bank[start : start + ADD_ROWS]))
    return index


def to_gpu(index: faiss.Index, gpu: Optional[int]) -> faiss.Index:
    """``index`` on GPU ``gpu`` (or all of them) when this FAISS has GPUs, else as it is."""
    if faiss.get_num_gpus() == 0 or not hasattr(faiss, "StandardGpuResources"):
        return index
    if gpu is None:
        return faiss.index_cpu_to_all_gpus(index)
    to_gpu.resources = getattr(to_gpu, "resources", None) or faiss.StandardGpuResources()  # one per process
    return faiss.index_cpu_to_gpu(to_gpu.resources, gpu, index)


def search(index: faiss.Index, queries: torch.Tensor, k: int, chunk: int = 4096) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first query row, similarities [q, k], bank ids [q, k]) per chunk of queries, most similar first."""
    for start in range(0, queries.shape[0], chunk):
        sims, ids = index.search(normalized(queries[start : start + chunk]), k)
        yield start, torch.from_numpy(sims), torch.from_numpy(ids)


def votes(sims: torch.Tensor, neighbour_labels: torch.Tensor, temperature: float, num_classes: int) -> torch.Tensor:
    """[q, k] similarities and labels -> class scores [q, C]: sum of exp(sim / T) per label."""
    out = torch.zeros(sims.shape[0], num_classes)
    return out.scatter_add_(1, neighbour_labels, (sims / temperature).exp())


def knn_scores(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: Optional[int] = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Class scores [Q, C]: sum over the k nearest bank items of exp(cos / T), per label 0..C-1 (k at most M)."""
    num_classes = num_classes or int(bank_labels.max()) + 1
    k = min(k, bank.shape[0])
    index = build_index(bank)
    return torch.cat([votes(s, bank_labels[i], temperature, num_classes) for _, s, i in search(index, queries, k, chunk)])


def check_labelled(*labels: torch.Tensor) -> None:
    if any((y < 0).any() for y in labels):
        raise ConfigError("k-NN needs labelled samples: some shards named for evaluation have no .cls member")


def knn_top1(bank, bank_labels, queries, query_labels, k: int = 20, temperature: float = 0.07) -> float:
    """Fraction of queries whose highest-scoring class is their label."""
    check_labelled(bank_labels, query_labels)
    classes = train_classes(bank_labels, "the k-NN bank")
    scores = knn_scores(bank, classes.index(bank_labels), queries, k, temperature, classes.n)
    return (scores.argmax(dim=1) == classes.index(query_labels)).float().mean().item()


def top_k_hits(scores: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """[q] 1.0 where fewer than ``k`` other classes score at least as high as the label ``y`` [q] does, else 0.0: a tie
    counts against the query (with k=1 most classes get no vote, and a zero-score label would otherwise be "in the top
    5" by the order topk happens to break ties in), and so does a label of no bank class (``y`` = C)."""
    absent = y >= scores.shape[1]
    own = scores.gather(1, y.clamp(max=scores.shape[1] - 1)[:, None])  # [q, 1]
    ahead = (scores >= own).sum(dim=1) - 1  # [q] other classes at or above the label's score
    return ((ahead < k) & ~absent).float()


def knn_evaluate(
    bank: torch.Tensor,  # [M, D]
    bank_labels: torch.Tensor,  # [M]
    queries: torch.Tensor,  # [Q, D]: this rank's share when torch.distributed is initialised
    query_labels: torch.Tensor,  # [Q]
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    index: Optional[faiss.Index] = None,  # default: an exact flat index over ``bank``
    chunk: int = 4096,
) -> dict[int, dict[str, float]]:
    """For each k: ``top1``, ``top5`` (weighted votes; ties count against, ``top_k_hits``), ``recall`` (hit rate) and ``map`` (see
    ``sslvit.eval.retrieval``), over all ranks' queries: torchmetrics sums its states over the
    process group when ``compute`` is called, so every rank must call this.  Classes are the bank's
    (``sslvit.eval.classes``): a query of a class the bank lacks counts as wrong."""
    check_labelled(bank_labels, query_labels)
    ks = sorted(set(ks))
    if ks[0] < 1 or ks[-1] > bank.shape[0]:
        raise ConfigError(f"k={ks[0] if ks[0] < 1 else ks[-1]} must be between 1 and the {bank.shape[0]} samples in the bank")
    classes = train_classes(bank_labels, "the k-NN bank")  # the bank is whole on every rank: the same classes everywhere
    bank_labels, query_labels = classes.index(bank_labels), classes.index(query_labels)  # 0..C-1; C: not in the bank
    c = classes.n
    metrics = {k: {"top1": MeanMetric(), "top5": MeanMetric(), "recall": MeanMetric(), "map": MeanMetric()} for k in ks}
    device = collective_device()  # metric states take part in the reduction over ranks
    for m in metrics.values():
        for metric in m.values():
            metric.to(device)
    index = index if index is not None else build_index(bank)
    for start, sims, ids in search(index, queries, ks[-1], chunk):
        y = query_labels[start : start + sims.shape[0]]  # [q]
        nl = bank_labels[ids]  # [q, k_max]
        relevant = nl == y[:, None]  # [q, k_max]
        for k in ks:
            scores = votes(sims[:, :k], nl[:, :k], temperature, c)  # [q, C]
            metrics[k]["top1"].update(top_k_hits(scores, y, 1).to(device))
            metrics[k]["top5"].update(top_k_hits(scores, y, 5).to(device))
            metrics[k]["recall"].update(hit_rate(relevant[:, :k]).to(device))
            metrics[k]["map"].update(average_precision(relevant[:, :k]).to(device))
    return {k: {name: float(metric.compute()) for name, metric in m.items()} for k, m in metrics.items()}

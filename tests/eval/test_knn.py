"""FAISS k-NN against a brute-force torch computation on the same features (DINO's weighted vote)."""

import pytest
import torch
import torch.nn.functional as F

from sslvit.errors import ConfigError
from sslvit.eval.knn import build_index, knn_evaluate, knn_scores, knn_top1, search


def brute_force(bank, labels, queries, k, t, c):
    """(class scores [Q, C], neighbour ids [Q, k]) from the full similarity matrix."""
    sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T  # [Q, M]
    top, idx = sims.topk(k, dim=1)
    onehot = F.one_hot(labels[idx], c).float()  # [Q, k, C]
    return (onehot * (top / t).exp()[..., None]).sum(1), idx


def data(seed=0, m=500, q=77, d=32, c=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g), torch.randint(0, c, (m,), generator=g), torch.randn(q, d, generator=g), \
        torch.randint(0, c, (q,), generator=g)


@pytest.mark.parametrize("k", [1, 5, 20, 100])
@pytest.mark.parametrize("chunk", [16, 4096])
def test_faiss_knn_equals_brute_force(k, chunk):
    bank, labels, queries, _ = data()
    ours = knn_scores(bank, labels, queries, k=k, temperature=0.07, num_classes=7, chunk=chunk)
    expected, idx = brute_force(bank, labels, queries, k, 0.07, 7)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    ids = torch.cat([i for _, _, i in search(build_index(bank), queries, k, chunk)])
    assert torch.equal(ids, idx)  # the same neighbours in the same order (random data: no ties)


def test_every_k_from_one_search_equals_brute_force_per_k():
    bank, labels, queries, qlabels = data(1)
    per_k = knn_evaluate(bank, labels, queries, qlabels, ks=[1, 5, 20, 100], temperature=0.1, chunk=10)
    for k, got in per_k.items():
        scores, idx = brute_force(bank, labels, queries, k, 0.1, 7)
        relevant = (labels[idx] == qlabels[:, None]).float()  # [Q, k]
        precision = relevant.cumsum(1) / torch.arange(1, k + 1)
        ap = [(precision[i] * relevant[i]).sum() / relevant[i].sum() if relevant[i].sum() else torch.tensor(0.0)
              for i in range(len(qlabels))]
        ahead = (scores >= scores.gather(1, qlabels[:, None])).sum(1) - 1  # other classes at or above the label: ties count against
        expected = {
            "top1": (ahead < 1).float().mean(),
            "top5": (ahead < 5).float().mean(),
            "recall": relevant.amax(1).mean(),
            "map": torch.stack(ap).mean(),
        }
        for name, value in expected.items():
            assert got[name] == pytest.approx(float(value), abs=1e-6), (k, name)


def test_ivf_probing_every_cell_is_exact():
    bank, labels, queries, qlabels = data(2, m=2000)
    exact = knn_evaluate(bank, labels, queries, qlabels, ks=[10, 20])
    ivf = knn_evaluate(bank, labels, queries, qlabels, ks=[10, 20], index=build_index(bank, "ivf", nlist=8, nprobe=8))
    for k in exact:
        assert ivf[k] == pytest.approx(exact[k])


def test_top1_on_separable_clusters_is_perfect():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 10
    labels = torch.arange(5).repeat_interleave(40)
    bank = centres[labels] + torch.randn(200, 16, generator=g)
    qlabels = torch.arange(5).repeat_interleave(10)
    queries = centres[qlabels] + torch.randn(50, 16, generator=g)
    assert knn_top1(bank, labels, queries, qlabels, k=10) == 1.0


def test_unlabelled_samples_and_impossible_k_are_user_errors():
    bank = torch.randn(10, 4)
    with pytest.raises(ConfigError, match=".cls"):
        knn_top1(bank, -torch.ones(10, dtype=torch.long), bank, torch.zeros(10, dtype=torch.long))
    labels = torch.zeros(10, dtype=torch.long)
    for k in (0, 11):
        with pytest.raises(ConfigError, match=f"k={k}"):
            knn_evaluate(bank, labels, bank, labels, ks=[k])

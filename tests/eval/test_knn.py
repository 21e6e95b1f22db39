import torch
import torch.nn.functional as F

from sslvit.eval.knn import knn_scores, knn_top1


def brute_force_scores(bank, labels, queries, k, t, c):
    sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T  # [Q, M]
    top, idx = sims.topk(k, dim=1)
    onehot = F.one_hot(labels[idx], c).float()  # [Q, k, C]
    return (onehot * (top / t).exp()[..., None]).sum(1)


def test_faiss_knn_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(500, 32, generator=g), torch.randn(77, 32, generator=g)
    labels = torch.randint(0, 7, (500,), generator=g)
    ours = knn_scores(bank, labels, queries, k=20, temperature=0.07, num_classes=7, chunk=16)
    torch.testing.assert_close(ours, brute_force_scores(bank, labels, queries, 20, 0.07, 7), rtol=1e-4, atol=1e-4)


def test_top1_on_separable_clusters_is_perfect():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 10
    labels = torch.arange(5).repeat_interleave(40)
    bank = centres[labels] + torch.randn(200, 16, generator=g)
    qlabels = torch.arange(5).repeat_interleave(10)
    queries = centres[qlabels] + torch.randn(50, 16, generator=g)
    assert knn_top1(bank, labels, queries, qlabels, k=10) == 1.0


def test_unlabelled_samples_are_a_user_error():
    import pytest

    from sslvit.errors import ConfigError

    bank = torch.randn(10, 4)
    with pytest.raises(ConfigError, match=".cls"):
        knn_top1(bank, -torch.ones(10, dtype=torch.long), bank, torch.zeros(10, dtype=torch.long))

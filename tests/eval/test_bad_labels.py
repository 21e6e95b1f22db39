"""Issue 18's evaluation cases: the k-NN, the linear and the few-shot probe score the training split's classes, so an
absurd label value costs one column (not a giant allocation), a validation class the training split lacks counts as
wrong (top-5 no longer reads 1.000 from tied zero scores), and one sample or one class is one line."""

import pytest
import torch

from sslvit.errors import ConfigError
from sslvit.eval.classes import absent_note, train_classes
from sslvit.eval.fewshot import few_shot
from sslvit.eval.knn import knn_evaluate, knn_top1
from sslvit.eval.linear import ProbeConfig, linear_probe

HUGE = 2**62  # a label value as a tampered .cls can give: a [queries, HUGE] score table would be exabytes


def clusters(labels: list[int], per: int = 8, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per`` points around a random centre for each label: features [len(labels) * per, dim] and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(labels), dim, generator=g) * 4
    x = torch.cat([c + 0.1 * torch.randn(per, dim, generator=g) for c in centres])
    return x, torch.tensor(labels).repeat_interleave(per)


PROBE = ProbeConfig(lrs=(0.1,), epochs=20, batch_size=8)


def test_absurd_label_values_cost_no_giant_allocation():
    x, y = clusters([3, HUGE, 10**15])
    per_k = knn_evaluate(x, y, x, y, ks=[5])
    assert per_k[5]["top1"] == 1.0
    assert knn_top1(x, y, x, y, k=5) == 1.0
    probe = linear_probe(x, y, x, y, PROBE)
    assert probe["top1"] == 1.0 and probe["num_classes"] == 3
    assert few_shot(x, y, x, y, shots=[2], seeds=[0])[2]["top1"] == 1.0


def test_validation_classes_absent_from_training_count_as_wrong_and_are_reported():
    x, y = clusters([0, 1, 7, 9])
    train = y < 2  # classes 0 and 1 only
    per_k = knn_evaluate(x[train], y[train], x, y, ks=[1, 5])
    for k in (1, 5):  # the 16 samples of 0 and 1 are right, the 16 of 7 and 9 can never be
        assert per_k[k]["top1"] == pytest.approx(0.5) and per_k[k]["top5"] == pytest.approx(0.5), per_k
    probe = linear_probe(x[train], y[train], x, y, PROBE)
    assert probe["top1"] == pytest.approx(0.5) and probe["top5"] == pytest.approx(0.5)
    shots = few_shot(x[train], y[train], x, y, shots=[2], seeds=[0])[2]
    assert shots["top1"] == pytest.approx(0.5) and shots["top5"] == pytest.approx(0.5)
    note = absent_note(train_classes(y[train]), y, "--val", "--train")
    assert note.startswith("note: 16 of 32 --val samples (classes 7, 9) have a class absent from --train")


def test_top5_does_not_read_a_hit_from_tied_zero_scores():
    """k=1: one class gets the vote, the other six tie at zero; a query whose own class is among them is not "in the
    top 5" by the order the ties happen to fall in."""
    x, y = clusters(list(range(7)))
    queries = x + 100 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # neighbours of any class
    got = knn_evaluate(x, y, queries, y, ks=[1])[1]
    assert got["top5"] == pytest.approx(got["top1"])


@pytest.mark.parametrize("labels", [[5], [5, 5, 5]], ids=["one sample", "one class"])
def test_one_training_sample_or_one_class_is_one_line(labels):
    x = torch.randn(len(labels), 8)
    y = torch.tensor(labels)
    for run in (lambda: knn_evaluate(x, y, x, y, ks=[1]), lambda: linear_probe(x, y, x, y, PROBE),
                lambda: few_shot(x, y, x, y, shots=[1], seeds=[0])):
        with pytest.raises(ConfigError, match="at least 2"):
            run()


def test_the_papers_protocols_take_absurd_label_values_too(tmp_path):
    import numpy as np

    from sslvit.data.shards import write_shards
    from sslvit.eval.features import FeatureSpec
    from sslvit.eval.paper_probe import paper_probe, protocol
    from sslvit.models.encoder import Encoder
    from tests.helpers import smooth_image, tiny_encoder

    rng = np.random.default_rng(0)
    shards = write_shards(({"__key__": f"k{i}", "png": smooth_image(rng)[0], "cls": str([3, HUGE][i % 2]).encode()}
                           for i in range(16)), tmp_path, "huge")
    proto = protocol("dino-paper", spec=FeatureSpec(blocks=1), epochs=1, batch_size=8, lrs=[0.1])
    result = paper_probe(Encoder(tiny_encoder()).vit, shards, shards, proto, torch.device("cpu"))
    assert result["num_classes"] == 2 and result["top1"] is not None

"""The papers' linear-probe protocols (--protocol mae-paper / dino-paper): MAE's LARS, both schedules, the same
heads on two ranks (gloo, two processes) as on one with the whole batch, and the tool end to end."""

import json
import math

import pytest
import torch

from sslvit.checkpoint import load_backbone
from sslvit.eval.features import FeatureSpec
from sslvit.eval.linear import LinearHeads, heads_loss
from sslvit.eval.paper_probe import PROTOCOLS, lr_factor, make_optimizer, paper_probe, protocol, train_step
from tests.helpers import command, on_two_ranks


def mae_lars_step(params: list, state: dict, lr: float, momentum: float = 0.9, trust: float = 0.001) -> None:
    """MAE's util/lars.py (from MoCo v3), weight decay 0: parameters of more than one dimension have their update
    scaled by trust x ||p|| / ||grad|| (1 where a norm is 0), then SGD with momentum (mu = m mu + update)."""
    with torch.no_grad():
        for p in params:
            dp = p.grad
            if p.ndim > 1:
                pn, un = torch.norm(p), torch.norm(dp)
                q = torch.where(pn > 0.0, torch.where(un > 0, trust * pn / un, torch.ones_like(pn)), torch.ones_like(pn))
                dp = dp.mul(q)
            mu = state.setdefault(id(p), torch.zeros_like(p))
            mu.mul_(momentum).add_(dp)
            p.add_(mu, alpha=-lr)


def test_lars_is_maes():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 5, (64,), generator=g)
    ours = LinearHeads(16, 5, heads=2, batchnorm=True)
    theirs = LinearHeads(16, 5, heads=2, batchnorm=True)
    theirs.load_state_dict(ours.state_dict())
    optimizer, state = make_optimizer(ours, [0.1, 0.4], "lars"), {}
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"]
    for _ in range(5):
        train_step(ours, optimizer, x, y)
        theirs.zero_grad()
        heads_loss(theirs, x, y).backward()
        for lr, w, b in zip([0.1, 0.4], theirs.weights, theirs.biases):
            mae_lars_step([w, b], state, lr)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # timm's LARS adds 1e-8 to the gradient's norm


def test_schedules_are_maes_and_dinos():
    mae = protocol("mae-paper", epochs=90)
    assert lr_factor(mae, 0, 100) == 0.0  # MAE: linear from 0 over 10 epochs, by fractional epoch
    assert lr_factor(mae, 500, 100) == pytest.approx(0.5)
    assert lr_factor(mae, 1000, 100) == pytest.approx(1.0)
    assert lr_factor(mae, 5000, 100) == pytest.approx(0.5)  # half-way through the 80 cosine epochs
    assert lr_factor(mae, 1050, 100) < lr_factor(mae, 1001, 100)  # per step
    dino = PROTOCOLS["dino-paper"]
    assert lr_factor(dino, 0, 10) == lr_factor(dino, 9, 10) == 1.0  # no warm-up; one value an epoch
    assert lr_factor(dino, 10, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 100)))
    assert PROTOCOLS["mae-paper"].batch_size == 16384 and PROTOCOLS["mae-paper"].lrs == (0.1,)
    assert PROTOCOLS["dino-paper"].spec.blocks == 4 and PROTOCOLS["dino-paper"].epochs == 100


def _rank(rank: int, x, y, out) -> None:
    torch.save(train_on(x[rank::2], y[rank::2]), out / f"rank{rank}.pt")


def train_on(x: torch.Tensor, y: torch.Tensor) -> dict:
    """Three steps of both protocols' heads on [steps, B, D] features: their state dicts."""
    out = {}
    for name, norm in (("sgd", False), ("lars", True)):
        heads = LinearHeads(8, 3, heads=2, batchnorm=norm).train()
        optimizer = make_optimizer(heads, [0.5, 2.0], name)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"]
        for step in range(x.shape[1]):
            train_step(heads, optimizer, x[:, step], y[:, step])
        out[name] = heads.state_dict()
    return out


def test_two_ranks_train_the_heads_one_trains_on_the_whole_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 8, generator=g), torch.randint(0, 3, (8, 3), generator=g)  # 8 samples x 3 steps
    on_two_ranks(_rank, x, y, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("sgd", "lars"):  # every rank holds the same heads and statistics
        for k, v in ranks[0][name].items():
            assert torch.equal(v, ranks[1][name][k]), (name, k)
    one = train_on(x, y)  # one process, the whole batch of 8
    for k, v in one["sgd"].items():  # DINO's heads: the mean of the ranks' gradients is the whole batch's
        torch.testing.assert_close(ranks[0]["sgd"][k], v, rtol=1e-5, atol=1e-6)
    # MAE's BatchNorm normalises each rank's batch on its own (as main_linprobe.py under DDP); its running mean is
    # the mean of the ranks' updates, which for the mean is the whole batch's update
    torch.testing.assert_close(ranks[0]["lars"]["norm.running_mean"], one["lars"]["norm.running_mean"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mae-paper", "dino-paper"])
def test_the_tool_runs_the_papers_protocols(name, tiny_backbone, tiny_shards, tmp_path, capsys):
    linear_probe = command("probe").main
    argv = ["--backbone", str(tiny_backbone["export"]), "--train", *tiny_shards["train"], "--val", *tiny_shards["val"],
            "--workers", "0", "--protocol", name, "--epochs", "2", "--batch-size", "16", "--json",
            "--out", str(tmp_path / "out")]
    argv += ["--warmup-epochs", "1"] if name == "mae-paper" else ["--blocks", "2", "--lrs", "0.01", "0.1"]
    assert linear_probe(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["protocol"] == name and result["epochs"] == 2 and result["ranks"] == 1
    assert result["steps"] == 2 * 4 and result["n_train"] == 64 and result["n_val"] == 32  # 64 images, batches of 16
    assert len(result["losses"]) == 2 and all(math.isfinite(v) for v in result["losses"])
    assert set(result["per_lr"]) == ({"0.1"} if name == "mae-paper" else {"0.01", "0.1"})
    assert result["features"] == ("cls_last1" if name == "mae-paper" else "cls_last2")
    assert result["optimizer"] == ("lars" if name == "mae-paper" else "sgd")
    assert 0 <= result["top1"] <= result["top5"] <= 1 and (tmp_path / "out" / "confusion_matrix.png").is_file()


def test_few_shot_is_for_the_cached_protocols(tiny_backbone, tiny_shards, capsys):
    linear_probe = command("probe").main
    argv = ["--backbone", str(tiny_backbone["export"]), "--train", *tiny_shards["train"], "--val", *tiny_shards["val"],
            "--protocol", "dino-paper", "--few-shot", "1"]
    with pytest.raises(SystemExit) as stop:
        linear_probe(argv)
    assert stop.value.code == 2 and "--few-shot runs on cached features" in capsys.readouterr().err


def _probe_rank(rank: int, ckpt, shards: dict, out) -> None:
    proto = protocol("dino-paper", spec=FeatureSpec(blocks=2), epochs=2, batch_size=16, lrs=[0.01, 0.1])
    result = paper_probe(load_backbone(ckpt), shards["train"], shards["val"], proto, torch.device("cpu"))
    torch.save({k: v for k, v in result.items() if k != "val_labels"}, out / f"probe{rank}.pt")


def test_the_probe_over_two_ranks_gives_every_rank_the_same_result(tiny_backbone, tiny_shards, tmp_path):
    on_two_ranks(_probe_rank, tiny_backbone["ckpt"], tiny_shards, tmp_path)
    first, second = (torch.load(tmp_path / f"probe{r}.pt", weights_only=True) for r in range(2))
    assert first["per_lr"] == second["per_lr"] and first["losses"] == second["losses"]
    assert torch.equal(first["preds"], second["preds"])
    assert first["steps"] == 2 * 4 and first["n_train"] == 64 and first["n_val"] == 32  # 64 images, 8 a rank x 2 ranks

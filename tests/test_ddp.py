"""Two processes on the CPU (gloo), launched the way a user launches them:
``python -m sslvit.fit RECIPE --trainer.accelerator=cpu --trainer.devices=2 --trainer.strategy=ddp``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

ROOT = Path(__file__).parent.parent
ENCODER = {"size": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
# DINO: weights, an EMA teacher and a center must agree across ranks.  (MAE, supervised and DINOv2 train under DDP
# in tests/test_fsdp.py, as the references FSDP must end at; what is checked here does not depend on the objective.)
MODELS = {
    "dino": ({"class_path": "sslvit.objectives.DINO",
              "init_args": {"encoder": ENCODER, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}},
             {"view": "multicrop", "local_crops": 2, "local_img_size": 16}),
}


class RecordPerRank(Callback):
    """Each rank writes what it trained on and its copy of the state that must agree across ranks."""

    def __init__(self, out: str) -> None:
        self.out, self.seen = Path(out), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += [f"{url}/{key}" for url, key in zip(batch["url"], batch["key"])]

    def on_train_end(self, trainer, pl_module) -> None:
        state = pl_module.state_dict()  # weights, EMA teacher, center: all must agree
        torch.save({"seen": self.seen, "state": state, "world_size": trainer.world_size},
                   self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(MODELS))
def test_two_process_ddp_fit(objective, tiny_shards, tmp_path):
    model, data = MODELS[objective]
    recipe = {
        "seed_everything": 0,
        "trainer": {"max_steps": 4, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")},
        "model": model,
        "data": {"train_shards": tiny_shards["train"], "img_size": 32, "batch_size": 8, "num_workers": 0,
                 "epoch_samples": 64, **data,
                 # no sample buffer, so the epoch is exactly one pass; a buffer would carry a few samples of
                 # one pass into the next, where another rank may hold their shard
                 "shuffle_buffer": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    callback = {"class_path": "tests.test_ddp.RecordPerRank", "init_args": {"out": str(tmp_path)}}
    proc = subprocess.run(
        [sys.executable, "-m", "sslvit.fit", str(path), "--trainer.accelerator=cpu", "--trainer.devices=2",
         "--trainer.strategy=ddp", f"--trainer.callbacks=[{json.dumps(callback)}]"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sslvit: global batch 16" in proc.stderr + proc.stdout  # lr scales with the batch over both ranks
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [set(r["seen"]) for r in ranks]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 4 * 8
    assert not seen[0] & seen[1], "the ranks trained on the same samples"
    assert len(seen[0] | seen[1]) == 64  # and between them on every sample once
    a, b = (r["state"] for r in ranks)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    if objective == "dino":
        assert a["loss.center"].abs().sum() > 0  # moved from zero, the same on both ranks (all-reduced)
    run = tmp_path / "run"
    assert proc.stdout.count("summary ") == 1  # rank 0 reports; every file of the run written once
    assert json.loads((run / "summary.json").read_text())["global_step"] == 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]

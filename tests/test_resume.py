"""Exact resume: a DINO run killed with SIGKILL part-way and resumed from ``last.ckpt`` ends in exactly
the state of a run that was never stopped (weights, EMA teacher, center, optimizer, step count), and a
checkpoint write cut short never leaves a broken ``last.ckpt``."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sslvit.checkpoint import AtomicCheckpointIO
from sslvit.cli.fit import main
from sslvit.files import TMP_PREFIX, remove_partial_writes

ROOT = Path(__file__).parent.parent
MAX_STEPS = 14  # 5 batches an epoch: the kill lands in the second or third epoch, part-way through it


def dino_recipe(tmp_path: Path, shards: list[str], run: str, workers: int = 2) -> Path:
    recipe = {
        "seed_everything": 0,
        # max_epochs as well, as every recipe has: Lightning then sets the train loader up before restoring
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": MAX_STEPS, "max_epochs": 10, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / run)},
        "model": {"class_path": "sslvit.objectives.DINO", "init_args": {
            "encoder": {"size": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2,
                        "drop_path_rate": 0.1},  # drop path: the model's own random numbers must resume too
            "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "warmup_epochs": 1, "warmup_teacher_temp_epochs": 2}},
        "data": {"train_shards": shards, "view": "multicrop", "img_size": 32, "local_crops": 2, "local_img_size": 16,
                 "batch_size": 8, "num_workers": workers, "epoch_samples": 40, "shuffle_buffer": 16},
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])  # flips and DINO's photometric steps on the device, seeded per batch
def test_killed_and_resumed_run_ends_exactly_as_an_uninterrupted_one(tiny_shards, tmp_path, workers):
    assert main([str(dino_recipe(tmp_path, tiny_shards["train"], "ref", workers))]) == 0
    reference = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    assert reference["global_step"] == MAX_STEPS

    recipe = dino_recipe(tmp_path, tiny_shards["train"], "killed", workers)
    ckpts = tmp_path / "killed" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "sslvit.fit", str(recipe), "--checkpoint_every_n_steps=1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (ckpts / "step=0000007.ckpt").exists():  # renamed into place whole: existing means written
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:] if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # whatever it was doing: a step, a checkpoint write
    proc.wait()
    proc.stderr.close()
    killed_at = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
    assert 6 <= killed_at < MAX_STEPS, killed_at  # step=7 is written before last.ckpt: the kill may fall between
    (ckpts / f"{TMP_PREFIX}last.ckpt.abc").write_bytes(b"half a checkpoint")  # as a kill during a save leaves

    assert main([str(recipe), f"--ckpt_path={ckpts / 'last.ckpt'}"]) == 0
    resumed = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert not list(ckpts.glob(f"{TMP_PREFIX}*"))
    assert resumed["global_step"] == MAX_STEPS
    state, expected = resumed["state_dict"], reference["state_dict"]
    assert state.keys() == expected.keys()
    differ = [k for k in state if not torch.equal(state[k], expected[k])]
    assert not differ, f"killed at step {killed_at}; after resuming these differ from the uninterrupted run: {differ[:5]}"
    assert any(k.startswith("teacher.") for k in state) and "loss.center" in state
    for a, b in zip(resumed["optimizer_states"][0]["state"].values(), reference["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]


def test_a_checkpoint_write_cut_short_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt  # as a signal landing in the middle of torch.save

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # an ordinary file, not mkstemp's 0600
    (tmp_path / f"{TMP_PREFIX}last.ckpt.x").write_bytes(b"")  # a SIGKILL leaves this behind instead
    assert [p.name for p in remove_partial_writes(tmp_path)] == [f"{TMP_PREFIX}last.ckpt.x"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

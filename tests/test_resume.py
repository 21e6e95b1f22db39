"""Exact resume: a run of each objective (MAE, supervised, DINO, DINOv2) killed with SIGKILL part-way and
resumed from ``last.ckpt`` ends in exactly the state of a run that was never stopped (weights, EMA teachers,
centers, optimizer, schedules, step count), and a checkpoint write cut short never leaves a broken ``last.ckpt``."""

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


ENCODER = {"size": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2,
           "drop_path_rate": 0.1}  # drop path: the model's own random numbers must resume too
# each objective small, with every part that holds state across steps: EMA teachers, centers, masks, mixup
MODELS = {
    "mae": ("sslvit.objectives.MAE", {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "warmup_epochs": 1},
            {"view": "mae"}),
    "supervised": ("sslvit.objectives.Supervised", {"num_classes": 4, "warmup_epochs": 1, "layer_decay": 0.75},
                   {"view": "finetune"}),  # mixup/cutmix and label smoothing at their defaults: random per batch
    "dino": ("sslvit.objectives.DINO", {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "warmup_epochs": 1,
                                        "warmup_teacher_temp_epochs": 2}, {"view": "multicrop"}),
    "dinov2": ("sslvit.objectives.DINOv2", {
        "encoder": {**ENCODER, "init_values": 1e-5, "reg_tokens": 1}, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
        "ibot_out_dim": 64, "ibot_hidden_dim": 32, "ibot_bottleneck_dim": 16, "centering": "center",
        "warmup_epochs": 1, "warmup_teacher_temp_epochs": 2, "freeze_last_layer_epochs": 1}, {"view": "multicrop"}),
}
# buffers that carry state from step to step, beside the weights (centers start at zero)
STATEFUL = {"mae": [], "supervised": [], "dino": ["teacher.head.mlp.0.weight", "loss.center"],
            "dinov2": ["teacher.dino_head.mlp.0.weight", "dino_loss.center", "ibot_loss.center"]}


def recipe(tmp_path: Path, shards: list[str], run: str, workers: int = 2, objective: str = "dino") -> Path:
    class_path, init_args, data = MODELS[objective]
    recipe = {
        "seed_everything": 0,
        # max_epochs as well, as every recipe has: Lightning then sets the train loader up before restoring
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": MAX_STEPS, "max_epochs": 10, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / run)},
        "model": {"class_path": class_path, "init_args": {"encoder": ENCODER, **init_args}},
        "data": {"train_shards": shards, "img_size": 32, "local_crops": 2, "local_img_size": 16,
                 "batch_size": 8, "num_workers": workers, "epoch_samples": 40, "shuffle_buffer": 16, **data},
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def assert_same_state(resumed: dict, reference: dict, note: str = "") -> None:
    """Weights (EMA teachers, centers and every buffer included), optimizer state, schedules, step count."""
    assert resumed["global_step"] == reference["global_step"]
    state, expected = resumed["state_dict"], reference["state_dict"]
    assert state.keys() == expected.keys()
    differ = [k for k in state if not torch.equal(state[k], expected[k])]
    assert not differ, f"{note}; after resuming these differ from the uninterrupted run: {differ[:5]}"
    for got, want in zip(resumed["optimizer_states"], reference["optimizer_states"], strict=True):
        assert got["state"].keys() == want["state"].keys()
        for a, b in zip(got["state"].values(), want["state"].values()):
            assert all(torch.equal(a[k], b[k]) for k in a), note
        assert [{k: v for k, v in g.items() if k != "params"} for g in got["param_groups"]] == \
               [{k: v for k, v in g.items() if k != "params"} for g in want["param_groups"]], note
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]
    # the epoch and the batches done; not Lightning's "processed" tallies, which a restart at an epoch's end counts
    # one higher (its own bookkeeping; what training depends on is compared above)
    assert resumed["epoch"] == reference["epoch"]
    for loop, done in (("epoch_progress", "completed"), ("epoch_loop.batch_progress", "completed")):
        assert resumed["loops"]["fit_loop"][loop]["total"][done] == reference["loops"]["fit_loop"][loop]["total"][done], loop


@pytest.mark.slow
# every objective in the main process; with 2 loader workers once for each way a view gets its random numbers (our
# views: the batch's generator, DINO's multi-crop; other views: the global states swapped in, timm's fine-tuning
# transform); flips and DINO's photometric steps run on the device, seeded per batch
@pytest.mark.parametrize("objective,workers", [(o, 0) for o in sorted(MODELS)] + [("dino", 2), ("supervised", 2)])
def test_killed_and_resumed_run_ends_exactly_as_an_uninterrupted_one(tiny_shards, tmp_path, objective, workers):
    assert main([str(recipe(tmp_path, tiny_shards["train"], "ref", workers, objective))]) == 0
    reference = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    assert reference["global_step"] == MAX_STEPS

    killed = recipe(tmp_path, tiny_shards["train"], "killed", workers, objective)
    ckpts = tmp_path / "killed" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "sslvit.fit", str(killed), "--checkpoint_every_n_steps=1"],
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

    assert main([str(killed), "--resume"]) == 0
    resumed = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert not list(ckpts.glob(f"{TMP_PREFIX}*"))
    assert resumed["global_step"] == MAX_STEPS
    assert_same_state(resumed, reference, f"{objective} killed at step {killed_at}")
    for key in STATEFUL[objective]:  # compared above, and not trivially: they moved from their start
        assert key in resumed["state_dict"] and resumed["state_dict"][key].abs().sum() > 0, key


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


@pytest.mark.slow
def test_sigterm_and_sigusr1_save_say_so_and_exit_non_zero_and_the_run_resumes_exactly(tiny_shards, tmp_path):
    assert main([str(recipe(tmp_path, tiny_shards["train"], "ref", 2, "mae"))]) == 0
    reference = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    for sig, at in ((signal.SIGTERM, 3), (signal.SIGUSR1, 5)):  # mid-epoch, and at an epoch's end (5 batches an epoch)
        run = recipe(tmp_path, tiny_shards["train"], sig.name, 2, "mae")
        last = tmp_path / sig.name / "checkpoints" / "last.ckpt"
        proc = subprocess.Popen([sys.executable, "-m", "sslvit.fit", str(run), "--progress_every_n_steps=1"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for line in proc.stdout:  # one plain progress line a step (stdout is not a terminal)
            if line.startswith(f"step {at}/"):
                break
        os.killpg(proc.pid, sig)  # to every process of the job, loader workers too, as a scheduler sends it
        out, err = proc.communicate(timeout=120)
        stopped = [ln for ln in err.splitlines() if ln.startswith("sslvit fit: stopped")]
        assert proc.returncode == 128 + sig, err[-3000:]
        step = torch.load(last, weights_only=True)["global_step"]
        assert at <= step < MAX_STEPS
        assert stopped == [f"sslvit fit: stopped by {sig.name} at step {step}; saved {last}, continue with --resume"], err[-3000:]
        assert main([str(run), "--resume"]) == 0
        assert_same_state(torch.load(last, weights_only=True), reference, f"{sig.name} at step {step}")


def test_the_fine_tuning_view_never_drops_a_sample_at_randaugments_top_magnitude():
    """RandAugment at magnitude 10 with increasing severity posterizes to 0 bits, which today's Pillow refuses: the
    sample was dropped as corrupt, and a resumed run (which passes over trained batches unviewed) dropped another."""
    import random

    import numpy as np
    from PIL import Image

    from sslvit.data.views import finetune_view

    view = finetune_view(32, auto_augment="rand-n2-m10-mstd0-inc1")  # every op at its top level, 2 per image
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    for _ in range(200):  # posterize is 1 of 15 ops: drawn about 26 times
        assert view(image).shape == (3, 32, 32)

"""FSDP2 (Lightning's ModelParallelStrategy, ``torch.distributed.fsdp.fully_shard``) on the CPU over gloo, launched
as a user launches it: ``python -m sslvit.fit RECIPE --trainer.devices=2 --trainer.strategy=<ModelParallelStrategy>``.

Every objective trains sharded and ends where DDP on the same data ends; DINO's and DINOv2's teacher is sharded like
its student and its EMA, run on the shards, is the EMA of the gathered tensors; a 2-rank checkpoint (a sharded folder,
or one full file) resumes on 1 rank; ``sslvit export`` of it gives the features of the trained backbone."""

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from sslvit.checkpoint import is_sharded_checkpoint, read_sharded_checkpoint
from sslvit.objectives.optim import fill_adamw_state_
from tests.helpers import make_shards

ROOT = Path(__file__).parent.parent
ENCODER = {"size": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
# clip_grad small enough to clip: the norms of sharded gradients must be those of the whole ones
HEADS = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "clip_grad": 1e-3}
MULTICROP = {"view": "multicrop", "local_crops": 2, "local_img_size": 16}
MODELS = {
    "mae": ({"class_path": "sslvit.objectives.MAE",
             "init_args": {"encoder": ENCODER, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}, {"view": "mae"}),
    "supervised": ({"class_path": "sslvit.objectives.Supervised",
                    "init_args": {"encoder": ENCODER, "num_classes": 10, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}},
                   {"view": "finetune"}),
    "dino": ({"class_path": "sslvit.objectives.DINO", "init_args": {"encoder": ENCODER, **HEADS}}, MULTICROP),
    "dinov2": ({"class_path": "sslvit.objectives.DINOv2",
                "init_args": {"encoder": {**ENCODER, "patch_size": 4, "init_values": 1e-5, "drop_path_rate": 0.1},
                              **HEADS, "ibot_separate_head": True, "ibot_out_dim": 48, "ibot_hidden_dim": 32,
                              "ibot_bottleneck_dim": 16}}, MULTICROP),
}
FSDP = {"class_path": "sslvit.strategies.ModelParallelStrategy"}  # Lightning's, its folders replaced whole
FULL_FILE = {**FSDP, "init_args": {"save_distributed_checkpoint": False}}  # one gathered file, as DDP writes


def gathered(state: dict) -> dict:
    """Full tensors of a state dict whose tensors may be DTensors (a collective: every rank calls it)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}


class Record(Callback):
    """Each rank writes the gathered weights at the end; DINO / DINOv2 also, after every step, whether the teacher
    is sharded and how far it is from ``m x teacher_before + (1 - m) x student_after`` on the gathered tensors."""

    def __init__(self, out: str) -> None:
        self.out, self.steps = Path(out), []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = gathered(pl_module.state_dict())  # after a resume: what the checkpoint gave

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if hasattr(pl_module, "teacher"):
            self.before = gathered(dict(pl_module.teacher.named_parameters()))
            self.momentum = pl_module.momentum(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not hasattr(pl_module, "teacher"):
            return
        teacher, student = dict(pl_module.teacher.named_parameters()), dict(pl_module.student.named_parameters())
        now, s = gathered(teacher), gathered(student)
        m = self.momentum
        self.steps.append({
            "teacher_dtensors": all(type(p).__name__ == "DTensor" for p in teacher.values()),
            # each rank holds its rows of every parameter (FSDP2 shards dim 0; the last rank's share may be short)
            "teacher_rows_split": all(p.to_local().shape[0] == -(-p.shape[0] // trainer.world_size)
                                      for p in teacher.values() if p.shape[0] > 1 and hasattr(p, "to_local") and trainer.global_rank == 0),
            "teacher_local": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in teacher.values()),
            "teacher_full": sum(p.numel() for p in now.values()),
            "ema_error": max((now[k] - (m * self.before[k] + (1 - m) * s[k])).abs().max().item() for k in now),
            "moved": max((now[k] - self.before[k]).abs().max().item() for k in now),
        })

    def on_train_end(self, trainer, pl_module) -> None:
        state = gathered(pl_module.state_dict())
        torch.save({"start": self.start, "state": state, "steps": self.steps, "global_step": trainer.global_step},
                   self.out / f"rank{trainer.global_rank}.pt")


def fit(run: Path, objective: str, shards: list, devices: int, strategy, steps: int = 2, resume: bool = False,
        *overrides: str) -> dict:
    """``steps`` steps of a tiny fit in ``run`` (``python -m sslvit.fit``); rank 0's record."""
    model, data = MODELS[objective]
    recipe = {
        "seed_everything": 0,
        "trainer": {"max_steps": steps, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(run)},
        "model": model,
        "data": {"train_shards": shards, "img_size": 32, "batch_size": 4, "num_workers": 0, "epoch_samples": 64,
                 "shuffle_buffer": 1, **data},
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    callback = {"class_path": "tests.test_fsdp.Record", "init_args": {"out": str(run)}}
    proc = subprocess.run(
        [sys.executable, "-m", "sslvit.fit", str(path), "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
         f"--trainer.strategy={strategy if isinstance(strategy, str) else json.dumps(strategy)}", f"--trainer.callbacks=[{json.dumps(callback)}]",
         *(["--resume"] if resume else []), *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        # one thread per rank: two ranks share the cores, and a fixed summation order inside each op leaves only
        # FSDP's and DDP's reductions to differ (with a thread count of its own choosing, DINOv2's Adam steps on
        # near-zero gradients moved apart by more than the tolerance in one CI run)
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return torch.load(run / "rank0.pt", weights_only=True)


@cache
def shards(root: Path) -> list:
    return make_shards(root, "train", 64, seed=0)


@cache
def monitored(root: Path) -> tuple[str, str]:
    """The overrides that add the k-NN monitor on 33 held-out samples (batches of 4: the two ranks hold different
    numbers of them) to a fit; every fit that is compared with another takes them, so both draw the same numbers."""
    val = make_shards(root / "val", "val", 33, seed=1)
    monitor = {"class_path": "sslvit.eval.monitor.KNNMonitor", "init_args": {"k": 5, "batch_size": 4}}
    return f"--trainer.callbacks+={json.dumps(monitor)}", f"--data.val_shards={json.dumps(val)}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each objective's 2-rank FSDP fit and 2-rank DDP fit on the same data, with the k-NN monitor, run once for
    this file's tests."""
    root = tmp_path_factory.mktemp("fsdp")
    done = {}

    def get(objective: str, strategy: str) -> tuple[Path, dict]:
        if (objective, strategy) not in done:
            run = root / f"{objective}_{strategy}"
            plan = {"ddp": "ddp", "fsdp": FSDP, "fsdp_full": FULL_FILE}[strategy]
            done[objective, strategy] = run, fit(run, objective, shards(root / "shards"), 2, plan, 2, False, *monitored(root))
        return done[objective, strategy]

    return get


def assert_states_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys() and a
    worst = max(a, key=lambda k: (a[k].float() - b[k].float()).abs().max().item() if a[k].numel() else 0.0)
    torch.testing.assert_close(a[worst].float(), b[worst].float(), atol=atol, rtol=0, msg=f"{worst} differs most")


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(MODELS))
def test_two_rank_fsdp_fit_ends_where_ddp_ends(objective, runs):
    run, sharded = runs(objective, "fsdp_full" if objective == "mae" else "fsdp")
    _, ddp = runs(objective, "ddp")
    assert sharded["global_step"] == ddp["global_step"] == 2
    # the same data, the same seeds per rank: FSDP's reduce-scatter and DDP's all-reduce give one step
    assert_states_close(sharded["state"], ddp["state"], atol=2e-5)
    last = run / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(last) == (objective != "mae") and last.exists()
    if objective in ("dino", "dinov2"):
        steps = sharded["steps"]
        assert len(steps) == 2 and all(s["teacher_dtensors"] for s in steps)
        assert all(s["teacher_rows_split"] and s["teacher_local"] < 0.6 * s["teacher_full"] for s in steps)
        assert all(s["moved"] > 0 for s in steps)  # the EMA moved it ...
        assert max(s["ema_error"] for s in steps) < 1e-6  # ... exactly as on the gathered tensors
        assert max(s["ema_error"] for s in ddp["steps"]) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dino", "mae"])
def test_a_two_rank_checkpoint_resumes_on_one_rank_and_exports(objective, runs, tmp_path):
    """DINO: a sharded folder; MAE: one full file.  Resumed on one rank: the weights it starts from are the
    2-rank run's last, and it trains on; exported: the backbone's features, plain timm."""
    import timm

    from sslvit.checkpoint import read_checkpoint
    from sslvit.export import export_backbone
    from sslvit.models.encoder import Encoder, encoder_config

    run, two = runs(objective, "fsdp_full" if objective == "mae" else "fsdp")
    last = run / "checkpoints" / "last.ckpt"
    saved = read_sharded_checkpoint(last) if objective == "dino" else read_checkpoint(last)
    assert_states_close(saved["state_dict"], two["state"], atol=0)

    out = export_backbone(last, tmp_path / "export")
    vit = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    prefix = saved["sslvit_backbone"]["prefix"]
    encoder = Encoder(encoder_config(saved["sslvit_backbone"]["encoder"]))
    encoder.load_state_dict({k[len(prefix):]: v for k, v in two["state"].items() if k.startswith(prefix)})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), encoder.eval().vit.forward_features(x))

    from sslvit.analysis.analyze import load

    analyzed = load(last)  # sslvit analyze reads the checkpoint (a sharded folder is not an export folder)
    with torch.no_grad():
        torch.testing.assert_close(analyzed.vit.eval().forward_features(x), vit.forward_features(x))
    assert analyzed.pos_embed == saved["sslvit_backbone"]["encoder"]["pos_embed"]

    resumed = run.parent / f"{run.name}_resumed"
    import shutil

    shutil.copytree(run, resumed)
    # on one rank at the same global batch (2 x 4 = 1 x 8), as the README says; another is refused (test_bad_input_runs.py)
    one = fit(resumed, objective, shards(run.parent / "shards"), 1, FSDP, 3, True, "--data.batch_size=8")
    assert one["global_step"] == 3
    assert_states_close(one["start"], two["state"], atol=0)  # every weight and the EMA teacher, from 2 ranks to 1
    moved = max((one["state"][k].float() - two["state"][k].float()).abs().max().item() for k in two["state"])
    assert moved > 0


@pytest.mark.slow
def test_compiled_blocks_compose_with_sharding(runs, tmp_path):
    """model.compile (each block compiled, then sharded: torchtitan's order) trains as the eager sharded fit does."""
    run, eager = runs("dino", "fsdp")
    compiled = fit(tmp_path / "compiled", "dino", shards(run.parent / "shards"), 2, FSDP, 2, False,
                   "--model.init_args.compile=true", *monitored(run.parent))
    assert compiled["steps"][-1]["teacher_dtensors"] and max(s["ema_error"] for s in compiled["steps"]) < 1e-6
    assert_states_close(compiled["state"], eager["state"], atol=2e-5)


def test_fill_adamw_state_gives_the_state_a_first_step_makes():
    """A parameter without gradients so far gets AdamW's initial state; its later steps are those of the lazy state."""
    torch.manual_seed(0)
    a, b = (torch.nn.Parameter(torch.randn(3, 4)) for _ in range(2))
    lazy = [p.detach().clone().requires_grad_() for p in (a, b)]
    opts = [torch.optim.AdamW([a, b], lr=0.1, fused=True), torch.optim.AdamW(lazy, lr=0.1, fused=True)]
    for params, opt in zip(([a, b], lazy), opts):
        params[0].grad = torch.ones(3, 4)  # step 1: only the first has a gradient
        opt.step()
        opt.zero_grad()
    assert fill_adamw_state_(opts[0]) == 1 and fill_adamw_state_(opts[0]) == 0
    assert opts[0].state[b]["step"].item() == 0 and not opts[0].state[b]["exp_avg"].any()
    for params, opt in zip(([a, b], lazy), opts):
        for _ in range(2):  # both now
            for p in params:
                p.grad = torch.full((3, 4), 0.5)
            opt.step()
    torch.testing.assert_close(b, lazy[1], rtol=0, atol=0)
    torch.testing.assert_close(a, lazy[0], rtol=0, atol=0)


def test_a_sharded_checkpoint_under_another_strategy_is_one_line(tmp_path, tiny_shards, capsys):
    """A sharded folder (here only its meta.pt) resumed by DDP or one device: one line, before any step."""
    from sslvit.cli.fit import main as fit_main
    from tests.helpers import write_recipe

    recipe = write_recipe(tmp_path / "tiny.yaml", tmp_path / "run", tiny_shards["train"], trainer={"max_steps": 2})
    folder = tmp_path / "run" / "checkpoints" / "last.ckpt"
    folder.mkdir(parents=True)
    torch.save({"global_step": 2}, folder / "meta.pt")
    assert fit_main([str(recipe)]) == 2  # a run is there: a folder counts as a checkpoint
    assert "--resume" in capsys.readouterr().err
    assert fit_main([str(recipe), "--resume"]) == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip() and "Warning" not in ln]
    assert len(lines) == 1 and "is a sharded checkpoint folder" in lines[0] and "SingleDeviceStrategy" in lines[0], lines


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dino", "supervised"])  # a teacher; an encoder with a classifier head
def test_the_knn_monitor_evaluates_a_sharded_teacher(objective, runs):
    """Under FSDP the k-NN monitor evaluates a gathered copy of the teacher, so ranks holding different
    numbers of held-out batches (33 samples, batches of 4) never wait for each other; it reads what DDP reads."""
    summaries = {name: json.loads((runs(objective, name)[0] / "summary.json").read_text()) for name in ("fsdp", "ddp")}
    assert summaries["fsdp"]["knn_top1_random_init"] == summaries["ddp"]["knn_top1_random_init"]
    assert abs(summaries["fsdp"]["knn_top1"] - summaries["ddp"]["knn_top1"]) <= 1 / 33 + 1e-6

"""A training step that does not wait for the device: on steps that log nothing, nothing in the training
path (objectives, callbacks, Lightning's loop as sslvit.fit sets it up) reads a tensor's value on the host.
On a GPU each such read (``.item()``, ``float(t)``, ``bool(t)``, ``.cpu()``, ``.tolist()``) stalls the host
until the device has caught up; on the CPU they are counted here instead (torch.cuda.set_sync_debug_mode
does the same on a GPU).  Some operators wait for the GPU without any such read: they size their output by
its data (``nonzero``, a boolean index, ``bincount``, ``masked_select``, ``unique``) or copy a host value to
the device (``torch.tensor(x, device=...)``); the first H200 run found four of them in the DINO and iBOT losses
(docs/benchmarks.md).  A dispatch mode counts those too."""

import collections
import traceback

import pytest
import torch
import yaml
from lightning.pytorch import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from sslvit.cli.fit import main

READS = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist", "cpu", "numpy")
ENCODER = {"size": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
MULTICROP = {"view": "multicrop", "local_crops": 2, "local_img_size": 16}
HEADS = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}
OBJECTIVES = {
    "MAE": ({"encoder": ENCODER, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}, {}),
    "DINO": ({"encoder": ENCODER, **HEADS}, MULTICROP),
    "DINOv2": ({"encoder": {**ENCODER, "patch_size": 4}, **HEADS, "ibot_out_dim": 64, "ibot_hidden_dim": 32,
                "ibot_bottleneck_dim": 16}, MULTICROP),
    "Supervised": ({"encoder": ENCODER, "num_classes": 4, "cutmix_alpha": 0.0}, {}),
}
LOG_EVERY, STEPS = 4, 11
# operators that size their output by the data, or copy host data to the device: each a sync on a GPU
SYNCING = ("nonzero", "bincount", "masked_select", "unique", "repeat_interleave.Tensor", "_local_scalar_dense")


class CountHostReads(Callback):
    """Counts reads of tensor values from the start to the end of each training batch whose step logs
    nothing (and is not the last: the end of a run reports what it has)."""

    reads: collections.Counter = collections.Counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        CountHostReads.active = step % LOG_EVERY not in (0, LOG_EVERY - 1) and 0 < step < STEPS - 1

    def on_train_batch_end(self, *args) -> None:
        CountHostReads.active = False


class CountSyncingOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if CountHostReads.active:
            name = str(func.overloadpacket) + ("." + func._overloadname if func._overloadname != "default" else "")
            bool_index = func.overloadpacket in (torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_) \
                and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
            if bool_index or any(op in name for op in SYNCING):
                caller = next((f for f in reversed(traceback.extract_stack()) if "/sslvit/" in f.filename), None)
                where = f"{caller.filename.rsplit('/', 2)[-1]}:{caller.lineno}" if caller else "torch"
                CountHostReads.reads[f"{name}{' (boolean index)' if bool_index else ''} at {where}"] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def count_reads(monkeypatch):
    CountHostReads.reads = collections.Counter()
    CountHostReads.active = False
    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, _original=original, _name=name, **kwargs):
            if CountHostReads.active:
                caller = next(f for f in reversed(traceback.extract_stack(limit=6)[:-1]))
                CountHostReads.reads[f"{_name} at {caller.filename.rsplit('/', 2)[-1]}:{caller.lineno}"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    for name in ("tensor", "as_tensor"):  # host data copied to a device: a sync on a GPU (a fill is not)
        original = getattr(torch, name)

        def made(*args, _original=original, _name=name, **kwargs):
            if CountHostReads.active and kwargs.get("device") is not None:
                caller = traceback.extract_stack(limit=2)[0]
                CountHostReads.reads[f"torch.{_name}(..., device=) at {caller.filename.rsplit('/', 2)[-1]}:{caller.lineno}"] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, made)
    return CountHostReads.reads


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_steps_that_log_nothing_read_no_tensor_on_the_host(objective, count_reads, tiny_shards, tmp_path):
    init_args, data = OBJECTIVES[objective]
    recipe = {
        "trainer": {"accelerator": "cpu", "max_steps": STEPS, "log_every_n_steps": LOG_EVERY,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "tests.test_no_host_sync.CountHostReads"}]},
        "model": {"class_path": f"sslvit.objectives.{objective}", "init_args": init_args},
        "data": {"train_shards": tiny_shards["train"], "img_size": 32, "batch_size": 8, "num_workers": 0,
                 "epoch_samples": 64, **data},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with CountSyncingOps():
        assert main([str(tmp_path / "recipe.yaml")]) == 0
    assert not count_reads, dict(count_reads)

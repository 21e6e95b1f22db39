"""Weights & Biases (offline) and MLflow (its local file store), for real, beside CSV and TensorBoard; figures to
every logger that takes images."""

import csv
from pathlib import Path

import pytest

from sslvit.cli.fit import main as fit_main
from tests.helpers import write_recipe

pytest.importorskip("wandb")
pytest.importorskip("mlflow")


@pytest.mark.slow
def test_wandb_offline_and_mlflow_files_beside_csv_and_tensorboard(tmp_path, tiny_shards, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", run, tiny_shards["train"], trainer={"max_steps": 3})
    assert fit_main([str(recipe), "--logger", "wandb", "--logger", "mlflow", "--model.init_args.recon_every_n_steps=2"]) == 0
    # CSV and TensorBoard as always
    rows = list(csv.DictReader((run / "logs" / "version_0" / "metrics.csv").open()))
    assert sum(1 for r in rows if r.get("train/loss")) == 3
    assert list((run / "logs" / "version_0").glob("events.out.tfevents.*"))
    # W&B's offline run: its history file and the reconstructions (steps 0 and 2) as images
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    assert len(list((offline / "files" / "media" / "images" / "mae").glob("reconstruction_*.png"))) == 2
    # MLflow's file store in the run folder: the loss over steps, and the figures as artifacts
    (mlrun,) = [p for p in (run / "mlruns").glob("*/*") if p.is_dir()]  # <experiment>/<run> (experiment 0 is empty)
    losses = (mlrun / "metrics" / "train" / "loss").read_text().splitlines()
    assert len(losses) == 3
    assert sorted(p.name for p in (mlrun / "artifacts" / "mae" / "reconstruction").iterdir()) == \
        ["step_0000000.png", "step_0000002.png"]
    assert Path(run / "figures" / "mae_reconstruction_step0000002.png").is_file()

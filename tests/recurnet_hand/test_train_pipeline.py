"""The training pipeline behind ``recurnet-hand train``: stopping and resuming a run."""

import csv
import subprocess
import sys

import pytest
import torch

from recurnet_hand.config import RunConfig, with_overrides
from recurnet_hand.train import train


def tiny_run(tmp_path):
    return with_overrides(RunConfig(), {
        "model.preset": "tiny", "model.max_loops": 1, "data.train_samples": 12, "data.test_samples": 6,
        "data.workers": 0, "data.root": str(tmp_path / "cache"), "train.epochs": 2, "train.loop_epochs": 1,
        "train.batch_size": 6, "gate.epochs": 1, "out_dir": str(tmp_path / "run"), "device": "cpu",
    })


@pytest.mark.parametrize("ema", [None, 0.9])
def test_a_stopped_run_resumes_where_it_stopped(tmp_path, ema):
    run = with_overrides(tiny_run(tmp_path), {"train.ema": ema})
    out = tmp_path / "run"
    assert train(run, progress=False, max_epochs=1) is None  # time-boxed: one epoch, no gate or evaluation
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "model.pt").exists()
    stored = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["ema"]
    assert (stored is None) == (ema is None)  # the weight average travels with the checkpoint

    summary = train(run, resume=out / "checkpoints" / "last.pt", progress=False)
    assert summary.model_path == out / "model.pt" and summary.model_path.is_file()
    assert len(summary.auc3d_per_loop) == 2 and (out / "summary.json").is_file()
    with open(out / "metrics.csv") as f:
        epochs = [(r["phase"], r["epoch"]) for r in csv.DictReader(f) if r["name"] == "train/epoch_loss"]
    assert epochs == [("0", "1"), ("0", "2"), ("1", "1")]  # every epoch once: nothing redone, nothing skipped


@pytest.mark.slow
def test_the_cli_trains_under_torchrun_with_two_processes(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "recurnet_hand.cli", "train", "--preset", "tiny", "--max-loops", "1",
               "--train-samples", "16", "--test-samples", "8",
               "--epochs", "1", "--loop-epochs", "1", "--batch-size", "4", "--gate-epochs", "2", "--workers", "0",
               "--data-root", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "run"), "--device", "cpu",
               "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("3D AUC per loop") == 1  # one report, from rank 0
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "summary.json").is_file()
    with open(tmp_path / "run" / "metrics.csv") as f:
        epochs = [(r["phase"], r["epoch"]) for r in csv.DictReader(f) if r["name"] == "train/epoch_loss"]
    assert epochs == [("0", "1"), ("1", "1")]

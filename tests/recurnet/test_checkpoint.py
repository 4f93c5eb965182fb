"""Checkpoints: atomic writes, safe loading, config checks, and resume to identical weights."""

import csv
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import recurnet
from recurnet.losses import LoopLoss, LossTerm
from recurnet.training import (
    CheckpointError,
    ConfigMismatchError,
    EndToEnd,
    Progressive,
    TrainConfig,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)
from recurnet.training.rng import rng_state, set_rng_state

REPO = Path(recurnet.__file__).resolve().parents[1]


def tiny_net(max_loops=1, seed=0):
    torch.manual_seed(seed)
    return recurnet.loopify(
        "test_resnet",
        stage=2,
        max_loops=max_loops,
        check_size=(32, 32),
        heads={"y": lambda c: nn.Sequential(nn.Dropout(0.2), nn.Linear(c, 1))},
        uncertainty=True,
        uncertainty_hidden=16,
    )


class NoisyMean(torch.utils.data.Dataset):
    """Target 3 x image mean; every read adds fresh torch and numpy noise (draws from the global RNGs)."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = 3 * self.x.mean(dim=(1, 2, 3))[:, None]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = 0.1 * torch.randn(3, 32, 32) + float(np.random.uniform(-0.01, 0.01))
        return {"image": self.x[i] + noise, "target": self.y[i]}


LOSS = LoopLoss([LossTerm("y", "target", "smooth_l1", variance_weight=0.5)])


def config(out_dir, **kw):
    kw = {"batch_size": 8, "lr": 1e-3, "schedule": "cosine", "progress": False, "log_every": 2, **kw}
    return TrainConfig(kw.pop("protocol", Progressive((2, 1, 2))), out_dir=str(out_dir), **kw)


def assert_same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ---------------------------------------------------------------------- files


def test_save_load_round_trip_with_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "phase": 1, "nested": [{"a": None, "b": "text"}, (1, 2.5)]}
    path = save_checkpoint(tmp_path / "c.pt", {**state, "config": {}, "epoch": 0, "global_step": 0,
                                               "optimizer": {}, "scheduler": {}, "rng": rng_state(), "data": {}})
    raw = torch.load(path, weights_only=True)  # plain data only: the safe loader accepts it
    assert raw["format"] == "recurnet-checkpoint" and torch.equal(raw["model"]["w"], torch.arange(3.0))
    assert load_checkpoint(path)["nested"][0] == {"a": None, "b": "text"}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary files left


def test_failed_save_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"value": torch.tensor(1.0)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"value": Unpicklable()})
    assert torch.load(path, weights_only=True)["value"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_missing_truncated_and_foreign_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    good = save_checkpoint(tmp_path / "good.pt", {"model": {"w": torch.randn(100)}})
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    # Random bytes, some after a pickle header, fail in many ways inside the unpickler: all read as corrupt.
    rng = np.random.default_rng(0)
    for k in range(40):
        noise = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
        (tmp_path / "noise.pt").write_bytes((b"\x80\x02" if k % 2 else b"") + noise)
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(tmp_path / "noise.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a recurnet checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(good)  # a checkpoint file without the trainer's fields


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    saved = rng_state()
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    path = save_checkpoint(tmp_path / "r.pt", {"rng": saved})
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]


# ---------------------------------------------------------------------- resume


def test_resume_reaches_the_same_weights_across_phase_boundaries(tmp_path):
    full = tiny_net(max_loops=2)
    Trainer(full, LOSS, NoisyMean(), config(tmp_path / "full")).fit()

    part = tiny_net(max_loops=2)
    first = Trainer(part, LOSS, NoisyMean(), config(tmp_path / "part")).fit(max_epochs=2)  # ends phase 0
    assert (first.phase, first.epoch, first.finished) == (0, 2, False)
    ckpt = tmp_path / "part" / "checkpoints" / "last.pt"
    second = Trainer(tiny_net(max_loops=2, seed=9), LOSS, NoisyMean(), config(tmp_path / "part")).fit(
        resume=ckpt, max_epochs=2
    )  # phase 1, then the first epoch of phase 2
    assert (second.phase, second.epoch) == (2, 1)
    resumed = tiny_net(max_loops=2, seed=5)  # different initial weights: everything comes from the checkpoint
    third = Trainer(resumed, LOSS, NoisyMean(), config(tmp_path / "part")).fit(resume=ckpt)
    assert third.finished and third.global_step == 5 * 3
    assert_same_weights(full, resumed)

    def rows(run):
        with open(tmp_path / run / "metrics.csv", newline="") as f:
            return [(r["phase"], r["epoch"], r["step"], r["name"]) for r in csv.DictReader(f)]

    assert rows("part") == rows("full")  # no rows duplicated by the resumed epochs

    again = Trainer(tiny_net(max_loops=2), LOSS, NoisyMean(), config(tmp_path / "part")).fit(resume=ckpt)
    assert again.finished and again.history == [] and again.global_step == third.global_step


def test_config_mismatch_names_the_fields(tmp_path):
    Trainer(tiny_net(), LOSS, NoisyMean(), config(tmp_path / "a", protocol=EndToEnd(1)), run_config={"width": 8}).fit()
    ckpt = tmp_path / "a" / "checkpoints" / "last.pt"
    other = config(tmp_path / "a", protocol=EndToEnd(2), lr=0.01)
    with pytest.raises(ConfigMismatchError) as info:
        Trainer(tiny_net(), LOSS, NoisyMean(), other, run_config={"width": 16}).fit(resume=ckpt)
    assert info.value.differences == [
        "train.lr: checkpoint 0.001, now 0.01",
        "train.protocol.epochs: checkpoint 1, now 2",
        "run.width: checkpoint 8, now 16",
    ]
    # runtime fields (output folder, logging, progress) may differ
    runtime = config(tmp_path / "b", protocol=EndToEnd(1), log_every=5, progress=False)
    result = Trainer(tiny_net(), LOSS, NoisyMean(), runtime, run_config={"width": 8}).fit(resume=ckpt)
    assert result.finished


def test_resume_into_another_network_or_from_bad_files_fails_clearly(tmp_path):
    cfg = config(tmp_path / "a", protocol=EndToEnd(1))
    Trainer(tiny_net(max_loops=1), LOSS, NoisyMean(), cfg).fit()
    ckpt = tmp_path / "a" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="does not fit this network"):
        Trainer(tiny_net(max_loops=2), LOSS, NoisyMean(), cfg).fit(resume=ckpt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(tiny_net(), LOSS, NoisyMean(), cfg).fit(resume=tmp_path / "missing.pt")
    data = ckpt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Trainer(tiny_net(), LOSS, NoisyMean(), cfg).fit(resume=tmp_path / "cut.pt")


_SCRIPT = """
import sys, time
import torch
sys.path.insert(0, {tests!r})
from test_checkpoint import LOSS, NoisyMean, config, tiny_net
from recurnet.training import Progressive, Trainer

torch.set_num_threads(1)
out, mode = sys.argv[1], sys.argv[2]

def stall(trainer, info):
    # Hold the process after the second epoch, before its checkpoint, so the kill lands mid-run.
    if mode == "killable" and info.global_epoch == 2:
        time.sleep(120)

net = tiny_net(max_loops=2)
resume = out + "/checkpoints/last.pt" if mode == "resume" else None
Trainer(net, LOSS, NoisyMean(), config(out, protocol=Progressive((1, 2))), callbacks=[stall]).fit(resume=resume)
torch.save(net.state_dict(), out + "/final.pt")
"""


@pytest.mark.slow  # three Python processes importing torch and timm: 15-40 s on two shared cores
def test_killed_process_resumes_to_the_same_weights(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(tests=str(Path(__file__).parent))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = lambda out, mode: subprocess.Popen(  # noqa: E731
        [sys.executable, str(script), str(out), mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    full, killable = run(tmp_path / "full", "full"), run(tmp_path / "killed", "killable")
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert killable.poll() is None, killable.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    killable.send_signal(signal.SIGKILL)
    killable.wait()
    assert killable.returncode == -signal.SIGKILL
    assert load_checkpoint(ckpt)["epoch"] == 1  # only the first epoch was saved
    resumed = run(tmp_path / "killed", "resume")
    for proc in (full, resumed):
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out.decode()
    a = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

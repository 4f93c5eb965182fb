"""Data-parallel training: two CPU processes under torchrun (gloo) keep identical parameters."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

import recurnet
from recurnet.training import DistributedContext, init_distributed
from recurnet.training.distributed import current_context, unwrap

REPO = Path(recurnet.__file__).resolve().parents[1]

_SCRIPT = """
import sys
import torch
from torch import nn
import recurnet
from recurnet.losses import LoopLoss, LossTerm
from recurnet.training import Progressive, TrainConfig, Trainer, cleanup_distributed, init_distributed

torch.set_num_threads(1)
context = init_distributed()
out = sys.argv[1]


class MeanTask(torch.utils.data.Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = 3 * self.x.mean(dim=(1, 2, 3))[:, None]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "target": self.y[i], "index": i}


seen = []


class Recording(MeanTask):
    def __getitem__(self, i):
        seen.append(i)
        return super().__getitem__(i)


torch.manual_seed(context.rank)  # different initial weights per rank: DDP must broadcast rank 0's
net = recurnet.loopify("test_resnet", stage=2, max_loops=1, check_size=(32, 32),
                       heads={"y": lambda c: nn.Linear(c, 1)}, uncertainty=True, uncertainty_hidden=16)
initial = {k: v.clone() for k, v in net.named_parameters()}
loss = LoopLoss([LossTerm("y", "target", "l2", variance_weight=0.5)])
cfg = TrainConfig(Progressive((1, 1)), batch_size=4, progress=False, out_dir=out, log_every=1)
trainer = Trainer(net, loss, Recording(), cfg)
trainer.fit()
torch.save({"params": {k: v.detach() for k, v in net.named_parameters()}, "initial": initial,
            "seen": seen, "steps": trainer.steps_per_epoch, "world": context.world_size},
           f"{out}/rank{context.rank}.pt")
cleanup_distributed()
"""


def test_single_process_context_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == DistributedContext() == current_context()
    assert DistributedContext().is_main and not DistributedContext().enabled
    net = nn.Linear(2, 2)
    assert unwrap(net) is net


def test_two_processes_keep_identical_parameters(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] == 32 // 2 // 4  # each rank gets half of the data per epoch
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), f"{name} differs between ranks"
    # ranks started from different weights, so agreement means DDP synchronised them; and training moved them
    assert any(not torch.equal(r0["initial"][k], r1["initial"][k]) for k in r0["initial"])
    assert any(not torch.equal(r0["initial"][k], r0["params"][k]) for k in r0["initial"])
    # the ranks read disjoint halves of the data in each epoch
    per_epoch = 16
    for e in range(2):
        window = slice(e * per_epoch, (e + 1) * per_epoch)
        a, b = set(r0["seen"][window]), set(r1["seen"][window])
        assert not a & b and a | b == set(range(32))
    # only rank 0 writes: one checkpoint, and each step's loss logged once
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert sum(",train/loss," in r for r in rows) == 2 * 4

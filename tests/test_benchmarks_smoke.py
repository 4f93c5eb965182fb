"""Smoke tests for the benchmark scripts: each main runs with ``--quick`` so the scripts cannot rot.

The scripts run with tiny models, one timing round and one CPU thread and
write their tables into a temporary folder. Nothing here asserts on time:
the checks are on what the scripts compute (equal outputs, matching exits,
counted parameters) and on the files they write.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _restore_torch_state():
    # The scripts set the thread count; leave the session as it was for other tests.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmark script by module name (the scripts import their siblings by plain name)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def _quick(tmp_path: Path) -> list[str]:
    return ["--quick", "--threads", "1", "--results-dir", str(tmp_path)]


def _read(tmp_path: Path, name: str) -> str:
    text = (tmp_path / f"{name}.md").read_text()
    assert "| torch |" in text and "| CPU |" in text and "torch threads | 1 intra-op" in text
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    return text


# ---------------------------------------------------------------------------------------------- _common


def test_common_doctests(bench):
    common = bench("_common")
    result = doctest.testmod(common)
    assert result.attempted >= 5 and result.failed == 0


def test_stats_quartiles_and_ratios(bench):
    common = bench("_common")
    s = common.Stats((5.0, 1.0, 3.0, 2.0, 4.0))
    assert (s.median, s.q1, s.q3, s.min, s.max) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert s.spread(digits=0) == "2-4"
    one = common.Stats((0.25,))
    assert one.q1 == one.q3 == one.median == 0.25
    r = common.paired_ratios(common.Stats((2.0, 3.0, 8.0)), common.Stats((1.0, 3.0, 2.0)))
    assert r.values == (2.0, 1.0, 4.0) and r.median == 2.0
    with pytest.raises(ValueError, match="same number of rounds"):
        common.paired_ratios(common.Stats((1.0,)), common.Stats((1.0, 2.0)))
    with pytest.raises(ValueError, match="at least one"):
        common.Stats(())


def test_time_interleaved_runs_in_alternating_rounds(bench):
    common = bench("_common")
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    stats = common.time_interleaved(fns, warmup=1, repeats=3)
    # one warm-up round, then timed rounds in forward, reverse, forward order
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc"
    assert all(len(stats[name].values) == 3 for name in "abc")
    assert all(v >= 0 for name in "abc" for v in stats[name].values)


def test_cpu_clock_counts_work_not_sleep(bench):
    import time

    common = bench("_common")
    stats = common.time_interleaved({"sleep": lambda: time.sleep(0.05)}, warmup=0, repeats=2, clock="cpu")
    assert stats["sleep"].max < 0.04  # a sleeping process uses (almost) no CPU time
    wall = common.time_call(lambda: time.sleep(0.05), warmup=0, repeats=1)
    assert wall.median >= 0.05
    with pytest.raises(ValueError, match="clock must be one of"):
        common.time_call(lambda: None, clock="gpu")


def test_markdown_table_and_bad_rows(bench):
    common = bench("_common")
    assert common.markdown_table(["x", "y"], [[1, 2]], "rl") == "| x | y |\n|---:|---|\n| 1 | 2 |"
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        common.markdown_table(["x", "y"], [[1]])
    with pytest.raises(ValueError, match="align"):
        common.markdown_table(["x"], [], "c")


def test_write_results_header_and_bad_name(bench, tmp_path):
    common = bench("_common")
    path = common.write_results("demo", "Demo", "| a |\n|---|", results_dir=tmp_path / "new", argv=["--x", "1"],
                                script="demo.py")
    text = path.read_text()
    assert path == tmp_path / "new" / "demo.md"
    assert text.startswith("# Demo\n\nWritten by `python benchmarks/demo.py --x 1`.")
    assert "| torch |" in text and common.NOISE_NOTE in text and text.rstrip().endswith("|---|")
    with pytest.raises(ValueError, match="result name"):
        common.write_results("../escape", "x", "", results_dir=tmp_path)


def test_setup_rejects_bad_settings(bench):
    import argparse

    common = bench("_common")
    parser = common.add_common_args(argparse.ArgumentParser())
    with pytest.raises(ValueError, match="--threads"):
        common.setup(parser.parse_args(["--threads", "0"]))
    with pytest.raises(ValueError, match="--repeats"):
        common.setup(parser.parse_args(["--repeats", "0"]))
    quick = parser.parse_args(["--quick", "--threads", "1"])
    common.setup(quick)
    assert (quick.warmup, quick.repeats) == (0, 1)


# ---------------------------------------------------------------------------------------------- scripts


def test_loop_overhead_quick(bench, tmp_path):
    rows = bench("bench_loop_overhead").main(_quick(tmp_path))
    assert [r["model"] for r in rows] == ["resnet18", "dirnet_stb"]
    assert all(r["equal"] and r["diff"] == 0.0 for r in rows)  # same modules, same order: bitwise equal
    assert all(r["ratio"].median > 0 for r in rows)
    text = _read(tmp_path, "loop_overhead")
    assert text.count("bitwise") == 2


def test_loop_overhead_train_quick(bench, tmp_path):
    rows = bench("bench_loop_overhead").main(_quick(tmp_path) + ["--train"])
    assert all(r["equal"] for r in rows)  # train mode: the same batch statistics, the same outputs
    assert "Training step" in _read(tmp_path, "loop_overhead_train")


def test_loader_quick(bench, tmp_path):
    result = bench("bench_loader").main(_quick(tmp_path))
    assert set(result["times"]) == {"per sample", "batched", "training step"} and result["ratio"].median > 0
    assert "time / training step" in _read(tmp_path, "loader")


def test_latency_quick(bench, tmp_path):
    try:
        rows = bench("bench_latency").main(_quick(tmp_path))
    finally:
        torch._dynamo.reset()
    names = [r["name"] for r in rows]
    assert "DIR-Net `tiny`, exit after loop 3" in names and any("variance policy" in n for n in names)
    assert any("compiled" in n for n in names) and names[-1] == "timm test_resnet, compiled"
    for r in rows:
        assert r["p50"] <= r["p90"] <= r["p99"] and r["rate"] > 0
    assert bench("bench_latency").percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    text = _read(tmp_path, "latency")
    assert "p99 ms" in text
    sweep = [line for line in text.splitlines() if line.startswith("| `tiny` |")]
    assert len(sweep) == 1 and sweep[0].rstrip(" |").endswith("| 0"), sweep  # no recompilation after warm-up


def test_train_step_quick(bench, tmp_path):
    assert bench("bench_train_step").main(_quick(tmp_path)) == 0
    text = _read(tmp_path, "train_step")
    assert "NCHW, float32" in text and "channels-last, float32" in text


@pytest.mark.slow
def test_train_step_quick_compiled(bench, tmp_path):
    try:
        assert bench("bench_train_step").main(_quick(tmp_path) + ["--compile"]) == 0
    finally:
        torch._dynamo.reset()
    text = _read(tmp_path, "train_step_compiled")
    assert "| channels-last, float32, compiled |" in text and "first step" in text


def test_allocator_quick(bench, tmp_path):
    assert bench("bench_allocator").main(_quick(tmp_path)) == 0
    text = _read(tmp_path, "allocator")
    assert "| glibc defaults |" in text and "| tune_allocator |" in text and "page faults per step" in text


@pytest.mark.slow
def test_quant_quick(bench, tmp_path):
    pytest.importorskip("torchao")
    try:
        assert bench("bench_quant").main(_quick(tmp_path)) == 0
    finally:
        torch._dynamo.reset()
    text = _read(tmp_path, "quant")
    assert "int8 compiled" in text and "float32 compiled" in text and "change, last loop" in text
    if importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None:
        assert "| int8 ONNX Runtime |" in text and "/ float32 ONNX Runtime" in text
    else:
        assert "ONNX Runtime rows are missing" in text


def test_freihand_models_lists_sources(bench, tmp_path):
    assert bench("freihand_models").main(["--threads", "1", "--results-dir", str(tmp_path)]) == 0
    text = _read(tmp_path, "freihand_models")
    assert "arXiv:2112.02753" in text and "DIR-Net `freihand`" in text and "not measured" in text


def test_throughput_quick(bench, tmp_path):
    try:
        rows = bench("bench_throughput").main(_quick(tmp_path))
    finally:
        torch._dynamo.reset()  # drop the compiled test models
    variants = {r["variant"] for r in rows}
    assert variants == {"eager, contiguous", "compiled, channels_last"}
    for r in rows:
        # achieved FLOP/s is 2 x MACs x images/s, from the same median time
        assert math.isclose(r["gflops"], 2 * r["gmacs"] * r["images_per_s"], rel_tol=1e-9)
        assert r["diff"] < 1e-3
    assert all((r["graphs"] is None) == r["variant"].startswith("eager") for r in rows)
    assert "achieved GFLOP/s" in _read(tmp_path, "throughput")


def test_export_quick(bench, tmp_path):
    rows = bench("bench_export").main(_quick(tmp_path))
    runtimes = [r["exporter"] for r in rows]
    assert runtimes[:2] == ["torch.export", "torch.export"]
    for r in rows:
        assert r["joints3d"] < 1e-2 and r["joints2d"] < 1e-2 and r["log_variance"] < 1e-4
    assert [r["exits"] for r in rows if r["model"].startswith("dynamic")] == ["yes"] * (len(rows) // 2)
    text = _read(tmp_path, "export")
    assert "VarianceThreshold(" in text and "exits in Python" in text


def test_memory_quick(bench, tmp_path):
    # One child process (training, the longer code path) keeps the test short; inference runs in-process below.
    memory = bench("bench_memory")
    rows = memory.main([*_quick(tmp_path), "--modes", "training"])
    assert [(r["mode"], r["batch"]) for r in rows] == [("training", 2)]
    assert rows[0]["peak"] >= rows[0]["before"] > 0 and rows[0]["saved"] > 0
    assert "peak resident (MiB)" in _read(tmp_path, "memory")


def test_memory_inference_step_in_process(bench):
    memory = bench("bench_memory")
    r = memory.measure_step("tiny", 1, "inference", 2, "cpu", 1)
    assert r["peak"] >= r["before"] > 0 and "saved" not in r
    with pytest.raises(ValueError, match="mode must be one of"):
        memory.measure_step("tiny", 1, "eval", 2, "cpu", 1)


def test_table3_quick(bench, tmp_path):
    table3 = bench("table3")
    rows = table3.main(_quick(tmp_path))
    assert [r.variant for r in rows] == list(table3.VARIANTS)
    by = {r.variant: r for r in rows}
    # Parameter counts do not depend on the input size: the paper's counts must hold at 64 px too.
    for r in rows:
        paper = table3.PAPER[r.preset][r.variant][0]
        assert abs(r.params - paper) / paper <= table3.PARAM_TOLERANCE
    assert by["no_iter"].params < by["features"].params < by["attention"].params < by["gate"].params
    # The gate row is the linear interpolation of the per-exit-step costs at the paper's mean loops (2.25).
    steps = by["gate"].per_step
    assert by["gate"].gmacs == pytest.approx(steps[2] + 0.25 * (steps[3] - steps[2]))
    assert by["attention"].gmacs == by["attention"].per_step[-1]
    # A gate decision (Linear(128, 64) + Linear(64, 2) = 8,320 MACs) follows every iteration a sample ran,
    # except the last one (L = 5), after which every sample stops anyway.
    assert by["gate"].cost.policy.macs == 128 * 64 + 64 * 2
    for e, (gated, plain) in enumerate(zip(steps, by["attention"].per_step)):
        assert gated - plain == pytest.approx(min(e + 1, 5) * 8320 / 1e9, abs=1e-12)
    assert re.search(r"\| FPHA \| Iter\. w/ AMG \+ gate \(at mean exit step 2\.25, interpolated\) \|",
                     _read(tmp_path, "table3"))


def test_table3_interpolation(bench):
    interpolate = bench("table3")._interpolate
    assert interpolate((1.0, 2.0, 4.0), 1.5) == 3.0
    assert interpolate((1.0, 2.0, 4.0), 2.0) == 4.0
    assert interpolate((1.0,), 0.0) == 1.0


@pytest.mark.slow
def test_experiments_synthetic_quick(bench, tmp_path):
    path = bench("experiments_synthetic").main(_quick(tmp_path))
    text = _read(tmp_path, "experiments_synthetic")
    assert path == tmp_path / "experiments_synthetic.md"
    for label in ("no iteration", "iterations without AMG", "with AMG + gate", "with AMG, end-to-end",
                  "loop point (1)", "loop point (4)", "timm resnet18"):
        assert label in text
    assert (tmp_path / "experiments_synthetic_loops.png").stat().st_size > 0


def test_experiments_synthetic_reuse_needs_a_runs_folder(bench, capsys):
    with pytest.raises(SystemExit):
        bench("experiments_synthetic").main(["--quick", "--reuse"])
    assert "--reuse needs --out" in capsys.readouterr().err


@pytest.mark.slow
def test_recipe_ablation_quick(bench, tmp_path, capsys, monkeypatch):
    script = bench("recipe_ablation")
    runs = ["--out", str(tmp_path / "runs"), "--only", "0", "6"]
    assert script.main(_quick(tmp_path) + runs) == 0
    text = capsys.readouterr().out
    assert "| old recipe |" in text and "| + heatmap weight 3 |" in text and "Mean-pose baseline" in text
    selected = _read(tmp_path, "recipe_ablation_selected")  # a subset never overwrites the full table
    assert "| old recipe |" in selected and not (tmp_path / "recipe_ablation.md").exists()

    def retrain(*args, **kwargs):
        raise AssertionError("--reuse must read the finished runs back")

    monkeypatch.setattr(script, "train", retrain)
    assert script.main(_quick(tmp_path) + runs + ["--reuse"]) == 0
    assert capsys.readouterr().out.count("| old recipe |") == 1
    # Rows 0 and 6 pin float32 already, so --float32 leaves their runs as they are.
    assert script.main(_quick(tmp_path) + runs + ["--reuse", "--float32", "--name", "rows_float32"]) == 0
    named = _read(tmp_path, "rows_float32")
    assert "| old recipe |" in named and "every row trained in float32 (`--float32`)" in named
    with pytest.raises(SystemExit):
        script.main(_quick(tmp_path) + ["--name", "rows_float32"])


@pytest.mark.slow
def test_default_run_quick(bench, tmp_path, capsys, monkeypatch):
    script = bench("default_run")
    out = ["--out", str(tmp_path / "run")]
    assert script.main(_quick(tmp_path) + out) == 0
    text = capsys.readouterr().out
    assert "## Per loop" in text and "rank corr" in text and "Exit policies against every loop" in text
    assert "images a second over its epochs" in text  # the machine's training rate, from metrics.csv

    def retrain(*args, **kwargs):
        raise AssertionError("--reuse must report the finished run without training")

    monkeypatch.setattr(script, "train", retrain)
    assert script.main(_quick(tmp_path) + out + ["--reuse"]) == 0
    assert capsys.readouterr().out == text  # the same report
    (tmp_path / "run" / "minutes.json").unlink()
    with pytest.raises(SystemExit, match="minutes.json"):
        script.main(_quick(tmp_path) + out + ["--reuse"])
    (tmp_path / "run" / "minutes.json").write_text('{"minutes": 1.0}')
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1\n", "epochs: 3\n", 1))
    with pytest.raises(SystemExit, match="not the default configuration"):
        script.main(_quick(tmp_path) + out + ["--reuse"])


def test_error_analysis_splits_orientation_from_articulation(bench, tmp_path, capsys):
    module = bench("error_analysis")
    from recurnet_hand.data.synthetic import SyntheticHands
    from recurnet_hand.losses import add_hand_targets

    data = SyntheticHands(6, 64, seed=3, viewpoint="stb")
    batch = torch.utils.data.default_collate([data[i] for i in range(6)])
    t = add_hand_targets(batch)
    exact = module.decompose({"joints3d": t["joints3d_rel"], "rotation": t["rotation"],
                              "articulation": t["articulation_target"]}, batch)
    assert all(v < 1e-3 for k, v in exact["rows"].items() if "mean articulation" not in k)
    assert exact["articulation"] < 1e-3 and exact["mean_articulation"] > 1.0
    assert exact["rotation_deg"].max() < 0.1 and all(b[3] == 1.0 for b in exact["tilt_bins"])
    # A prediction turned about the optical axis errs in plane only.
    turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rot = turn @ t["rotation"]
    spun = module.decompose({"joints3d": t["articulation_target"] @ rot.transpose(1, 2), "rotation": rot,
                             "articulation": t["articulation_target"]}, batch)
    assert abs(spun["in_plane_deg"] - 90).max() < 1e-3 and spun["out_of_plane_deg"].max() < 1e-3
    rows = spun["rows"]
    assert rows["true rotation, predicted articulation"] < 1e-3 < rows["predicted (rotation and articulation)"]
    # The script end to end, on the shipped model.
    assert module.main(_quick(tmp_path)) == 0
    text = _read(tmp_path, "error_analysis")
    assert "| true rotation, predicted articulation |" in text and "out of plane (tilt)" in text


def test_error_analysis_refuses_bad_arguments(bench, tmp_path, capsys):
    module = bench("error_analysis")
    with pytest.raises(SystemExit):
        module.main(["--samples", "0", "--results-dir", str(tmp_path)])
    assert "--samples must be >= 1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="none.pt"):
        module.main(["--model", str(tmp_path / "none.pt"), "--results-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing written


def test_loop_analysis_interventions_and_a_retrained_loop_phase(bench, tmp_path):
    module = bench("loop_analysis")
    from recurnet_hand.model import build_dirnet, preset

    net = build_dirnet(preset("tiny", max_loops=1, crop_size=64)).eval()
    x = torch.rand(2, 3, 64, 64)
    checks = {"constant": lambda m: m.std() < 1e-6, "mean": lambda m: m.flatten(2).std(dim=2).max() < 1e-6}
    for mode, check in checks.items():
        wrapped = module.Intervention(net.feedback, mode)
        inner, net.feedback = net.feedback, wrapped
        with torch.no_grad():
            out = net(x, exit="all", return_feedback=True)
        net.feedback = inner
        assert check(out.feedback[1]), mode
    with pytest.raises(ValueError, match="'mean' or 'constant'"):
        module.Intervention(net.feedback, "zeros")
    hand = next(i for i, (label, _) in enumerate(module.VARIANTS, 1) if "channel mean shows the hand" in label)
    assert module.main(_quick(tmp_path) + ["--retrain", "--only", "1", "4", str(hand)]) == 0
    text = _read(tmp_path, "loop_analysis")
    assert "| 1 |" in text and "maps flattened" in text and "feature feedback instead of attention" in text
    assert "| the default (every part at the base rate, 1 epoch) |" in text
    assert "| attention supervised: the channel mean shows the hand |" in text


def test_loop_analysis_refuses_bad_arguments(bench, tmp_path, capsys):
    module = bench("loop_analysis")
    past_last = str(len(module.VARIANTS) + 1)
    for argv, message in ((["--epochs", "0"], "--epochs must be >= 1"), (["--only", past_last], "--only takes rows")):
        with pytest.raises(SystemExit):
            module.main(argv + ["--results-dir", str(tmp_path)])
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_recipe_ablation_reuse_needs_a_runs_folder(bench, capsys):
    with pytest.raises(SystemExit):
        bench("recipe_ablation").main(["--quick", "--reuse"])
    assert "--reuse needs --out" in capsys.readouterr().err


def test_default_run_rewrites_only_the_readme_block(bench, tmp_path):
    module = bench("default_run")
    assert module.BEGIN in module.README.read_text()  # the repository's README carries the markers
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{module.BEGIN}\nold numbers\n{module.END}\nrest\n")
    module.update_readme("On 2 CPU cores the default run took 9 minutes.", readme)
    assert readme.read_text() == (f"intro\n{module.BEGIN}\nOn 2 CPU cores the default run took 9 minutes.\n"
                                  f"{module.END}\nrest\n")
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no default-run markers"):
        module.update_readme("x", readme)


def test_coverage_quick(bench, tmp_path):
    rows = bench("coverage").main(_quick(tmp_path))
    assert rows and all(r["verdict"].startswith("works") for r in rows)  # resnet and efficientnet loop everywhere
    assert "families" in _read(tmp_path, "coverage")


@pytest.mark.slow
def test_full_ablation_quick_reads_finished_runs_back(bench, tmp_path, capsys, monkeypatch):
    script = bench("full_ablation")
    runs = ["--out", str(tmp_path / "runs")]
    assert script.main(_quick(tmp_path) + runs) == 0
    text = _read(tmp_path, "full_ablation")
    assert "| 64 images |" in text and "| 128 images |" in text and "mean pose 3D EPE" in text
    assert all((tmp_path / "runs" / f"images{n}" / "minutes.json").is_file() for n in (64, 128))

    def retrain(*args, **kwargs):
        raise AssertionError("--reuse must read the finished runs back")

    monkeypatch.setattr(script, "train", retrain)
    assert script.main(_quick(tmp_path) + runs + ["--reuse"]) == 0
    before = _read(tmp_path, "full_ablation")
    assert script.main(_quick(tmp_path) + runs + ["--reuse", "--only", "1"]) == 0
    selected = _read(tmp_path, "full_ablation_selected")
    assert "| 128 images |" in selected and "| 64 images |" not in selected
    assert _read(tmp_path, "full_ablation") == before  # the full table is left alone
    assert script.main(_quick(tmp_path) + runs + ["--reuse", "--only", "0", "--result", "picked"]) == 0
    picked = _read(tmp_path, "picked")
    assert "| 64 images |" in picked and "| 128 images |" not in picked
    assert _read(tmp_path, "full_ablation_selected") == selected
    capsys.readouterr()
    with pytest.raises(SystemExit):
        script.main(["--quick", "--reuse"])
    assert "--reuse needs --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(_quick(tmp_path) + ["--result", "../elsewhere"])
    assert "without folders" in capsys.readouterr().err


def test_run_files_are_written_whole_and_damaged_ones_are_named(bench, tmp_path):
    common = bench("_common")
    path = common.write_minutes(tmp_path, 12.5)
    assert common.read_run_json(path) == {"minutes": 12.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minutes.json"]  # no temporary file left
    path.write_text('{"minutes": 1')  # cut short
    with pytest.raises(ValueError, match="minutes.json: unreadable run file"):
        common.read_run_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object, found list"):
        common.read_run_json(path)

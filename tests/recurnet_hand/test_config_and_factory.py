"""Run configuration files and the dataset factory's mirroring."""

import pytest
import torch

from recurnet_hand.config import ConfigError, RunConfig, config_from_dict, load_config, save_config, with_overrides
from recurnet_hand.data.factory import MirrorToSide, mirror_sample


def test_yaml_round_trip_and_overrides(tmp_path):
    run = with_overrides(RunConfig(), {"model.preset": "fpha", "model.max_loops": 2, "train.epochs": 3,
                                       "train.loop_epochs": 2,
                                       "gate.temperatures": [0.5, 2]})
    assert run.model.width == 16 and run.model.max_loops == 2 and run.gate.temperatures == (0.5, 2.0)
    path = save_config(run, tmp_path / "run.yaml")
    assert load_config(path) == run
    assert run.train.build(run.model.max_loops).epochs == (3, 2, 2)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"trian": {}}, "unknown key(s) ['trian']"),
        ({"train": {"epochz": 1}}, "train: unknown key(s) ['epochz']"),
        ({"train": {"epochs": "x"}}, "train.epochs: expected an integer"),
        ({"model": {"preset": "nope"}}, "unknown preset 'nope'"),
        ({"train": {"protocol": "sideways"}}, "train.protocol must be one of"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a finite number"),
        ({"train": {"lr": float("nan")}}, "train.lr: expected a finite number"),
        ({"train": {"precision": "int4"}}, "train.precision must be one of"),
        ({"train": {"ema": 1.0}}, "train.ema must be a decay in (0, 1)"),
        ({"data": {"loader_workers": -1}}, "data.loader_workers must be an integer >= 0"),
        ({"loss": {"kind_3d": "huber"}}, "loss.kind_3d must be one of"),
        ({"loss": {"attention_target": "palm"}}, "loss.attention_target must be one of"),
        ({"loss": {"weight_attention": 1.0}, "model": {"feedback": "none"}},
         "loss.weight_attention supervises attention maps"),
        ({"loss": {"weight_attention": 1.0}, "model": {"max_loops": 0}}, "max_loops 0"),
    ],
)
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source="run.yaml")
    assert message in str(err.value) and "run.yaml" in str(err.value)


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 3e-3}\n")  # YAML 1.1 reads this as the string '3e-3'
    assert load_config(path).train.lr == 0.003


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def _sample(size=10):
    K = torch.tensor([[50.0, 0.0, 4.5], [0.0, 50.0, 4.5], [0.0, 0.0, 1.0]])
    j3d = torch.tensor([[10.0, -5.0, 200.0], [-20.0, 15.0, 250.0]]).repeat(11, 1)[:21]
    p = j3d @ K.T
    return {"image": torch.arange(3 * size * size, dtype=torch.float32).view(3, size, size),
            "joints2d": p[:, :2] / p[:, 2:], "joints3d": j3d, "K": K, "is_right": torch.tensor(False),
            "has_2d": torch.tensor(True), "has_3d": torch.tensor(True), "index": torch.tensor(0)}


def test_mirror_keeps_projection_consistent_and_is_an_involution():
    s = _sample()
    m = mirror_sample(s)
    p = m["joints3d"] @ m["K"].T
    torch.testing.assert_close(p[:, :2] / p[:, 2:], m["joints2d"])
    assert bool(m["is_right"]) and torch.equal(m["image"][..., 0], s["image"][..., -1])
    back = mirror_sample(m)
    for key in ("image", "joints2d", "joints3d", "K"):
        torch.testing.assert_close(back[key], s[key])


def test_mirror_to_side_only_flips_the_other_hand():
    left, right = _sample(), dict(_sample(), is_right=torch.tensor(True))
    data = MirrorToSide([left, right], "right")
    assert all(bool(data[i]["is_right"]) for i in range(2))
    torch.testing.assert_close(data[1]["joints2d"], right["joints2d"])
    with pytest.raises(ValueError, match="side"):
        MirrorToSide([left], "middle")


def test_auto_precision_resolves_per_device_and_explicit_values_stay():
    from recurnet.training.config import native_bfloat16
    from recurnet_hand.train import training_precision

    auto = with_overrides(RunConfig(), {"device": "cpu", "train.precision": "auto"})
    assert training_precision(auto) == ("bfloat16" if native_bfloat16("cpu") else "float32")
    for value in ("float32", "bfloat16"):
        assert training_precision(with_overrides(RunConfig(), {"train.precision": value})) == value

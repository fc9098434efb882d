"""Config: defaults round-trip, overrides, and one-line errors naming the field."""

import pytest

from fedlora.config import RunConfig, apply_overrides, dump_config, load_config, parse_override, validate
from fedlora.errors import ConfigError


def test_dump_and_load_round_trip(tmp_path):
    config = RunConfig(method="fedit", rounds=3)
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_overrides_parse_toml_values():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("method=fedit") == (["method"], "fedit")
    assert parse_override("budgets.per_client=[1,2]") == (["budgets", "per_client"], [1, 2])
    data = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=0.5", "rounds=2"])
    assert data == {"train": {"lr": 0.5}, "rounds": 2}


@pytest.mark.parametrize(
    "data, field",
    [
        ({"train": {"lr": -1}}, "train.lr"),
        ({"trian": {}}, "trian"),
        ({"train": {"bogus": 1}}, "train.bogus"),
        ({"method": "fedavg"}, "method"),
        ({"rounds": "ten"}, "rounds"),
        ({"sampling": {"clients_per_round": 50}}, "sampling.clients_per_round"),
        ({"budgets": {"per_client": [1, 2]}}, "budgets.per_client"),
        ({"lora": {"rank": 4}, "budgets": {"per_client": [8] * 10}}, "budgets.per_client"),
        ({"data": {"eval_size": 1.5}}, "eval_size"),
        ({"fleet": {"uplink_mbps": [1.0, 2.0]}}, "fleet.uplink_mbps"),
    ],
)
def test_bad_values_name_the_field_on_one_line(data, field):
    with pytest.raises(ConfigError) as info:
        validate(data)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    other = tmp_path / "c.ini"
    other.write_text("x")
    with pytest.raises(ConfigError, match="c.ini"):
        load_config(other)
    with pytest.raises(ConfigError, match="override"):
        load_config(bad.with_name("ok.toml") if False else _ok(tmp_path), ["noequals"])


def _ok(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("rounds = 2\n")
    return path


def test_yaml_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: fedit\nrounds: 4\ntrain:\n  lr: 0.01\n")
    config = load_config(path)
    assert config.method == "fedit" and config.rounds == 4 and config.train.lr == 0.01

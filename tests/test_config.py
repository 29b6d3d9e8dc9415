"""Typed configuration: every error names the file, the dotted field and the expected type; --set overrides."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from recsys.cli import app
from recsys.config import CONFIG_DIR, ConfigError, dump_config, load_config, parse_override
from recsys.data.simulator import SimulatorConfig


def _yaml(tmp_path, data: dict, name: str = "sim.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_yaml_equals_the_model_defaults():
    assert load_config(SimulatorConfig, CONFIG_DIR / "simulator.yaml") == load_config(SimulatorConfig)


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(SimulatorConfig, None, ["users=17", "action_probs.like=0.5", "popularity=lognormal"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(SimulatorConfig, tmp_path / "c.yaml") == cfg


def test_unknown_key_names_file_and_field(tmp_path):
    p = _yaml(tmp_path, {"users": 10, "userz": 3})
    with pytest.raises(ConfigError) as e:
        load_config(SimulatorConfig, p)
    assert str(p) in str(e.value) and "userz: unknown field" in str(e.value)
    p2 = _yaml(tmp_path, {"action_probs": {"lke": 0.1}}, "nested.yaml")
    with pytest.raises(ConfigError, match=r"action_probs\.lke: unknown field"):
        load_config(SimulatorConfig, p2)


def test_wrong_type_names_dotted_field_and_expected_type(tmp_path):
    p = _yaml(tmp_path, {"users": "abc"})
    with pytest.raises(ConfigError) as e:
        load_config(SimulatorConfig, p)
    msg = str(e.value)
    assert str(p) in msg and "users:" in msg and "(expected int)" in msg and "'abc'" in msg
    with pytest.raises(ConfigError, match=r"action_probs\.like: .*\(expected float\)"):
        load_config(SimulatorConfig, _yaml(tmp_path, {"action_probs": {"like": "often"}}, "n.yaml"))
    with pytest.raises(ConfigError, match=r"popularity: .*expected 'zipf' \| 'lognormal'"):
        load_config(SimulatorConfig, _yaml(tmp_path, {"popularity": "pareto"}, "l.yaml"))
    with pytest.raises(ConfigError, match=r"users: Input should be greater than or equal to 1"):
        load_config(SimulatorConfig, None, ["users=0"])


def test_set_overrides_apply_and_are_typed(tmp_path):
    p = _yaml(tmp_path, {"users": 10, "action_probs": {"like": 0.2}})
    cfg = load_config(SimulatorConfig, p, ["users=11", "action_probs.share=0.5", "seed=3"])
    assert (cfg.users, cfg.action_probs.like, cfg.action_probs.share, cfg.seed) == (11, 0.2, 0.5, 3)
    with pytest.raises(ConfigError, match=r"users: .*\(expected int\), got 'many'"):
        load_config(SimulatorConfig, p, ["users=many"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        parse_override("users")
    with pytest.raises(ConfigError, match="is not a mapping"):
        load_config(SimulatorConfig, None, ["users=5", "users.x=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SimulatorConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("users: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SimulatorConfig, bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(SimulatorConfig, bad)



def test_cli_set_with_wrong_type_exits_2_naming_the_field(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["data", "simulate", "--out", str(tmp_path / "o"), "--set", "users=abc"])
    assert res.exit_code == 2
    assert "users" in res.output and "expected int" in res.output
    res = runner.invoke(app, ["data", "simulate", "--out", str(tmp_path / "o"), "--set", "nosuch=1"])
    assert res.exit_code == 2 and "nosuch: unknown field" in res.output
    res = runner.invoke(app, ["data", "simulate", "--out", str(tmp_path / "o"), "--users", "abc"])
    assert res.exit_code == 2 and "--users" in res.output
    p = _yaml(tmp_path, {"domains": "three"})
    res = runner.invoke(app, ["data", "simulate", "--out", str(tmp_path / "o"), "--config", str(p)])
    assert res.exit_code == 2 and str(p) in res.output.replace("\n", "") and "domains" in res.output
    assert not (tmp_path / "o").exists(), "nothing is written when the config is invalid"


def test_cli_config_file_values_are_not_overridden_by_option_defaults(tmp_path):
    p = _yaml(tmp_path, {"users": 30, "items": 200, "days": 1, "domains": 2, "candidates": 10, "slots_per_day": 4})
    res = CliRunner().invoke(app, ["data", "simulate", "--out", str(tmp_path / "o"), "--config", str(p), "--seed", "5"])
    assert res.exit_code == 0, res.output
    meta = yaml.safe_load((tmp_path / "o" / "meta.json").read_text())
    assert (meta["config"]["users"], meta["config"]["items"], meta["config"]["seed"]) == (30, 200, 5)

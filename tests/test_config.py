import json

import pytest

from toolexpander.config import Config, ConfigError, dump_config, load_config, parse_overrides


def test_defaults_are_valid_and_match_the_design():
    cfg = Config()
    assert cfg.rollout.n >= 10
    assert (cfg.learner.eps_low, cfg.learner.eps_high) == (0.2, 0.28)
    assert cfg.sampler.demo_schedule == [1, 2, 3]
    assert cfg.reward.exemplar_bonus == 0.01


@pytest.mark.parametrize("name", ["smoke.yaml", "local-smollm2.yaml", "gpu-qwen2.5-1.5b.yaml"])
def test_shipped_configs_load(repo, name):
    cfg = load_config(repo / "configs" / name)
    assert cfg.train.steps >= 1


def test_overrides_are_typed_and_dotted(repo):
    pairs = parse_overrides(["--learner.lr", "1e-6", "--train.steps=7", "--sampler.demo_schedule", "[2, 4]"])
    cfg = load_config(repo / "configs" / "smoke.yaml", pairs)
    assert cfg.learner.lr == 1e-6 and cfg.train.steps == 7 and cfg.sampler.demo_schedule == [2, 4]


def test_unknown_key_is_named(repo):
    with pytest.raises(ConfigError, match=r"learner\.lrr: unknown key"):
        load_config(repo / "configs" / "smoke.yaml", {"learner.lrr": 1})


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  n: ten\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: rollout\.n: .*integer.*'ten'"):
        load_config(path)


def test_out_of_range_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout\.n"):
        load_config(None, {"rollout.n": 1})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="reward.weights"):
        load_config(None, {"reward.weights": {"speed": 1.0}})


def test_resolved_dump_round_trips(tmp_path):
    cfg = load_config(None, {"train.steps": 5, "rollout.max_tokens": 32})
    dump_config(cfg, tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["train"]["steps"] == 5 and data["rollout"]["max_tokens"] == 32
    assert load_config(tmp_path / "config.json") == cfg

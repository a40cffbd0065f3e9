import json
import warnings

import pytest

from toolexpander.config import (Config, ConfigError, auto_dtype, cpu_has_bf16, dump_config, load_config,
                                 parse_overrides)
from toolexpander.types import REWARD_DIMS


def test_defaults_are_valid_and_match_the_design():
    cfg = Config()
    assert cfg.rollout.n >= 10
    assert (cfg.learner.eps_low, cfg.learner.eps_high) == (0.2, 0.28)
    assert cfg.sampler.demo_schedule == [1, 2, 3]
    assert cfg.reward.exemplar_bonus == 0.01


@pytest.mark.parametrize("name", ["smoke.yaml", "local-smollm2.yaml", "learn-smollm2.yaml", "gpu-qwen2.5-1.5b.yaml"])
def test_shipped_configs_load(repo, name):
    cfg = load_config(repo / "configs" / name)
    assert cfg.train.steps >= 1
    assert cfg.model.dtype in ("float32", "bfloat16")          # auto is resolved where the config loads


ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\nbugs\t\t: sysret_ss_attrs\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: sysret_ss_attrs avx512_bf16\n"
SAPPHIRE = "flags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n"


def test_auto_dtype_is_bf16_only_where_it_runs_natively(tmp_path):
    assert cpu_has_bf16(ZEN4) and cpu_has_bf16(SAPPHIRE)
    assert not cpu_has_bf16(ZEN3)                              # a flag on the bugs line does not count
    for text, want in ((ZEN4, "bfloat16"), (ZEN3, "float32")):
        (tmp_path / "cpuinfo").write_text(text)
        assert auto_dtype(False, tmp_path / "cpuinfo") == want
        assert auto_dtype(True, tmp_path / "cpuinfo") == "bfloat16"   # GPUs
    assert auto_dtype(False, tmp_path / "missing") == "float32"     # no /proc/cpuinfo (not Linux)
    gpu = load_config(None, {"model.dtype": "auto", "rollout.gpus_per_worker": 1})
    assert gpu.model.dtype == "bfloat16"
    assert load_config(None, {"model.dtype": "auto"}).model.dtype == auto_dtype(False)
    assert load_config(None, {"model.dtype": "float32", "learner.gpus_per_rank": 1}).model.dtype == "float32"


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
    assert load_config(None, {"train.max_staleness": 8}).train.max_staleness == 8
    with pytest.raises(ConfigError, match=r"train\.max_staleness: .*less than or equal to 8"):
        load_config(None, {"train.max_staleness": 9})


def test_block_size_is_a_multiple_of_16_and_32_on_cpu():
    from toolexpander.actors.rollout import engine_args

    with pytest.raises(ConfigError, match=r"rollout\.block_size: .*multiple of 16 .*got 40"):
        load_config(None, {"rollout.block_size": 40})
    default = load_config(None).rollout
    assert default.block_size is None
    assert engine_args(default, on_gpu=False) == {"block_size": 32}   # vLLM's CPU default is 128
    assert engine_args(default, on_gpu=True) == {}                     # vLLM's own default
    sixteen = load_config(None, {"rollout.block_size": 48}).rollout
    assert engine_args(sixteen, on_gpu=True) == {"block_size": 48}
    with pytest.raises(ValueError, match=r"rollout\.block_size: a CPU engine needs a multiple of 32, got 48"):
        engine_args(sixteen, on_gpu=False)


def test_resolved_dump_round_trips(tmp_path):
    cfg = load_config(None, {"train.steps": 5, "rollout.max_tokens": 32})
    dump_config(cfg, tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["train"]["steps"] == 5 and data["rollout"]["max_tokens"] == 32
    assert load_config(tmp_path / "config.json") == cfg


def test_sampler_alpha_is_one_weight_per_reward_dimension():
    default = Config().sampler.alpha
    assert default == {d: 1.0 / len(REWARD_DIMS) for d in REWARD_DIMS}   # = the former alpha 1 over mean std
    cfg = load_config(None, parse_overrides(["--sampler.alpha", "{correct: 2.0, tool_name: 0.5}"]))
    assert cfg.sampler.alpha == {"correct": 2.0, "tool_name": 0.5}
    with pytest.raises(ConfigError, match=r"sampler\.alpha: .*unknown reward dimension.*'speed'"):
        load_config(None, {"sampler.alpha": {"speed": 1.0, "correct": 1.0}})
    with pytest.raises(ConfigError, match=r"sampler\.alpha: .*>= 0.*'format'"):
        load_config(None, {"sampler.alpha": {"format": -0.1}})


def test_default_signal_tol_excludes_groups_that_differ_only_in_the_exemplar_bonus():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = Config()
        off = load_config(None, parse_overrides(["--reward.exemplar_bonus", "0"]))   # the ablation switch
    bonus_only_std = cfg.reward.exemplar_bonus * cfg.reward.weights["exemplar"] / 2   # half the group has it
    assert cfg.sampler.signal_tol > bonus_only_std == 0.005
    assert off.reward.exemplar_bonus == 0.0
    with pytest.warns(UserWarning, match=r"sampler\.signal_tol=0\.01 .*reward\.exemplar_bonus=0\.05"):
        load_config(None, {"reward.exemplar_bonus": 0.05})
    with pytest.raises(ConfigError, match=r"reward\.exemplar_bonus"):
        load_config(None, {"reward.exemplar_bonus": -0.01})


def test_ablation_switches_default_on_and_override():
    s = Config().sampler
    assert (s.hard_rounds, s.priority, s.curriculum) == (True, "reward_stats", True)
    args = ["--sampler.hard_rounds", "false", "--sampler.priority", "uniform", "--sampler.curriculum", "false"]
    s = load_config(None, parse_overrides(args)).sampler
    assert (s.hard_rounds, s.priority, s.curriculum) == (False, "uniform", False)
    with pytest.raises(ConfigError, match=r"sampler\.priority"):
        load_config(None, {"sampler.priority": "random"})


def test_relative_paths_are_made_absolute_at_the_driver(tmp_path, monkeypatch):
    from toolexpander.config import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(load_config(None, {"model.path": "models/tiny", "data.train_path": "d/train.jsonl",
                                            "logging.output_dir": "runs/x", "learner.lr": 1e-5}))
    assert (cfg.model.path, cfg.data.train_path, cfg.logging.output_dir) == (
        str(tmp_path / "models/tiny"), str(tmp_path / "d/train.jsonl"), str(tmp_path / "runs/x"))
    assert cfg.learner.lr == 1e-5
    assert absolute_paths(cfg) == cfg

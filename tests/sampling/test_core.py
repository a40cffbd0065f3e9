"""SamplerCore end to end on hand-made histories: rounds, parking, curriculum, seeds, checkpoints."""

import io

import numpy as np
import pytest

from toolexpander.config import Config, SamplerConfig
from toolexpander.rewards import score
from toolexpander.sampling.core import SamplerCore
from toolexpander.types import REWARD_DIMS, SUBTASKS, Task

D = len(REWARD_DIMS)
EXEMPLAR = REWARD_DIMS.index("exemplar")


def make_core(P=8, codes=None, **cfg):
    """P prompts; by default 0..4 are `single` (so prompt 0 has 4 possible demos), the rest spread."""
    codes = np.array(codes if codes is not None else [1] * 5 + [0, 2, 3][: P - 5] + [1] * max(0, P - 8))
    tools = [[p % 3, 10 + p % 2] for p in range(P)]
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in tools])])
    return SamplerCore(SamplerConfig(**cfg), codes, indptr, np.concatenate(tools), np.arange(P) + 100)


def rewards(n_correct_G, n=10):
    """(G, n, D): every dim at its maximum (exemplar 0.01) for the first n_correct completions, 0 after."""
    r = np.zeros((len(n_correct_G), n, D))
    for g, k in enumerate(n_correct_G):
        r[g, :k] = 1.0
    r[:, :, EXEMPLAR] *= 0.01
    return r


def step(core, B, fails=(), n=10):
    """Draw B, record (prompts in `fails` get 0/n correct, others 5/n), end the step; return the draws."""
    draws = core.next_batch(B)
    prompts = np.array([d.prompt for d in draws])
    core.record(prompts, np.array([d.demo_round for d in draws]),
                rewards([0 if p in fails else n // 2 for p in prompts], n))
    core.end_step()
    return {d.prompt: d for d in draws}


def test_failing_prompt_climbs_rounds_then_parks_for_exactly_cooldown_steps():
    core = make_core(cooldown=3)
    seen = []
    for _ in range(4):                                         # rounds 0, 1, 2, 3 (1, 2, 3 demos)
        d = step(core, 8, fails={0})[0]
        assert len(d.demo_prompts) == (0, 1, 2, 3)[d.demo_round]
        assert 0 not in d.demo_prompts and all(q in range(1, 5) for q in d.demo_prompts)  # same sub-task
        seen.append(d.demo_round)
    assert seen == [0, 1, 2, 3]
    assert core.metrics()["sampler/parked"] == 1.0
    for _ in range(3):                                         # parked: never drawn, others still are
        assert sorted(step(core, 8, fails={0})) == list(range(1, 8))
    back = step(core, 8, fails=set())
    assert back[0].demo_round == 0 and back[0].demo_prompts == ()
    assert core.metrics()["sampler/parked"] == 0.0


def test_parked_prompt_is_not_redrawn_in_the_same_step():
    core = make_core(demo_schedule=[1], cooldown=0)
    step(core, 8, fails={0})
    draws = core.next_batch(8)
    core.record(np.array([d.prompt for d in draws]), np.array([d.demo_round for d in draws]),
                rewards([0 if d.prompt == 0 else 5 for d in draws]))
    assert 0 not in {d.prompt for d in core.next_batch(8)}     # refill in the same step
    core.end_step()
    assert 0 in {d.prompt for d in core.next_batch(8)}         # cooldown 0: back the next step


def test_solved_demo_prompt_steps_back_toward_bare():
    core = make_core()
    step(core, 8, fails={0})
    step(core, 8, fails={0})
    assert step(core, 8)[0].demo_round == 2                    # solved at round 2 -> 1
    d = step(core, 8)[0]                                       # solved at round 1 -> 0
    assert d.demo_round == 1 and len(d.demo_prompts) == 1
    assert step(core, 8)[0].demo_round == 0


def test_small_groups_never_change_rounds():
    core = make_core()
    step(core, 8, fails={0}, n=5)
    assert core.state_dict()["demo_round"][0] == 0
    step(core, 8, fails={0})
    step(core, 8, fails={0})                                   # now at round 2
    step(core, 8, fails={0}, n=5)
    step(core, 8, fails=set(), n=5)
    assert core.state_dict()["demo_round"][0] == 2


def test_transition_uses_the_round_the_group_was_generated_with():
    core = make_core()
    core.record(np.array([0]), np.array([2]), rewards([0]))    # generated at round 2, state was 0
    assert core.state_dict()["demo_round"][0] == 3
    core.record(np.array([0]), np.array([1]), rewards([3]))
    assert core.state_dict()["demo_round"][0] == 0


def test_record_result_and_metrics():
    core = make_core()
    assert core.metrics()["sampler/priority_entropy"] == pytest.approx(1.0)   # all unseen: uniform
    r = rewards([0, 10, 4])
    res = core.record(np.array([0, 1, 2]), np.array([0, 1, 0]), r)
    assert res.all_fail.tolist() == [True, False, False]
    assert res.informative.tolist() == [False, False, True]
    assert res.metrics == pytest.approx({"sampler/all_fail_share": 1 / 3, "sampler/zero_signal_share": 2 / 3,
                                         "sampler/demo_rate": 1 / 3})
    core.end_step()
    m = core.metrics()
    assert m["sampler/seen_prompts"] == 3.0
    assert m["sampler/unsolved_share"] == pytest.approx(1 / 3)        # prompt 0 of the 3 seen
    assert [m[f"sampler/demo_round/{k}"] for k in range(4)] == [7.0, 1.0, 0.0, 0.0]
    # prompt 0 solved with its demo, prompt 2 failing now: still 1 of 3; a small group (5 completions,
    # none correct) is no evidence, so prompt 1 keeps its last verdict (solved)
    core.record(np.array([0, 2]), np.array([1, 0]), rewards([3, 0]))
    core.record(np.array([1]), np.array([0]), rewards([0], n=5))
    assert core.metrics()["sampler/unsolved_share"] == pytest.approx(1 / 3)
    core.record(np.array([2, 3]), np.array([1, 0]), rewards([0, 0]))
    assert core.metrics()["sampler/unsolved_share"] == pytest.approx(2 / 4)
    assert make_core().metrics()["sampler/unsolved_share"] == 0.0                  # nothing seen
    # `single` groups had mean correct 0, 1 and 0.4: the sub-task's first evidence sets M to their mean
    assert m["sampler/mastery/single"] == pytest.approx(1.4 / 3, abs=1e-15)
    assert sum(m[f"sampler/share/{s}"] for s in SUBTASKS) == pytest.approx(1.0)
    assert 0.0 < m["sampler/priority_entropy"] < 1.0


def _default_core(**cfg) -> SamplerCore:
    """A core wired exactly as the Sampler actor wires it from Config() (reward weights and bonus)."""
    c = Config(sampler=cfg)
    P = 8
    weights = np.array([c.reward.weights.get(d, 0.0) for d in REWARD_DIMS])
    return SamplerCore(c.sampler, np.ones(P, np.int8), np.arange(P + 1), np.arange(P), np.arange(P),
                       exemplar_bonus=c.reward.exemplar_bonus, reward_weights=weights)


def _scored(texts) -> np.ndarray:
    """(1, n, D) raw reward vectors of real completions of one task, scored with Config() defaults."""
    c = Config().reward
    t = Task.model_validate({"id": "t", "tools": [{"name": "get_time"}, {"name": "search"}],
                             "messages": [{"role": "user", "content": "time in Paris?"}],
                             "answer": {"tool_calls": [{"name": "get_time", "arguments": {"tz": "CET"}}]}})
    vectors = [score(x, t, c.weights, c.exemplar_bonus) for x in texts]
    return np.array([[[v.as_dict()[d] for d in REWARD_DIMS] for v in vectors]])


WRONG_CALL = '<tool_call>\n{"name": "search", "arguments": {"q": "time"}}\n</tool_call>'   # tool_name 0
EXAMPLE = '<example>{"name": "search", "arguments": {"q": "x"}}</example> search is the wrong tool here'


def test_exemplar_bonus_alone_is_not_signal_by_default():
    bare, with_example = f"<think>ok</think>{WRONG_CALL}", f"<think>{EXAMPLE}</think>{WRONG_CALL}"
    r = _scored([bare] * 5 + [with_example] * 5)       # the largest std the bonus alone makes: 0.005
    assert np.flatnonzero(np.ptp(r[0], axis=0)).tolist() == [EXEMPLAR]        # differs only there
    assert sorted(set(r[0, :, EXEMPLAR])) == [0.0, 0.01]
    assert _default_core().record(np.array([1]), np.array([0]), r).informative.tolist() == [False]
    hit = _scored([bare] * 9 + ['<think>ok</think><tool_call>\n{"name": "get_time"}\n</tool_call>'])
    assert np.flatnonzero(np.ptp(hit[0], axis=0)).tolist() == [REWARD_DIMS.index("tool_name")]  # std 0.3
    assert _default_core().record(np.array([1]), np.array([0]), hit).informative.tolist() == [True]
    # Opting in (signal_tol 0, warned) makes the bonus a signal, unless reward.weights drops the exemplar.
    with pytest.warns(UserWarning, match="sampler.signal_tol"):
        opted_in = _default_core(signal_tol=0.0)
    assert opted_in.record(np.array([1]), np.array([0]), r).informative.tolist() == [True]
    w = np.ones(D)
    w[EXEMPLAR] = 0.0
    core = SamplerCore(SamplerConfig(signal_tol=0.0), np.ones(8, np.int8), np.arange(9), np.arange(8),
                       np.arange(8), reward_weights=w)
    assert core.record(np.array([1]), np.array([0]), r).informative.tolist() == [False]


def test_hard_rounds_off_keeps_every_prompt_bare_and_unparked():
    core = make_core(hard_rounds=False, cooldown=3)
    for _ in range(6):                                         # with hard rounds: 1, 2, 3 demos, parked
        draws = step(core, 8, fails={0})
        assert sorted(draws) == list(range(8))                 # prompt 0 is never parked
        assert all(d.demo_round == 0 and d.demo_prompts == () for d in draws.values())
    m = core.metrics()
    assert m["sampler/parked"] == 0.0 and m["sampler/demo_round/0"] == 8.0
    res = core.record(np.array([0]), np.array([0]), rewards([0]))
    assert res.all_fail.tolist() == [True] and res.metrics["sampler/all_fail_share"] == 1.0  # still seen
    assert core.state_dict()["demo_round"][0] == 0


def test_uniform_priority_weighs_every_eligible_prompt_one():
    core = make_core(P=200, codes=np.zeros(200, np.int8), priority="uniform", seed=0)
    core.record(np.arange(100), np.zeros(100, np.int64), rewards([10] * 100))   # 0..99 solved
    core.end_step()
    assert core.metrics()["sampler/priority_entropy"] == pytest.approx(1.0, abs=1e-12)
    assert core.state_dict()["seen"][:100].tolist() == [10] * 100              # stats still kept
    drawn = np.array([d.prompt for _ in range(20) for d in core.next_batch(10)])
    assert 0.4 < (drawn >= 100).mean() < 0.6                   # reward_stats: > 0.9 (weights 1.55 vs 0.05)
    parked = make_core(priority="uniform", cooldown=3)
    for _ in range(4):
        step(parked, 8, fails={0})
    assert sorted(step(parked, 8, fails={0})) == list(range(1, 8))   # parked still means weight 0


def test_curriculum_off_splits_the_batch_by_eligible_prompts():
    codes = np.array([0] * 10 + [1] * 20 + [2] * 5 + [3] * 5)
    on, off = make_core(P=40, codes=codes), make_core(P=40, codes=codes, curriculum=False)
    for core in (on, off):
        for _ in range(5):                                     # `single` always solved, others never
            core.record(np.array([10, 11, 0, 30, 35]), np.zeros(5, np.int64), rewards([10, 10, 0, 0, 0]))
            core.end_step()
    m = off.metrics()
    assert m["sampler/mastery/single"] == 1.0                   # still tracked and logged
    assert [m[f"sampler/share/{t}"] for t in SUBTASKS] == [0.25, 0.5, 0.125, 0.125]
    assert on.metrics()["sampler/share/single"] < 0.2          # the curriculum shifts away from `single`
    for _ in range(3):
        counts = np.bincount(codes[[d.prompt for d in off.next_batch(8)]], minlength=4)
        assert counts.tolist() == [2, 4, 1, 1]


def test_shares_move_toward_the_least_mastered_subtask():
    core = make_core(P=40, codes=np.arange(40) % 4)
    for _ in range(5):                                         # `single` always solved, others never
        core.record(np.array([1, 5, 0, 2, 3]), np.zeros(5, np.int64), rewards([10, 10, 0, 0, 0]))
        core.end_step()
    m = core.metrics()
    assert m["sampler/mastery/single"] == 1.0                   # solved from its first step on
    assert m["sampler/share/single"] < m["sampler/share/no_call"] == m["sampler/share/parallel"]
    assert m["sampler/share/single"] >= 0.05


def test_a_rare_mastered_subtask_is_not_oversampled_with_the_prompt_base():
    """4 no_call prompts of 64, solved from the start; the rest half solved. DESIGN's base gives no_call
    a quarter of the batch on the first draw and about a fifth once mastered (the 2026-12-04 learning run's
    arm (d): 0.16-0.26 every step); the prompt base gives it its data share, then the floor."""
    codes = np.array([0] * 4 + [1] * 19 + [2] * 19 + [3] * 22)
    flat, by_prompts = make_core(P=64, codes=codes), make_core(P=64, codes=codes, curriculum_base="prompts")
    assert flat.metrics()["sampler/share/no_call"] == pytest.approx(0.25)
    assert by_prompts.metrics()["sampler/share/no_call"] == pytest.approx(4 / 64)
    for core in (flat, by_prompts):
        core.record(np.array([0, 4, 23, 42]), np.zeros(4, np.int64), rewards([10, 5, 5, 5]))
        core.end_step()
    e = np.exp(np.array([0.0, 0.5, 0.5, 0.5]) / 0.5)
    assert flat.metrics()["sampler/share/no_call"] == pytest.approx(e[0] / e.sum())   # 0.1093
    assert flat.metrics()["sampler/mastery/no_call"] == 1.0
    assert by_prompts.metrics()["sampler/share/no_call"] == pytest.approx(0.05)       # 4/64 tilted below q_min


def test_a_checkpoint_from_before_mastery_seen_loads():
    ref = make_core(P=30)
    for _ in range(3):
        step(ref, 6)
    state = ref.state_dict()
    assert state["mastery_seen"].tolist() == (ref._mastery_T != 0).astype(int).tolist()
    old = {k: v for k, v in state.items() if k != "mastery_seen"}
    other = make_core(P=30)
    other.load_state_dict(old)
    assert all(np.array_equal(v, state[k]) for k, v in other.state_dict().items())


def test_identical_seeds_give_identical_batches():
    a, b = make_core(P=30, seed=3), make_core(P=30, seed=3)
    for _ in range(4):
        assert step(a, 6, fails={0, 1, 2}) == step(b, 6, fails={0, 1, 2})
    assert step(make_core(P=30, seed=4), 6) != step(make_core(P=30, seed=3), 6)


def test_next_batch_respects_exclude_and_draws_distinct_prompts():
    core = make_core(P=20, codes=np.arange(20) % 4)
    first = [d.prompt for d in core.next_batch(12)]
    assert len(set(first)) == 12
    rest = [d.prompt for d in core.next_batch(12, exclude=np.array(first))]
    assert len(rest) == 8 and not set(rest) & set(first)       # only 8 prompts are left eligible


def test_unseen_prompts_are_drawn_before_solved_ones_mostly():
    core = make_core(P=200, codes=np.zeros(200, np.int8), seed=0)
    core.record(np.arange(100), np.zeros(100, np.int64), rewards([10] * 100))   # 0..99 solved
    core.end_step()
    drawn = np.array([d.prompt for _ in range(20) for d in core.next_batch(10)])
    assert (drawn >= 100).mean() > 0.9                          # weights 1.55 vs 0.05


def test_state_dict_round_trip_is_exact():
    ref = make_core(P=30, seed=7, cooldown=2)
    for _ in range(6):
        step(ref, 6, fails={0, 1, 2, 3})
    state = ref.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    buf = io.BytesIO()
    np.savez(buf, **state)                                      # no pickle needed
    buf.seek(0)
    loaded = dict(np.load(buf, allow_pickle=False))
    other = make_core(P=30, seed=999, cooldown=2)
    other.load_state_dict(loaded)
    assert other.step == ref.step and other.metrics() == ref.metrics()
    for _ in range(5):
        assert step(other, 6, fails={0, 1, 2, 3}) == step(ref, 6, fails={0, 1, 2, 3})
    after = other.state_dict()
    assert all(np.array_equal(v, ref.state_dict()[k]) for k, v in after.items())


def test_ema_mode_saves_variance_and_rejects_a_welford_checkpoint():
    core = make_core(stats="ema")
    step(core, 8)
    assert "reward_var" in core.state_dict() and "reward_m2" not in core.state_dict()
    with pytest.raises(ValueError, match="reward_var"):
        core.load_state_dict(make_core().state_dict())


def test_bad_record_input_is_rejected_with_a_message():
    core = make_core()
    with pytest.raises(ValueError, match="demo_round"):
        core.record(np.array([0]), np.array([4]), rewards([0]))
    with pytest.raises(ValueError, match="rewards"):
        core.record(np.array([0, 1]), np.array([0, 0]), rewards([0]))

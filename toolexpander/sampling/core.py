"""SamplerCore: the sampler's whole state as numpy arrays and its verbs (next_batch, record, end_step,
metrics, state_dict). Pure: the Ray actor wraps it and converts Tasks <-> prompt indices.
Ablation switches (SamplerConfig): hard_rounds, priority ("reward_stats" | "uniform"), curriculum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolexpander.config import SamplerConfig
from toolexpander.sampling import curriculum, hard, stats
from toolexpander.types import REWARD_DIMS, SUBTASKS

T = len(SUBTASKS)
D = len(REWARD_DIMS)
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Draw:
    prompt: int                      # prompt index 0..P-1
    demo_round: int                  # 0 = bare; k >= 1 carries demo_schedule[k-1] demos
    demo_prompts: tuple[int, ...]    # demo-pool rows whose ground truth the lead renders as Demos (prompt
                                     # indices, unless SamplerCore was given a demo_index of other rows)


@dataclass(frozen=True)
class RecordResult:
    informative: np.ndarray          # (G,) bool: total-reward std > signal_tol
    all_fail: np.ndarray             # (G,) bool: >= all_fail_min_n completions, none correct
    metrics: dict[str, float]        # sampler/all_fail_share, sampler/zero_signal_share, sampler/demo_rate


class SamplerCore:
    """Per-prompt state lives in "slots": prompts sorted by sub-task, so each sub-task is one
    contiguous slice and a step's draw is a few O(N) vectorised passes. `_order[slot] = prompt`,
    `_pos[prompt] = slot`; everything public speaks prompt indices.

    reward_weights (D,) weights the raw rewards into the total used by `informative` (default: all 1,
    as RewardConfig's defaults). demo_index: demos drawn from other rows than the prompts (a
    hard.DemoIndex over them, tool-name ids in the prompts' id space; Draw.demo_prompts then index
    those rows); None: from the prompts themselves, those demo_pool marks.
    """

    def __init__(self, cfg: SamplerConfig, subtask_codes: np.ndarray, tool_ids_indptr: np.ndarray,
                 tool_ids: np.ndarray, answer_hash: np.ndarray, demo_pool: np.ndarray | None = None,
                 exemplar_bonus: float = 0.01, reward_weights: np.ndarray | None = None,
                 demo_index: hard.DemoIndex | None = None):
        codes_P = np.asarray(subtask_codes, dtype=np.int64)
        P = len(codes_P)
        if P == 0 or codes_P.min() < 0 or codes_P.max() >= T:
            raise ValueError(f"subtask_codes must be a non-empty array of codes 0..{T - 1} (SUBTASKS)")
        if len(tool_ids_indptr) != P + 1 or len(answer_hash) != P:
            raise ValueError(f"tool_ids_indptr must have P+1={P + 1} entries and answer_hash P={P}")
        pool_P = np.ones(P, dtype=bool) if demo_pool is None else np.asarray(demo_pool, dtype=bool)
        self.cfg = cfg
        self.num_prompts = P
        self.exemplar_bonus = float(exemplar_bonus)
        self.weights_D = np.ones(D) if reward_weights is None else np.asarray(reward_weights, np.float64)
        self.alpha_D = np.array([cfg.alpha.get(d, 0.0) for d in REWARD_DIMS])   # per-dim std weight
        self.schedule = np.asarray(cfg.demo_schedule, dtype=np.int64)
        self._order = np.argsort(codes_P, kind="stable")          # slot -> prompt
        self._pos = np.empty(P, dtype=np.int64)
        self._pos[self._order] = np.arange(P)                      # prompt -> slot
        self._sub_S = codes_P[self._order]
        self._bounds = np.searchsorted(self._sub_S, np.arange(T + 1))  # sub-task t: slots [b_t, b_t+1)
        own = hard.DemoIndex(codes_P, tool_ids_indptr, tool_ids, answer_hash, pool_P, T)
        self._query = own                  # each prompt's sub-task, tool-name ids and answer hash
        self._demos = own if demo_index is None else demo_index
        self.rng = np.random.default_rng(cfg.seed)
        self.step = 0
        self._seen_S = np.zeros(P, dtype=np.int64)                 # rollouts seen
        self._mean_SD = np.zeros((P, D))                           # running mean, rewards in [0, 1]
        self._spread_SD = np.zeros((P, D))                         # Welford M2, or the EMA variance
        self._streak_S = np.zeros(P, dtype=np.int32)               # consecutive all-fail groups
        self._round_S = np.zeros(P, dtype=np.int8)                 # current demo round
        self._parked_until_S = np.full(P, -1, dtype=np.int64)      # parked while step <= this
        self._mastery_T = np.zeros(T)                              # EMA of `correct` per sub-task
        self._mastery_seen_T = np.zeros(T, dtype=bool)             # had evidence (the EMA started)
        self._step_sum_T = np.zeros(T)                             # this step's sum of group mean correct
        self._step_groups_T = np.zeros(T, dtype=np.int64)          # this step's groups per sub-task
        self._w_S = self._priority(slice(None))                    # cached priority (never 0)

    # ---- drawing ------------------------------------------------------------------------------
    def next_batch(self, batch_size: int, exclude: np.ndarray | None = None) -> list[Draw]:
        """Up to batch_size distinct prompts: counts per sub-task by the curriculum shares, then a
        priority-weighted draw without replacement inside each sub-task; parked and excluded
        prompts have weight 0. Fewer draws only when fewer prompts are eligible."""
        w_S = self._eligible_weights()
        if exclude is not None and len(exclude):
            w_S[self._pos[np.asarray(exclude, dtype=np.int64)]] = 0.0
        capacity_T = self._capacity(w_S)
        q_T = self._shares(capacity_T)
        counts_T = curriculum.allocate(batch_size, q_T, capacity_T, self.rng)
        slots = [curriculum.draw_weighted(w_S[self._bounds[t]:self._bounds[t + 1]], counts_T[t], self.rng)
                 + self._bounds[t] for t in range(T) if counts_T[t] > 0]
        slots_B = self.rng.permutation(np.concatenate(slots + [np.empty(0, np.int64)]))
        draws = []
        for s in slots_B:
            p, k = int(self._order[s]), int(self._round_S[s])
            demos = self._select_demos(p, int(self.schedule[k - 1])) if k > 0 else ()
            draws.append(Draw(prompt=p, demo_round=k, demo_prompts=demos))
        return draws

    def _select_demos(self, p: int, m: int) -> tuple[int, ...]:
        exclude = p if self._demos is self._query else -1   # p is a row of the pool only when it is its own
        return self._demos.select_for(*self._query.query(p), m, self.rng, exclude=exclude)

    def _eligible_weights(self) -> np.ndarray:
        w_S = self._w_S.copy()
        w_S[self._parked_until_S >= self.step] = 0.0
        return w_S

    def _capacity(self, w_S: np.ndarray) -> np.ndarray:
        return np.array([np.count_nonzero(w_S[self._bounds[t]:self._bounds[t + 1]]) for t in range(T)])

    def _shares(self, capacity_T: np.ndarray) -> np.ndarray:
        """Sub-task shares: from mastery (the curriculum), or by eligible prompts when it is off."""
        if not self.cfg.curriculum:
            return curriculum.proportional_shares(capacity_T)
        base_T = capacity_T if self.cfg.curriculum_base == "prompts" else None
        return curriculum.shares(self._mastery_T, self.cfg.tau, self.cfg.q_min, capacity_T > 0, base_T)

    def _priority(self, slots) -> np.ndarray:
        c = self.cfg
        seen = self._seen_S[slots]
        if c.priority == "uniform":
            return np.ones(len(seen))
        var = stats.variance(seen, self._spread_SD[slots], c.stats)
        return stats.priority(seen, self._mean_SD[slots], var, eps=c.eps, alpha_D=self.alpha_D,
                              beta=c.beta, prior_mean=c.prior_mean, prior_std=c.prior_std)

    # ---- recording ----------------------------------------------------------------------------
    def record(self, prompts: np.ndarray, demo_rounds: np.ndarray, rewards_GnD: np.ndarray) -> RecordResult:
        """Fold G scored groups into the state: reward stats and priority, the step's mastery
        evidence, and the demo-round transitions computed from the round each group was generated
        with. A group smaller than all_fail_min_n, or hard_rounds off, leaves rounds and parking
        untouched (all-fail is still detected and reported)."""
        c = self.cfg
        prompts_G = np.asarray(prompts, dtype=np.int64)
        rounds_G = np.asarray(demo_rounds, dtype=np.int64)
        raw_GnD = np.asarray(rewards_GnD, dtype=np.float64)
        G = len(prompts_G)
        if raw_GnD.ndim != 3 or raw_GnD.shape[0] != G or raw_GnD.shape[2] != D or len(rounds_G) != G:
            raise ValueError(f"record: prompts ({G},), demo_rounds ({len(rounds_G)},) and rewards "
                             f"{raw_GnD.shape} disagree; expected rewards (G, n, {D})")
        if G == 0:
            return RecordResult(np.zeros(0, bool), np.zeros(0, bool), {})
        if prompts_G.min() < 0 or prompts_G.max() >= self.num_prompts:
            raise ValueError(f"record: prompt index out of range 0..{self.num_prompts - 1}")
        if rounds_G.min() < 0 or rounds_G.max() > len(self.schedule):
            raise ValueError(f"record: demo_round out of range 0..{len(self.schedule)}")
        slots_G = self._pos[prompts_G]

        x_GnD = stats.normalise_rewards(raw_GnD, self.exemplar_bonus)
        slots_U, count_U, mean_UD, m2_UD = stats.pool_groups(slots_G, x_GnD)
        if c.stats == "welford":
            stats.welford_update(self._seen_S, self._mean_SD, self._spread_SD, slots_U, count_U, mean_UD,
                                 m2_UD)
        else:
            stats.ema_update(self._seen_S, self._mean_SD, self._spread_SD, slots_U, count_U, mean_UD,
                             m2_UD, c.ema_decay)
        self._w_S[slots_U] = self._priority(slots_U)

        correct_Gn = raw_GnD[:, :, stats.CORRECT]
        fail_G = hard.all_fail(correct_Gn, c.all_fail_min_n)
        self._streak_S[slots_G] = hard.next_streaks(self._streak_S[slots_G], correct_Gn, c.all_fail_min_n)
        if c.hard_rounds and correct_Gn.shape[1] >= c.all_fail_min_n:
            new_G, park_G = hard.next_rounds(rounds_G, correct_Gn, c.all_fail_min_n, len(self.schedule))
            self._round_S[slots_G] = new_G
            self._parked_until_S[slots_G[park_G]] = self.step + c.cooldown
        stats.accumulate_correct(self._step_sum_T, self._step_groups_T, self._sub_S[slots_G], correct_Gn)

        info_G = hard.informative(raw_GnD @ self.weights_D, c.signal_tol)
        metrics = {"sampler/all_fail_share": float(fail_G.mean()),
                   "sampler/zero_signal_share": float(1.0 - info_G.mean()),
                   "sampler/demo_rate": float((rounds_G > 0).mean())}
        return RecordResult(informative=info_G, all_fail=fail_G, metrics=metrics)

    def end_step(self) -> None:
        """Close the training step: fold its groups into the sub-task mastery, then step += 1."""
        self._mastery_T = stats.update_mastery(self._mastery_T, self._step_sum_T, self._step_groups_T,
                                               self.cfg.mastery_ema, self._mastery_seen_T)
        self._mastery_seen_T |= self._step_groups_T > 0
        self._step_sum_T[:] = 0.0
        self._step_groups_T[:] = 0
        self.step += 1

    # ---- reporting ----------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        w_S = self._eligible_weights()
        q_T = self._shares(self._capacity(w_S))
        seen_S = self._seen_S > 0
        out = {"sampler/parked": float(np.count_nonzero(self._parked_until_S >= self.step)),
               "sampler/seen_prompts": float(np.count_nonzero(seen_S)),
               # per prompt, not per group: the seen prompts whose latest group had no correct completion
               # (hard-sample rounds generate each hard prompt again, which a per-group share counts twice)
               "sampler/unsolved_share": float(np.count_nonzero(self._streak_S[seen_S] > 0) / max(1, seen_S.sum()))}
        per_round = np.bincount(self._round_S, minlength=len(self.schedule) + 1)
        out.update({f"sampler/demo_round/{k}": float(v) for k, v in enumerate(per_round)})
        out.update({f"sampler/mastery/{name}": float(self._mastery_T[t]) for t, name in enumerate(SUBTASKS)})
        out.update({f"sampler/share/{name}": float(q_T[t]) for t, name in enumerate(SUBTASKS)})
        w = w_S[w_S > 0]
        p = w / w.sum() if len(w) else w
        entropy = float(-(p * np.log(p)).sum() / np.log(len(w))) if len(w) > 1 else 0.0
        out["sampler/priority_entropy"] = entropy                  # 1 = uniform over eligible prompts
        return out

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays in prompt order (safetensors/npz-safe, no pickle), the rng included."""
        rng = self.rng.bit_generator.state
        if rng["bit_generator"] != "PCG64":
            raise ValueError(f"state_dict supports the PCG64 bit generator, not {rng['bit_generator']}")
        split = lambda v: np.array([v >> 64, v & _U64], dtype=np.uint64)  # noqa: E731  128-bit -> hi, lo
        spread = "reward_m2" if self.cfg.stats == "welford" else "reward_var"
        return {
            "step": np.array([self.step], dtype=np.int64),
            "seen": self._seen_S[self._pos].copy(),
            "reward_mean": self._mean_SD[self._pos].copy(),
            spread: self._spread_SD[self._pos].copy(),
            "all_fail_streak": self._streak_S[self._pos].copy(),
            "demo_round": self._round_S[self._pos].copy(),
            "parked_until": self._parked_until_S[self._pos].copy(),
            "mastery": self._mastery_T.copy(),
            "mastery_seen": self._mastery_seen_T.astype(np.int64),
            "step_correct_sum": self._step_sum_T.copy(),
            "step_groups": self._step_groups_T.copy(),
            "rng_state": split(rng["state"]["state"]),
            "rng_inc": split(rng["state"]["inc"]),
            "rng_has_uint32": np.array([rng["has_uint32"]], dtype=np.int64),
            "rng_uinteger": np.array([rng["uinteger"]], dtype=np.uint64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        spread = "reward_m2" if self.cfg.stats == "welford" else "reward_var"
        P = self.num_prompts
        shapes = {"step": (1,), "seen": (P,), "reward_mean": (P, D), spread: (P, D), "all_fail_streak": (P,),
                  "demo_round": (P,), "parked_until": (P,), "mastery": (T,), "step_correct_sum": (T,),
                  "step_groups": (T,), "rng_state": (2,), "rng_inc": (2,), "rng_has_uint32": (1,),
                  "rng_uinteger": (1,), "mastery_seen": (T,)}
        state = dict(state)
        if "mastery_seen" not in state:   # saved before 2026-12-04: an EMA away from 0 has had evidence
            state["mastery_seen"] = (np.asarray(state.get("mastery", np.zeros(T))) != 0).astype(np.int64)
        for key, shape in shapes.items():
            if key not in state:
                raise ValueError(f"sampler state: missing {key!r} (saved with another stats mode or P?)")
            if tuple(np.shape(state[key])) != shape:
                raise ValueError(f"sampler state: {key!r} has shape {np.shape(state[key])}, expected {shape}")
        order = self._order
        self.step = int(state["step"][0])
        self._seen_S = np.asarray(state["seen"], dtype=np.int64)[order]
        self._mean_SD = np.asarray(state["reward_mean"], dtype=np.float64)[order]
        self._spread_SD = np.asarray(state[spread], dtype=np.float64)[order]
        self._streak_S = np.asarray(state["all_fail_streak"], dtype=np.int32)[order]
        self._round_S = np.asarray(state["demo_round"], dtype=np.int8)[order]
        self._parked_until_S = np.asarray(state["parked_until"], dtype=np.int64)[order]
        self._mastery_T = np.array(state["mastery"], dtype=np.float64)
        self._mastery_seen_T = np.asarray(state["mastery_seen"]).astype(bool)
        self._step_sum_T = np.array(state["step_correct_sum"], dtype=np.float64)
        self._step_groups_T = np.array(state["step_groups"], dtype=np.int64)
        join = lambda a: (int(a[0]) << 64) | int(a[1])  # noqa: E731
        self.rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": join(state["rng_state"]), "inc": join(state["rng_inc"])},
            "has_uint32": int(state["rng_has_uint32"][0]), "uinteger": int(state["rng_uinteger"][0])}
        self._w_S = self._priority(slice(None))

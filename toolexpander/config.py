"""The pydantic config tree: the only place defaults live.

Loaded from YAML with dotted command-line overrides (`--learner.lr 1e-6`); a wrong type or unknown
key raises ConfigError naming the key. The resolved tree is dumped as JSON into every run directory.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolexpander.types import REWARD_DIMS, DemoFormat


def known_dims(per_dim: dict[str, float]) -> dict[str, float]:
    """A per-reward-dimension mapping, refused when it names a dimension that does not exist."""
    unknown = set(per_dim) - set(REWARD_DIMS)
    if unknown:
        raise ValueError(f"unknown reward dimension(s) {sorted(unknown)}; known: {list(REWARD_DIMS)}")
    return per_dim


# rollout.node_resource and learner.node_resource: which nodes a role may use, as a Ray custom resource.
NODE_RESOURCE = ("a custom Ray resource that marks the nodes {role} actors may run on (`ray start "
                 "--resources='{{\"{role}\": 1}}'` on those nodes, `resources:` in a cluster YAML's node "
                 "type); each actor's placement bundle asks for 0.001 of it, so the amount a node "
                 "advertises is a mark, not a count. None: any node with the CPUs and GPUs free")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The policy: a local transformers directory (never downloaded)."""

    path: str = Field("models/smollm2-135m", description="model directory (safetensors + tokenizer)")
    prepare: Literal["smollm2-135m", "tiny"] | None = Field(
        "smollm2-135m", description="build the directory with `prepare-model` when it is missing")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32", description="compute dtype. bfloat16: the rollout engine holds bf16 weights (pushed as "
        "bf16), the learner keeps float32 master weights and optimizer state and runs forward and backward "
        "under bf16 autocast. auto, decided once where the config is loaded (the driver) and recorded "
        "resolved in config.json: bfloat16 when rollout or learner use GPUs (Ampere or newer) or when this "
        "CPU has bf16 instructions (avx512_bf16 or amx_bf16), else float32 (without them a CPU emulates "
        "bf16 and the learner runs many times slower); on a CPU cluster whose head differs from its "
        "workers, set it explicitly")


def cpu_has_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's flags name bf16 matmul instructions (AVX512-BF16 or AMX-BF16)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_dtype(gpu: bool, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """model.dtype auto: bfloat16 on GPUs and on CPUs with bf16 instructions, else float32."""
    if gpu:
        return "bfloat16"
    if not cpuinfo.is_file():  # not Linux: nothing says the CPU has bf16, and float32 runs everywhere
        return "float32"
    return "bfloat16" if cpu_has_bf16(cpuinfo.read_text()) else "float32"


class DataConfig(Section):
    """Training and evaluation data (JSONL or Parquet, schema in data/README.md)."""

    train_path: str = "data/tool_calls_train.jsonl"
    max_prompt_tokens: int = Field(1536, ge=64, description="longer prompts are left out, counted")
    limit: int | None = Field(None, ge=1, description="use only the first N rows (debugging)")
    subset: int | None = Field(None, ge=1, description="train on a random subset of N rows, drawn from the "
                               "rows whose prompt fits max_prompt_tokens and answer max_answer_tokens "
                               "(seed: train.seed)")
    max_answer_tokens: int | None = Field(
        None, ge=8, description="leave out (counted: the start event's long_answer=) the rows whose reference "
        "answer, as a completion (the ground truth in the target format with the demonstrations' think line, "
        "then the end-of-turn token), is longer than this: a completion that rollout.max_tokens cuts off is "
        "never correct, so such a prompt gives GRPO only failing groups and, with hard-sample rounds, demos "
        "that cannot help (at 128 tokens, 428 of the 635 parallel-call training rows, for SmolLM2's tokenizer). "
        "Set it to rollout.max_tokens; None keeps every row")
    subset_mix: Literal["fitting", "file"] = Field(
        "fitting", description="how data.subset is drawn: fitting = uniformly from the rows that fit "
        "max_prompt_tokens (and max_answer_tokens); file = each sub-task with its share of all rows of train_path, so that the length "
        "filter, which leaves out mostly long parallel-call prompts, does not also change the sub-task mix "
        "(a sub-task with too few fitting rows gives its place to the others)")


class RolloutConfig(Section):
    """vLLM rollout workers."""

    num_workers: int = Field(1, ge=1, le=512)
    n: int = Field(10, ge=2, le=256, description="completions per prompt (the GRPO group)")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="sampling temperature; the learner "
                               "scores log softmax(logits / temperature), the distribution sampled from")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling; below 1 the sampled "
                         "distribution is truncated while the learner scores the whole one (keep 1 for exact ratios)")
    max_tokens: int = Field(256, ge=1, le=32768, description="completion length cap")
    max_model_len: int = Field(4096, ge=128)
    seed: int = 0
    tensor_parallel_size: int = Field(1, ge=1, le=8)
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=0.95)
    cpu_kvcache_gb: int = Field(1, ge=1, le=1024, description="VLLM_CPU_KVCACHE_SPACE (GiB)")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="Ray CPUs reserved per worker")
    gpus_per_worker: float = Field(0.0, ge=0.0)
    node_resource: str | None = Field(None, min_length=1, description=NODE_RESOURCE.format(role="rollout"))
    enforce_eager: bool = Field(
        True, description="false: vLLM compiles the model when an engine starts (CUDA graphs on GPU). On CPU it "
                          "measured 0.98x, 1.11x and 1.41x the tokens/s of eager in three runs on a machine whose "
                          "speed moves that much between runs (bench/rollout's compiled row, 2026-12-06, a 2-core "
                          "Intel Xeon), its engines up in 78-102 s against 12-15 s eager")
    block_size: int | None = Field(
        None, ge=16, le=1024,
        description="KV-cache block size in tokens, a multiple of 16 (of 32 on CPU); None: 32 on CPU, vLLM's "
                    "default on GPU. The n completions of a prompt share its KV cache (prefix caching) in whole "
                    "blocks only: each completion computes the prompt's last, partial block again, n times per "
                    "prompt. vLLM's CPU default is 128 tokens; at 32 the CPU rollout phase of 4 prompts x n=10 x "
                    "64 tokens ran 1.09x, 1.21x, 1.18x and 1.03x as many tokens/s in four runs (bench/rollout's "
                    "block-size rows, 2026-12-06, a 2-core Intel Xeon)")

    @field_validator("block_size")
    @classmethod
    def _block_multiple(cls, size: int | None) -> int | None:
        if size is not None and size % 16:
            raise ValueError("must be a multiple of 16 (vLLM's attention kernels; 32 on CPU)")
        return size


class RewardConfig(Section):
    """Weights of each reward dimension in `total` (the GRPO return)."""

    weights: dict[str, float] = Field(
        default_factory=lambda: {"format": 1.0, "tool_name": 1.0, "param_name": 1.0,
                                 "param_value": 1.0, "exemplar": 1.0, "correct": 1.0})
    exemplar_bonus: float = Field(
        0.01, ge=0.0, le=1.0,
        description="value of the exemplar reward; 0 turns it off. Kept small on purpose: a group whose "
                    "completions differ only in this bonus has a total-reward std of at most "
                    "exemplar_bonus * weights.exemplar / 2 (0.005 by default), below sampler.signal_tol, "
                    "so it is not informative (std-normalised advantages would make it a full-strength "
                    "signal). Config warns when sampler.signal_tol does not exclude such groups")
    max_completion_chars: int = Field(65536, ge=256, description="longer completions score 0")

    @field_validator("weights")
    @classmethod
    def _known_dims(cls, weights: dict[str, float]) -> dict[str, float]:
        return known_dims(weights)


class SamplerConfig(Section):
    """Hard-sample rounds, reward-statistics priority, sub-task curriculum, dynamic filling."""

    batch_prompts: int = Field(8, ge=1, description="B: informative groups per training step")
    max_draw_rounds: int = Field(3, ge=1, description="draw budget: generate rounds per step")
    signal_tol: float = Field(
        0.01, ge=0.0,
        description="a group whose total reward (raw rewards @ reward.weights) has population std <= this "
                    "carries no GRPO signal. 0.01 sits above 0.005, the largest std the default 0.01 "
                    "exemplar bonus alone can make (half the group earns it): a group that differs only in "
                    "the bonus is not informative; one tool_name hit in 10 (std 0.3) is")
    filter_zero_signal: bool = Field(True, description="refill past zero-signal groups (DAPO); "
                                     "false trains on every group, as plain GRPO does")
    demo_schedule: list[int] = Field(default_factory=lambda: [1, 2, 3],
                                     description="demos carried at round 1, 2, ...")
    demo_pool: Literal["file", "prompts"] = Field(
        "file", description="where a hard prompt's demos come from. file: every row of data.train_path "
                            "(its first data.limit), also those the run does not draw (data.subset, too long "
                            "a prompt), so that a subset still finds rows sharing its tools; prompts: only "
                            "the prompts the run draws. Until 2026-12-05 it was always the prompts: with "
                            "data.subset 64 none of the single or parallel-call prompts shared a tool name "
                            "with another, and their demos were random rows of the sub-task")
    demo_format: DemoFormat = Field(
        "system", description="where a hard prompt's demos go. system: appended to the system prompt as "
                              "'Solved examples'; turns: before the conversation, each a user turn (the demo's "
                              "tools and question) and an assistant turn (its answer), as earlier exchanges")
    all_fail_min_n: int = Field(10, ge=1, description="completions needed to call a group all-fail")
    cooldown: int = Field(20, ge=0, description="steps a prompt is parked after the last round")
    stats: Literal["welford", "ema"] = "welford"
    ema_decay: float = Field(0.8, gt=0.0, lt=1.0)
    eps: float = Field(0.05, gt=0.0, description="priority floor: solved prompts never reach 0")
    alpha: dict[str, float] = Field(
        default_factory=lambda: {d: 1.0 / len(REWARD_DIMS) for d in REWARD_DIMS},
        description="alpha_d: weight of reward dimension d's std in the priority, >= 0; a dimension left "
                    "out weighs 0. The default 1/D each makes sum_d alpha_d sqrt(v_d) the mean std over "
                    "dims, i.e. the former single alpha = 1")
    beta: float = Field(1.0, ge=0.0, description="weight of (1 - mean reward) in the priority")
    prior_mean: float = Field(0.0, ge=0.0, le=1.0, description="optimistic prior for unseen prompts")
    prior_std: float = Field(0.5, ge=0.0, le=1.0)
    mastery_ema: float = Field(0.9, gt=0.0, lt=1.0, description="decay of the sub-task mastery EMA; a "
                               "sub-task's first step with groups sets it to their mean correct (no bias to 0)")
    tau: float = Field(0.5, gt=0.0, description="curriculum temperature")
    q_min: float = Field(0.05, ge=0.0, le=0.25, description="minimum sub-task share")
    curriculum_base: Literal["subtask", "prompts"] = Field(
        "subtask", description="what the curriculum's tilt exp((1 - M_t) / tau) multiplies. subtask: 1 per "
                               "sub-task (DESIGN's formula): equal mastery gives equal shares, so a sub-task "
                               "with few prompts is drawn far above its share of the data. prompts: its "
                               "eligible prompts: equal mastery gives the curriculum-off batch (uniform over "
                               "prompts) and mastery only tilts it")
    hard_rounds: bool = Field(True, description="ToolExpander's multi-round hard sampling; false: all-fail "
                              "prompts never get demos and are never parked (every draw is demo round 0)")
    priority: Literal["reward_stats", "uniform"] = Field(
        "reward_stats", description="reward_stats: DSCL's priority w_p; uniform: weight 1 for every "
                                    "eligible prompt (the reward statistics are still kept)")
    curriculum: bool = Field(True, description="DSCL's sub-task curriculum; false: each sub-task's share is "
                             "its share of the eligible prompts (uniform over prompts); mastery is still "
                             "tracked and logged")
    seed: int = 0

    @field_validator("alpha")
    @classmethod
    def _alpha_dims(cls, alpha: dict[str, float]) -> dict[str, float]:
        known_dims(alpha)
        negative = sorted(d for d, a in alpha.items() if a < 0)
        if negative:
            raise ValueError(f"alpha must be >= 0 (the priority must stay >= eps); negative: {negative}")
        return alpha

    @model_validator(mode="after")
    def _schedule(self) -> "SamplerConfig":
        if not self.demo_schedule or any(k < 1 for k in self.demo_schedule):
            raise ValueError("demo_schedule must be a non-empty list of positive demo counts")
        return self


class LearnerConfig(Section):
    """DeepSpeed learner and the modified GRPO update (no KL by default, asymmetric clip)."""

    lr: float = Field(1e-6, gt=0.0)
    warmup_steps: int = Field(0, ge=0, description="linear warm-up, in training steps (not optimizer "
                              "updates: a step makes ppo_epochs x mini_batches of those)")
    lr_gamma: float = Field(0.99, gt=0.0, le=1.0, description="exponential decay per training step: "
                            "lr at step t = lr * lr_gamma ** (t - warmup_steps), floored at lr_min")
    lr_min: float = Field(1e-7, ge=0.0)
    eps_low: float = Field(0.2, ge=0.0, le=1.0)
    eps_high: float = Field(0.28, ge=0.0, le=10.0)
    dual_clip: float | None = Field(None, gt=1.0, description="dual-clip c for negative advantages")
    kl_coef: float = Field(0.0, ge=0.0, description="weight of a KL penalty to the starting model (model.path "
                           "as the run started, frozen: each rank holds a copy for one extra forward pass per "
                           "micro-batch): kl_coef x the token mean of k3 = exp(ref - logp) - (ref - logp) - 1 is "
                           "added to the loss (verl's use_kl_loss with low_var_kl; OpenRLHF's init_kl_coef) and "
                           "logged as learner/ref_kl. 0, the papers' setting: no term, no reference model")
    adv_std_norm: bool = True
    ppo_epochs: int = Field(1, ge=1)
    mini_batches: int = Field(1, ge=1, description="optimizer steps per epoch")
    grad_clip: float = Field(1.0, gt=0.0)
    zero_stage: Literal[0, 1, 2, 3] = 0
    world_size: int = Field(1, ge=1)
    share_prompt: bool = Field(True, description="forward each group's prompt once, reuse its KV")
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="split a group whose prompt + completions exceed this many tokens into "
        "parts of consecutive completions that fit (at least one each), every part with its own prompt "
        "forward and backward; advantages stay the whole group's and the loss the same token mean, so the "
        "update is unchanged while the peak holds one part's activations (verl's ppo_max_token_len_per_gpu, "
        "OpenRLHF's packing budget). None: a group is one micro-batch")
    gradient_checkpointing: bool = False
    is_cap: float | None = Field(2.0, gt=0.0, description="truncated importance sampling against the "
                                 "behaviour policy (the logprobs the rollout engine sampled with): each "
                                 "token's loss is weighted by min(pi_old / mu, is_cap); None turns the "
                                 "correction off (rollout/mismatch_k3_kl is logged either way)")
    logit_chunk_mb: int = Field(256, ge=1, le=1 << 20, description="the LM head scores at most as many "
                                "completion tokens at once as fit this many MiB of float32 logits (MiB / "
                                "(vocab x 4 B) tokens: 1365 for SmolLM2's 49k vocabulary, 441 for Qwen2.5's "
                                "152k); a larger group is scored in chunks, each recomputed in the backward pass")
    lm_head_fp32: bool = Field(True, description="with model.dtype bfloat16, compute the LM head (the "
                               "logits) in float32 outside autocast: it lowers the k3 KL to a bf16 engine's "
                               "logprobs by about a quarter (1.38e-3 vs 1.91e-3, bench/mismatch.py) and costs "
                               "learner time on a CPU, where a float32 matmul is several times slower than a "
                               "bf16 one (Learner.step 27.4 s vs 22.3 s with a bf16 head, 2 groups x n=10 x "
                               "(600 + 100) tokens, one thread, 2026-12-05 AMD EPYC; `python -m bench.learner "
                               "--bf16-heads fp32 bf16`). false: the faster head, the importance weights "
                               "correcting the larger mismatch")
    attn_implementation: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="the learner's attention kernels; auto: sdpa on GPU; on CPU, eager for a group "
        "whose prompt + longest completion fits in eager_max_tokens, sdpa beyond. Measured on SmolLM2-135M, "
        "bf16 autocast, one thread, n=10 x 100 completion tokens, forward + backward (2026-12-02, AMD): "
        "prompt 500: eager 9.9 s / 5.3 GB of activations, sdpa 13.4 s / 3.9 GB; prompt 1000: 18.6 s / "
        "8.0 GB vs 19.2 s / 4.8 GB; prompt 2000: 70 s / 15.9 GB vs 36 s / 6.8 GB (eager keeps T x T "
        "attention weights per layer)")
    eager_max_tokens: int = Field(1024, ge=1, description="attn_implementation auto on CPU: the longest "
                                  "sequence (prompt + completion) scored with eager attention")
    max_nonfinite_in_row: int = Field(3, ge=1)
    trim_below_available: float | None = Field(
        0.4, ge=0.0, le=1.0, description="after a step, hand the memory glibc keeps for reuse back to the OS "
        "(malloc_trim) when the node's available memory is below this share of its total: steps of different "
        "sizes fragment the heap and a CPU learner grows step after step (on a 24 GB machine a SmolLM2 "
        "learner reached 12.3 GB and was OOM-killed; a trim returned 3.7 GB). Trimming costs the next step "
        "its page faults, hence only when memory is short; the margin left must hold a step's growth (up to "
        "5.7 GB there: at 0.25 the node was at 74% used before the step that would have killed it). None: "
        "never. Logged: learner/host_rss_gb, learner/host_trimmed_gb")
    weight_sync: Literal["auto", "gloo", "object_store", "nccl"] = "auto"
    weight_sync_bucket_mb: int = Field(64, ge=1)
    weight_sync_timeout_s: float = Field(120.0, gt=0.0, le=3600.0, description="gloo weight group: how "
                                         "long a push waits on a member before failing; the driver then "
                                         "replaces dead workers, rebuilds the group and pushes again")
    cpus_per_rank: float = Field(1.0, gt=0.0)
    torch_threads: int | None = Field(None, ge=1, description="CPU only; default: the node's cores / "
                                      "world_size (rollouts sleep while the learner runs)")
    gpus_per_rank: float = Field(0.0, ge=0.0)
    node_resource: str | None = Field(None, min_length=1, description=NODE_RESOURCE.format(role="learner"))


class TrainConfig(Section):
    steps: int = Field(20, ge=1)
    max_staleness: int = Field(0, ge=0, le=8, description="0: synchronous (generate, learn, push). K >= 1: "
                               "the workers generate the next K steps' batches, one after another, with the "
                               "weights they hold while the learner trains, so each batch is trained by a policy at "
                               "most K versions newer than the one that generated it (admission: a step's batch "
                               "starts generating only once the learner is at most K steps behind it; the loss "
                               "corrects for the lag: learner.is_cap). K = 1 is one-step off-policy and as "
                               "reproducible as K = 0; over the object store every K is (each batch generates with the "
                               "weights of its admission), over a broadcast group the newest weights land, so for "
                               "K >= 2 the version depends on timing (each row records policy_version). "
                               "A push never lands mid-generation: "
                               "over the object store it is gathered at once and loaded before the next batch "
                               "starts; a broadcast group waits for the engines to be idle")
    save_every: int = Field(10, ge=0, description="checkpoint every K steps (0 = only at the end)")
    keep_last: int = Field(2, ge=1)
    hf_export_every: int = Field(0, ge=0, description="HF export every K steps (0 = only at the end)")
    seed: int = 0


class SftConfig(Section):
    """Supervised warm start (`toolexpander sft`): ground-truth answers of data.train_path rendered in
    the target format, cross-entropy on the answer tokens only, on the DeepSpeed learner."""

    rows: int = Field(400, ge=1, le=10_000_000, description="row budget: a seeded random choice of this "
                      "many fitting rows of data.train_path (ToolRL's SFT400 uses 400)")
    epochs: int = Field(1, ge=1, le=100, description="passes over the chosen rows")
    lr: float = Field(3e-5, gt=0.0, le=1.0, description="peak learning rate (AdamW)")
    lr_min: float | None = Field(None, gt=0.0, le=1.0, description="LR of the last step, reached by "
                                 "exponential decay from lr; None keeps lr constant")
    warmup_steps: int = Field(0, ge=0, le=100_000, description="linear warm-up steps before the decay")
    batch_rows: int = Field(8, ge=1, le=4096, description="rows per optimizer step at most, over all "
                            "learner ranks (an epoch's rows are split evenly over ceil(rows / batch_rows) steps)")
    max_answer_tokens: int = Field(512, ge=8, le=32768, description="rows whose target (answer + "
                                   "end-of-turn token) is longer are left out, counted")
    max_prompt_tokens: int | None = Field(None, ge=8, le=1_048_576, description="rows whose prompt is longer are "
                                          "left out, counted; None: data.max_prompt_tokens. SFT holds no rollout "
                                          "context and no demonstrations, so it can take longer prompts than GRPO "
                                          "(at 768 tokens the SmolLM2 tokenizer keeps 153 of the 635 parallel-call "
                                          "training rows, at 1024 411)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="row choice and the order of the rows")
    output_dir: str | None = Field(None, description="model directory to write; None: <model.path>-sft")

    @model_validator(mode="after")
    def _lr_range(self) -> "SftConfig":
        if self.lr_min is not None and self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must not exceed lr ({self.lr})")
        return self


class ClusterConfig(Section):
    address: str | None = Field(None, description="None: local mode; 'auto' under `ray job submit`")
    num_cpus: int | None = Field(None, ge=1, description="local mode: CPUs Ray may use")
    namespace: str = "toolexpander"
    dashboard_host: str = "127.0.0.1"
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    call_timeout_s: float = Field(1800.0, gt=0.0, description="the longest one blocking call to an actor in "
                                  "the loop may take (a generation, a learner step, a push, a checkpoint part, "
                                  "a sampler call). A rollout worker past it counts as hung: it is killed, "
                                  "restarted and its prompts re-issued; a learner rank or the sampler past it "
                                  "stops the run with the actor named. Raise it for steps longer than this")
    max_restarts: int = Field(2, ge=0, description="a learner rank that dies or hangs (its node lost, its process "
                              "killed): the run is started again from its last checkpoint, in the same process, "
                              "up to this many times (event `restart`; a new learner node is waited for up to "
                              "placement_timeout_s). 0: the run stops, to be resumed by hand. Rollout workers "
                              "are replaced within the step and do not count")
    placement_timeout_s: float = Field(900.0, gt=0.0, description="how long the rollout and learner placement "
                                       "groups may wait for resources (an autoscaler adding nodes included) "
                                       "before the run stops, saying what was asked and what the cluster has")


class LoggingConfig(Section):
    output_dir: str = Field("runs/latest", description="the run's location, read the same way by every "
                            "process: a local path (made absolute at the driver; on a cluster, a filesystem "
                            "every node mounts) or a pyarrow.fs URI (s3://bucket/run, gs://..., file:///...). "
                            "Checkpoints and HF exports are written there by the processes that hold them")
    local_dir: str | None = Field(None, description="where the driver keeps metrics.jsonl, events, TensorBoard, "
                                  "eval answers and logs when output_dir is a URI; copied to the URI at every "
                                  "checkpoint and at the end. Default: runs/<the URI's last name>")
    tensorboard: bool = True
    wandb_project: str | None = None
    progress: Literal["auto", "bar", "plain"] = "auto"


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="evaluate every K steps (0 = off)")
    before: bool = Field(False, description="also evaluate the starting policy before the first step of a "
                         "fresh run, logged in step 0's row as eval_before/<suite>/<category>")
    suites: list[Literal["toolrl", "acebench", "bfcl"]] = Field(default_factory=lambda: ["toolrl"])
    limit: int = Field(16, ge=1, description="questions per suite during training")
    max_tokens: int = Field(256, ge=1)


class Config(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    sampler: SamplerConfig = SamplerConfig()
    learner: LearnerConfig = LearnerConfig()
    train: TrainConfig = TrainConfig()
    cluster: ClusterConfig = ClusterConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()
    sft: SftConfig = SftConfig()

    @model_validator(mode="after")
    def _resolve_auto_dtype(self) -> "Config":
        if self.model.dtype == "auto":
            self.model.dtype = auto_dtype(self.rollout.gpus_per_worker > 0 or self.learner.gpus_per_rank > 0)
        return self

    @model_validator(mode="after")
    def _bonus_alone_is_no_signal(self) -> "Config":
        """Warn when a group that differs only in the exemplar bonus would count as informative."""
        bound = self.reward.exemplar_bonus * abs(self.reward.weights.get("exemplar", 0.0)) / 2
        if bound > 0 and self.sampler.signal_tol <= bound:
            warnings.warn(f"sampler.signal_tol={self.sampler.signal_tol:g} does not exceed {bound:g}, the "
                          f"largest total-reward std that reward.exemplar_bonus="
                          f"{self.reward.exemplar_bonus:g} alone can make: groups that differ only in the "
                          f"bonus count as informative")
        return self


class ConfigError(ValueError):
    """A bad config file or override; the message names the key."""


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override --{key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--a.b value` pairs -> {"a.b": parsed value}; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.field value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"override --{key} has no value")
            value = args[i + 1]
            i += 1
        out[key] = yaml.safe_load(value) if value != "" else ""
        i += 1
    return out


def _format_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{where}: {key}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" and "input" in e and not isinstance(e["input"], dict) else ""))
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    tree: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        from toolexpander import storage

        where = str(path)
        if storage.is_uri(where):  # a run's config.json in its storage (resume from a bucket)
            try:
                text = storage.read_file(where).decode()
            except (storage.StorageError, OSError) as e:
                raise ConfigError(f"config file not readable: {where}: {e}") from None
        else:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            text = path.read_text()
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{where}: top level must be a mapping of sections")
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, where + (" + overrides" if overrides else ""))) from None


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")


def absolute_paths(cfg: Config) -> Config:
    """model.path, data.train_path and logging.output_dir (unless a URI) and logging.local_dir resolved
    in the driver's working directory, before any actor sees a path under them (an actor's working
    directory is its raylet's, another on every node) and before config.json records them (a resume
    then works from any directory)."""
    from toolexpander import storage

    def resolved(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    location = storage.resolve(cfg.logging.output_dir)
    local_dir = cfg.logging.local_dir and resolved(cfg.logging.local_dir)
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"path": resolved(cfg.model.path)}),
        "data": cfg.data.model_copy(update={"train_path": resolved(cfg.data.train_path)}),
        "logging": cfg.logging.model_copy(update={"output_dir": location, "local_dir": local_dir})})

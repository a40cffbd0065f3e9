"""Learner: a DeepSpeed engine running the modified GRPO update on scored rollout groups.

In: an Arrow table of rollouts (types.ROLLOUT_SCHEMA). Out: metrics; full weights for the push;
DeepSpeed checkpoints and HF exports. One instance per rank (actors.group.LearnerGroup wraps it).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa
import torch

from toolexpander.cluster.local import redirect_output
from toolexpander.config import LearnerConfig
from toolexpander.learner import host_memory
from toolexpander.learner.dist import init_distributed
from toolexpander.learner.groups import Group, groups_from_table
from toolexpander.learner.grpo import behaviour_weights, clipped_surrogate, group_advantages, lr_lambda, reference_kl
from toolexpander.learner.shared_prompt import completion_logprobs_plain, completion_logprobs_shared
from toolexpander.models import check_model_dir
from toolexpander.rollouts import fetch_rows


def _float32_head(head: torch.nn.Linear, device_type: str) -> None:
    """Make `head` compute in float32 even inside a bf16 autocast region (its weights are float32)."""
    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)

    head.forward = forward


def _load_model(model_path: str, attn: str, head_fp32_on: str | None):
    """The model as the learner computes with it: float32 weights, the KV cache on (shared prompts),
    and, with head_fp32_on ("cpu" or "cuda"; model.dtype bfloat16 and learner.lm_head_fp32), the LM
    head kept in float32 under autocast. The policy and the KL reference load the same way."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation=attn)
    if head_fp32_on:
        _float32_head(model.get_output_embeddings(), head_fp32_on)
    model.config.use_cache = True
    return model


def logit_chunk_tokens(chunk_mb: int, vocab_size: int) -> int:
    """How many positions the LM head scores at once: learner.logit_chunk_mb of float32 logits."""
    return max(16, (chunk_mb << 20) // (4 * vocab_size))


def ds_config(cfg: LearnerConfig) -> dict:
    """DeepSpeed's config; no LR scheduler: Learner.step sets the LR per training step itself.
    Always float32 (master weights, gradients, optimizer state): model.dtype bfloat16 is torch autocast
    around the forward passes, which runs the same on DeepSpeed's CPU accelerator and on GPUs, for
    every ZeRO stage."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        # We own the accumulation boundary: one engine.step() per mini-batch, however many groups.
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        # torch's fused AdamW (one kernel over all parameters, on CPU and CUDA): 0.067 s against the
        # per-tensor loop's 0.34 s for SmolLM2-135M's 135M float32 parameters on 2 cores; the same
        # update to float32 rounding (2.4e-7 on weights of order 1 after 3 steps).
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                  "weight_decay": 0.0, "torch_adam": True, "fused": True}},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class Learner:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int,
                 model_path: str, learner: dict, dtype: str = "float32", seed: int = 0,
                 pad_id: int = 0, temperature: float = 1.0):
        """master_port None defers joining the process group: LearnerGroup asks rank 0 for its
        rendezvous() (a socket already listening on its node) and then start()s every rank. Given a
        port, the rank starts at once (port 0: a world of one, the kernel picks it)."""
        redirect_output(f"learner-{rank}")
        check_model_dir(model_path, f"learner rank {rank}")
        self.rank, self.world_size = rank, world_size
        self.cfg = LearnerConfig.model_validate(learner)
        self._init_args = (model_path, dtype, seed, pad_id, temperature)
        self._listener = self._sync_listener = None   # rendezvous sockets held until their store takes them
        if master_port is not None:
            self.start(master_addr, master_port)

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: listen on this node's address at a port the kernel picks, and say where. The
        socket stays open until start() hands it to the store, so the port cannot be taken meanwhile."""
        from toolexpander.learner.dist import rendezvous_listener

        self._listener, host, port = rendezvous_listener()
        return host, port

    def start(self, master_addr: str, master_port: int) -> None:
        """Join the process group and build the DeepSpeed engine."""
        import deepspeed

        model_path, dtype, seed, pad_id, temperature = self._init_args
        rank, world_size = self.rank, self.world_size
        listener, self._listener = self._listener, None
        self.backend = init_distributed(rank, world_size, master_addr, master_port, listener)
        if self.backend == "gloo":
            # Ray pins actors to OMP_NUM_THREADS=num_cpus; the rollout workers sleep while the
            # learner runs, so the learner takes the node's cores.
            import os

            torch.set_num_threads(self.cfg.torch_threads or max(1, (os.cpu_count() or 1) // world_size))
        torch.manual_seed(seed)
        on_gpu = self.backend == "nccl"
        attn = self.cfg.attn_implementation
        # auto on CPU: eager for short groups, sdpa for long ones (chosen per group in logprobs)
        self._attn_by_length = attn == "auto" and not on_gpu
        if attn == "auto":
            attn = "sdpa" if on_gpu else "eager"
        device = "cuda" if on_gpu else "cpu"
        head_fp32_on = device if self.cfg.lm_head_fp32 and dtype == "bfloat16" else None
        model = _load_model(model_path, attn, head_fp32_on)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        # learner.kl_coef: the starting model, frozen, outside DeepSpeed (a full copy on every rank)
        self.reference = None
        if self.cfg.kl_coef > 0:
            self.reference = _load_model(model_path, attn, head_fp32_on).requires_grad_(False).eval().to(device)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_config(self.cfg))
        # model.dtype bfloat16: bf16 compute under autocast, float32 master weights (ds_config).
        self.dtype = dtype
        self._autocast = (("cuda" if on_gpu else "cpu"), dtype == "bfloat16")
        # ZeRO-0 applies whatever gradient it is given, so _update averages the ranks' gradients
        # itself, checks them and takes their norm before step(); step() must not average again.
        self.engine.enable_backward_allreduce = self.cfg.zero_stage > 0
        # The LR is a function of the training step (not of optimizer updates, which are
        # ppo_epochs x mini_batches per step): Learner.step sets it before its updates.
        self.schedule = lr_lambda(self.cfg.warmup_steps, self.cfg.lr_gamma, self.cfg.lr, self.cfg.lr_min)
        self.train_steps = 0   # training steps taken; the next step's LR is schedule(train_steps)
        self._set_lr(self.train_steps)
        # Sampling temperature of the rollouts: the learner scores log softmax(logits / T), the
        # distribution the tokens were drawn from (vLLM returns processed logprobs at the same T).
        self.temperature = temperature
        self.pad_id = pad_id
        self.chunk_tokens = logit_chunk_tokens(self.cfg.logit_chunk_mb, model.config.vocab_size)
        self.updates = 0
        self.nonfinite_in_row = 0
        self._wire_buffers: dict[str, torch.Tensor] = {}   # named_weights' conversion buffers, reused
        self._gap = [0.0, 0]
        # transformers drops the KV cache under gradient checkpointing, so sharing needs it off.
        shared = self.cfg.share_prompt and not self.cfg.gradient_checkpointing
        self._logprobs = completion_logprobs_shared if shared else completion_logprobs_plain

    # ---- the GRPO step -------------------------------------------------------------------------
    def _share(self, items: list) -> tuple[list, int]:
        """This rank's items and how many copies of the last item pad it to the longest rank's
        count: every rank must run the same forward/backward passes and collectives."""
        mine = items[self.rank::self.world_size]
        return mine, math.ceil(len(items) / self.world_size) - len(mine)

    def _pair_parts(self, groups: list[Group]) -> None:
        """Every rank must run as many backward passes as the others (under ZeRO each one reduces
        gradients): group k gets one-token filler parts up to the most parts any rank split its
        group k into."""
        most = self._sum_ranks([float(len(g.parts)) for g in groups], op=torch.distributed.ReduceOp.MAX)
        for g, k in zip(groups, most):
            g.parts += [g.filler() for _ in range(int(k) - len(g.parts))]

    @staticmethod
    def _padded(groups: list[Group], padding: int) -> list[Group]:
        """The last `padding` groups are copies that only keep the collectives paired (LearnerGroup.step
        deals the groups): zero advantage, and they count no tokens."""
        for g in groups[len(groups) - padding:]:
            g.rewards_n, g.padding = np.zeros_like(g.rewards_n), True
        return groups

    def _compute(self):
        """The context of every forward pass: bf16 autocast when model.dtype is bfloat16."""
        device_type, enabled = self._autocast
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)

    def _attention_for(self, group: Group) -> None:
        """attn_implementation auto on CPU: eager up to eager_max_tokens, sdpa beyond (its memory
        grows with T, eager's with T x T). Switching is a config flag read at each forward."""
        if not self._attn_by_length:
            return
        longest = len(group.prompt) + max((len(c) for c in group.completions), default=0)
        want = "eager" if longest <= self.cfg.eager_max_tokens else "sdpa"
        if self.engine.module.config._attn_implementation != want:
            self.engine.module.set_attn_implementation(want)

    def logprobs(self, group: Group, grad: bool):
        self._attention_for(group)
        with torch.set_grad_enabled(grad), self._compute():
            return self._logprobs(self.engine.module, group.prompt, group.completions,
                                  temperature=self.temperature, pad_id=self.pad_id, return_entropy=grad,
                                  chunk_tokens=self.chunk_tokens)

    def reference_logprobs(self, group: Group) -> torch.Tensor:
        """(n, T) logprobs of the group's completions under the frozen starting model (learner.kl_coef),
        at the sampling temperature and with the attention kernels the policy uses for this group."""
        want = self.engine.module.config._attn_implementation
        if self.reference.config._attn_implementation != want:
            self.reference.set_attn_implementation(want)
        with torch.no_grad(), self._compute():
            return self._logprobs(self.reference, group.prompt, group.completions, temperature=self.temperature,
                                  pad_id=self.pad_id, return_entropy=False, chunk_tokens=self.chunk_tokens)[0]

    def step_parts(self, light: pa.Table, refs: list, ids: list[int], step_seed: int = 0,
                   train_step: int | None = None, padding: int = 0) -> tuple[dict[str, float] | None, list[int]]:
        """step() on this rank's rows, fetched here from the object store (rollouts.Rollouts: `light`
        names each row's part and place, `refs` are those parts, `ids` their numbers in the step).
        Every rank first learns whether all fetched their parts: if a part was lost with its node,
        no rank trains and each returns (None, the ids it lost); else (metrics, [])."""
        table, lost = fetch_rows(light, refs, ids)
        if not self._all_ranks(not lost):
            return None, lost
        return self.step(table, step_seed, train_step, padding=padding), []

    def step(self, table: pa.Table, step_seed: int = 0, train_step: int | None = None,
             padding: int = 0) -> dict[str, float]:
        """ppo_epochs x mini_batches updates on this rank's groups (`table`, of which the last `padding`
        groups are padding copies: LearnerGroup.step deals them); returns learner metrics.

        train_step (the driver's step; default: the steps this learner has taken) sets the LR:
        lr * schedule(train_step), however many updates the step makes. `learner/applied` counts
        the updates the optimizer really applied: 0 means the weights did not change.
        """
        start = time.perf_counter()
        self.train_steps = self.train_steps if train_step is None else train_step
        self._set_lr(self.train_steps)
        groups = self._padded(groups_from_table(table), padding)
        self.engine.module.eval()  # no dropout: ratios must be 1 on the first pass
        one_update = self.cfg.ppo_epochs == 1 and min(self.cfg.mini_batches, len(groups)) == 1
        self._gap = [0.0, 0]  # |learner - vLLM| logprob summed over completion tokens, token count
        for g in groups:
            rewards = torch.as_tensor(g.rewards_n).unsqueeze(0)  # (1, n)
            g.advantages_n = group_advantages(rewards, std_norm=self.cfg.adv_std_norm)[0]
            g.old_logprobs_nT = None
            g.parts = g.split(self.cfg.max_tokens_per_micro_batch)
        self._pair_parts(groups)
        for part in (p for g in groups for p in g.parts):
            if not one_update:
                lp, mask = self.logprobs(part, grad=False)
                part.old_logprobs_nT = lp.detach()
                self._add_gap(part, lp, mask)
        rng = np.random.default_rng(step_seed)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        attempted = applied = 0
        losses = []  # per applied update, to show the surrogate falling within a batch
        for _ in range(self.cfg.ppo_epochs):
            order = rng.permutation(len(groups)) if self.world_size == 1 else np.arange(len(groups))
            for mb in np.array_split(order, min(self.cfg.mini_batches, len(groups))):
                metrics, ok = self._update([groups[i] for i in mb])
                attempted += 1
                applied += int(ok)
                if ok:
                    losses.append(metrics["learner/loss"])
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
        out = {k: sums[k] / counts[k] for k in sums}
        if losses:
            out["learner/loss_first_update"], out["learner/loss_last_update"] = losses[0], losses[-1]
        gap = self._sum_ranks([self._gap[0], float(self._gap[1])])
        out.update(host_memory.release_if_short(self.cfg.trim_below_available))
        out.update({"learner/skipped": float(attempted - applied),
                    "learner/applied": float(applied), "learner/lr": self.lr(),
                    "learner/updates": float(self.updates),
                    "rollout/logprob_gap": gap[0] / max(gap[1], 1.0),
                    "time/learner_compute_s": time.perf_counter() - start})
        self.train_steps += 1
        return out

    def _set_lr(self, train_step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * self.schedule(train_step)

    @staticmethod
    def _behaviour(g: Group, like: torch.Tensor) -> torch.Tensor:
        """The group's behaviour logprobs (what vLLM sampled with), padded like the learner's (n, T)."""
        if g.behaviour_nT is None or g.behaviour_nT.shape != like.shape:
            mu = torch.zeros_like(like)
            for i, row in enumerate(g.rollout_logprobs):
                mu[i, :len(row)] = torch.tensor(row, dtype=like.dtype)
            g.behaviour_nT = mu
        return g.behaviour_nT

    def _add_gap(self, g: Group, lp: torch.Tensor, mask: torch.Tensor) -> None:
        if g.padding:
            return
        self._gap[0] += float(((lp.detach() - self._behaviour(g, lp)).abs() * mask).sum())
        self._gap[1] += int(mask.sum())

    def _update(self, groups: list[Group]) -> tuple[dict[str, float], bool]:
        """One optimizer update on this rank's share of a mini-batch. The loss is the mean over every
        completion token of the mini-batch on all ranks (padding groups add none). Every group is
        back-propagated, even a non-finite one (ranks must run the same collectives); a non-finite
        gradient is then caught by our check (ZeRO-0) or DeepSpeed's (ZeRO-1/2/3), and the update
        is skipped with NaN where a metric has no value. Returns (metrics, applied)."""
        global_tokens = self._sum_ranks([float(sum(g.tokens for g in groups))])[0]
        # DeepSpeed averages gradients over ranks, so each rank divides by global_tokens / world_size.
        token_count = max(global_tokens, 1.0) / self.world_size
        merged: dict[str, float] = {"learner/is_nonfinite": 0.0}
        if self.reference is not None:
            merged["learner/ref_kl"] = 0.0   # every rank sums the same keys, one with only padding too
        for g in (part for group in groups for part in group.parts):
            lp, mask, entropy = self.logprobs(g, grad=True)
            old = g.old_logprobs_nT
            if old is None:
                old = lp.detach()
                self._add_gap(g, lp, mask)
            # Truncated importance weights pi_old / mu against the policy that generated the tokens.
            is_weights, is_metrics = behaviour_weights(old, self._behaviour(g, lp), mask, self.cfg.is_cap)
            # advantages are computed on the host from rewards; the loss is on the model's device
            out = clipped_surrogate(lp, old, g.advantages_n.to(lp.device), mask,
                                    eps_low=self.cfg.eps_low, eps_high=self.cfg.eps_high,
                                    dual_clip=self.cfg.dual_clip, token_count=token_count,
                                    is_weights_BT=is_weights)
            loss = out.loss
            weight = g.tokens / max(global_tokens, 1.0)
            if self.reference is not None and not g.padding:   # a padding copy adds no tokens, so no KL
                kl_loss, kl_mean = reference_kl(lp, self.reference_logprobs(g).to(lp.dtype), mask, token_count)
                loss = loss + self.cfg.kl_coef * kl_loss
                merged["learner/ref_kl"] += weight * kl_mean
            self.engine.backward(loss)
            merged["learner/loss"] = merged.get("learner/loss", 0.0) + float(loss.detach()) / self.world_size
            merged["learner/entropy"] = merged.get("learner/entropy", 0.0) + weight * float(entropy)
            nonfinite = is_metrics.pop("learner/is_nonfinite")
            merged["learner/is_nonfinite"] += 0.0 if g.padding else nonfinite   # a count, not a mean
            for k, v in {**out.metrics, **is_metrics}.items():
                merged[k] = merged.get(k, 0.0) + weight * v
        names = sorted(merged)
        merged = dict(zip(names, self._sum_ranks([merged[k] for k in names])))
        applied, merged["learner/grad_norm"] = self._apply()
        if not applied:
            self.nonfinite_in_row += 1
            return {**merged, "learner/nonfinite": 1.0}, False
        self.nonfinite_in_row = 0
        return merged, True

    def _apply(self) -> tuple[bool, float]:
        """The optimizer step on the accumulated gradients, unless any is non-finite. Returns whether
        it was applied and the gradient norm before clipping (NaN when skipped)."""
        zero0_norm = float("nan")
        if self.cfg.zero_stage == 0:  # plain fp32 ZeRO-0 applies whatever it is given: check first
            if self.world_size > 1:  # the averaged gradient, so the check and norm are the update's
                self.engine.buffered_allreduce_fallback()
            zero0_norm = self._local_grad_norm()
            if not self._all_ranks(math.isfinite(zero0_norm)):
                self.engine.zero_grad()
                self.optimizer.zero_grad()
                return False, float("nan")
        self.engine.step()
        if not self.engine.was_step_applied():  # ZeRO-1/2/3 found an overflow and skipped the step
            return False, float("nan")
        self.updates += 1
        norm = self.engine.get_global_grad_norm()  # unset on ZeRO-0: its clipping does not record it
        return True, float(norm) if norm is not None else zero0_norm

    def _local_grad_norm(self) -> float:
        """L2 norm of the gradients held on this rank, before clipping (NaN/inf when any is non-finite)."""
        squares = [p.grad.detach().float().pow(2).sum() for p in self.engine.module.parameters()
                   if p.grad is not None]
        return math.sqrt(float(sum(squares))) if squares else 0.0

    def _all_ranks(self, flag: bool) -> bool:
        return self._sum_ranks([0.0 if flag else 1.0])[0] == 0.0

    def _sum_ranks(self, values: list[float], op=torch.distributed.ReduceOp.SUM) -> list[float]:
        """Element-wise sum (or `op`) over ranks (NaN propagates); the identity with one rank."""
        if self.world_size == 1:
            return list(values)
        device = "cuda" if self.backend == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=op)
        return t.tolist()

    # ---- state ---------------------------------------------------------------------------------
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def nonfinite_streak(self) -> int:
        return self.nonfinite_in_row

    def named_weights(self, dtype: str = "float32") -> list[tuple[str, np.ndarray]] | None:
        """Full weights (HF names, numpy arrays in `dtype` as learner.sync.to_wire writes them) on
        rank 0; None on other ranks. Every rank must call it (ZeRO-3 gathers the partitions)."""
        import deepspeed

        from toolexpander.learner.sync import to_wire, wire_dtype

        params = list(self.engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=self.cfg.zero_stage == 3):
            if self.rank != 0:
                return None
            gathered = self.cfg.zero_stage == 3  # ZeRO-3's gathered data is freed on leaving the block
            # numpy views of the parameters (float32) or of reused conversion buffers (bf16): Ray
            # serialises each array's own bytes (a torch view would pickle its whole flat ZeRO buffer)
            # straight into the object store when this call returns, before the next step changes them.
            out = []
            for name, p in params:
                buffer = None
                if p.dtype != wire_dtype(dtype):
                    buffer = self._wire_buffers.get(name)
                    if buffer is None or buffer.shape != p.shape:
                        buffer = self._wire_buffers[name] = torch.empty(p.shape, dtype=wire_dtype(dtype))
                a = to_wire(p, dtype, out=buffer)
                out.append((name, np.array(a, copy=True) if gathered and buffer is None else a))
            return out

    # ---- weight push over a broadcast group (learner/sync.py) -----------------------------------
    def weight_meta(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, tuple(getattr(p, "ds_shape", p.shape)))
                for name, p in self.engine.module.named_parameters()]

    def sync_endpoint(self) -> tuple[str, int]:
        """Where this rank hosts the weight group's rendezvous: its node's address and a port it already
        listens on (init_weight_group serves the gloo store on that socket). NCCL's group (vLLM's
        StatelessProcessGroup) binds its own store: the socket is closed first, and the port is free
        only very likely."""
        from toolexpander.learner.dist import rendezvous_listener

        self._sync_listener, host, port = rendezvous_listener()
        return host, port

    def init_weight_group(self, backend: str, host: str, port: int, world_size: int, bucket_bytes: int,
                          dtype: str = "float32", timeout_s: float = 120.0) -> None:
        """Rank 0 joins the weight group as its root; the buckets carry `dtype` (the engine's)."""
        if self.rank != 0:
            return
        from toolexpander.learner.sync import open_group, plan_buckets

        self._sync_device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self._sync_dtype = dtype
        self._sync_buckets = plan_buckets(self.weight_meta(), bucket_bytes, dtype)
        self._sync_flats = None   # the buckets' flat buffers, allocated by the first push
        listener, self._sync_listener = self._sync_listener, None
        if backend != "gloo" and listener is not None:
            listener.close()
            listener = None
        self._sync_broadcast = open_group(backend, host, port, 0, world_size, self._sync_device, timeout_s,
                                          listener=listener)

    def broadcast_weights(self) -> float:
        """Every rank calls it (ZeRO-3 gathers); rank 0 sends the buckets. Returns seconds."""
        import deepspeed

        from toolexpander.learner.sync import send

        start = time.perf_counter()
        params = [p for _, p in self.engine.module.named_parameters()]
        with deepspeed.zero.GatheredParameters(params, enabled=self.cfg.zero_stage == 3):
            if self.rank == 0:
                self._sync_flats = send(self._sync_broadcast, params, self._sync_buckets, self._sync_device,
                                        self._sync_dtype, self._sync_flats)
        return time.perf_counter() - start

    def param_digest(self) -> str:
        """A hash of this rank's full parameters (ranks of a data-parallel group must agree)."""
        import hashlib

        import deepspeed

        params = list(self.engine.module.parameters())
        digest = hashlib.sha256()
        with deepspeed.zero.GatheredParameters(params, enabled=self.cfg.zero_stage == 3):
            for p in params:
                digest.update(p.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def save(self, location: str, client_state: dict) -> None:
        """DeepSpeed's checkpoint at `location` (a path or a storage URI): each rank writes the files it
        holds (rank 0 the module states, every rank its ZeRO shard); on a URI from a local staging
        directory it then uploads."""
        from toolexpander.storage import writable

        with writable(location) as directory:
            self.engine.save_checkpoint(str(directory), tag="state", client_state={
                **client_state, "updates": self.updates, "train_steps": self.train_steps})

    def load(self, location: str) -> dict:
        from toolexpander.storage import readable

        with readable(location) as directory:
            _, client_state = self.engine.load_checkpoint(str(directory), tag="state", load_optimizer_states=True,
                                                          load_lr_scheduler_states=True)
        if client_state is None:
            raise RuntimeError(f"{location}: DeepSpeed found no checkpoint to load")
        self.updates = int(client_state.get("updates", self.updates))
        self.train_steps = int(client_state.get("train_steps", self.train_steps))
        self._set_lr(self.train_steps)
        return client_state

    def export_hf(self, location: str, tokenizer_dir: str) -> None:
        """save_pretrained (safetensors) + tokenizer at `location` (a path or a storage URI); rank 0
        writes, every rank must call (ZeRO-3)."""
        from transformers import AutoTokenizer

        from toolexpander.storage import writable

        weights = self.named_weights()
        if weights is None:
            return
        state = {name: torch.from_numpy(w) for name, w in weights}
        with writable(location) as directory:
            self.engine.module.save_pretrained(directory, state_dict=state, safe_serialization=True)
            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)

    # ---- supervised warm start (toolexpander sft) -----------------------------------------------
    def sft_step(self, examples: list[tuple[list[int], list[int]]], step: int) -> dict[str, float]:
        """One optimizer update of cross-entropy on the answer tokens of (prompt ids, answer ids)
        examples; the whole batch goes to every rank, each trains on its share. The loss is the mean
        over every answer token of the batch on all ranks; the LR is lr * schedule(step)."""
        start = time.perf_counter()
        self._set_lr(step)
        lr = self.lr()
        # This rank's share, weight 1; padding copies of the last example weigh 0.
        mine, pad = self._share(examples)
        share = [(p, a, 1.0) for p, a in mine] + [(*examples[-1], 0.0)] * pad
        tokens = sum(len(a) for _, a in examples)
        # DeepSpeed averages gradients over ranks, so each rank divides its sum by tokens / world_size.
        scale = self.world_size / max(tokens, 1)
        self.engine.module.eval()  # no dropout, as in the GRPO step
        nll = 0.0
        for prompt, answer, weight in share:
            with self._compute():
                logprobs_1T, _ = completion_logprobs_plain(self.engine.module, prompt, [answer], temperature=1.0,
                                                           pad_id=self.pad_id, chunk_tokens=self.chunk_tokens)
            nll_sum = -logprobs_1T.sum()
            self.engine.backward(nll_sum * (weight * scale))
            nll += weight * float(nll_sum.detach())
        nll = self._sum_ranks([nll])[0]
        out = {"sft/loss": nll / max(tokens, 1), "sft/tokens": float(tokens), "learner/lr": lr,
               "sft/input_tokens": float(sum(len(p) + len(a) for p, a in examples))}
        applied, out["learner/grad_norm"] = self._apply()
        out.update({"sft/skipped": float(not applied), "time/learner_compute_s": time.perf_counter() - start})
        return out

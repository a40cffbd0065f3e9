"""Peak memory of one learner forward + backward with a 152k vocabulary: the LM head on the whole group
at once vs in chunks (learner.logit_chunk_mb), on a tiny random Qwen2-shaped model (Qwen2.5's
vocabulary, 2 small layers, so that the logits dominate), bf16 autocast as in training.

    python -m bench.learner_memory                       # n=8 x 512 completion tokens, prompt 256
    python -m bench.learner_memory --n 16 --completion-len 1024

    python -m bench.learner_memory --device cuda --n 16 --completion-len 1024   # on a GPU: also bench/GPU.md

Each setting runs in a fresh process (ru_maxrss is a process's high-water mark): peak activation
memory = peak RSS during the step minus RSS before it (model, optimizer-free, inputs built). With
--device cuda the same step runs on the GPU under CUDA bf16 autocast, and peak activation memory is
torch.cuda.max_memory_allocated during the step minus the memory allocated before it.
"one chunk" puts every completion token in one head call, which is what the learner did before
chunking (it also scored padding). Goal (issue #15): peak activation memory at most 2x one
micro-batch's bf16 logits (n x completion tokens x vocab x 2 bytes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from bench.common import REPO, goal, gpu_name, gpu_page, table, write

GOAL_X = 2.0
VOCAB = 151936


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def one(args) -> dict:
    import torch
    import transformers

    from toolexpander.learner.shared_prompt import completion_logprobs_shared

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    on_gpu = args.device == "cuda"
    cfg = transformers.Qwen2Config(vocab_size=args.vocab, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   head_dim=32, max_position_embeddings=4096, tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(cfg).float().eval().to(args.device)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=g).tolist()
    completions = [torch.randint(0, args.vocab, (args.completion_len,), generator=g).tolist() for _ in range(args.n)]
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**30 if on_gpu else rss_gb()
    start = time.perf_counter()
    with torch.autocast(args.device, dtype=torch.bfloat16):
        lp, mask, _ = completion_logprobs_shared(model, prompt, completions, return_entropy=True,
                                                 chunk_tokens=args.chunk)
    lp.sum().backward()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if on_gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"chunk": args.chunk, "peak_activation_gb": peak - before, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--completion-len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the step on the GPU, peak from torch.cuda; also writes bench/GPU.md")
    ap.add_argument("--chunks", type=int, nargs="+", default=[2048], help="more chunk sizes (tokens) to compare")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # a single setting, as JSON
    ap.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args)))
        return
    from toolexpander.config import LearnerConfig
    from toolexpander.learner.learner import logit_chunk_tokens

    tokens = args.n * args.completion_len
    mb = LearnerConfig().logit_chunk_mb
    default_chunk = logit_chunk_tokens(mb, args.vocab)
    rows = []
    settings = [("one chunk (before)", tokens), (f"learner default (logit_chunk_mb {mb})", default_chunk),
                *[(f"chunks of {c}", c) for c in args.chunks]]
    for label, chunk in settings:
        cmd = [sys.executable, "-m", "bench.learner_memory", "--one", "--chunk", str(chunk), "--n", str(args.n),
               "--prompt-len", str(args.prompt_len), "--completion-len", str(args.completion_len),
               "--vocab", str(args.vocab), "--threads", str(args.threads), "--device", args.device]
        out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
        rows.append({"what": label, **json.loads(out.stdout.strip().splitlines()[-1])})
    bf16_logits_gb = tokens * args.vocab * 2 / 2**30
    for r in rows:
        r["x_bf16_logits"] = r["peak_activation_gb"] / bf16_logits_gb
    default = rows[1]
    where = (f"on the GPU ({gpu_name()}), CUDA bf16 autocast" if args.device == "cuda"
             else f"bf16 autocast, {args.threads} threads")
    text = "\n".join([
        f"learner memory: tiny random Qwen2 (vocab {args.vocab}, 2 layers, hidden 64), shared prompt {args.prompt_len} "
        f"+ n={args.n} x {args.completion_len} completion tokens, forward + backward, {where}; "
        f"one micro-batch's bf16 logits = {bf16_logits_gb:.2f} GiB",
        table(rows, [("what", "LM head", ""), ("chunk", "chunk tokens", "d"),
                     ("peak_activation_gb", "peak activation GiB", ".2f"),
                     ("x_bf16_logits", "x bf16 logits", ".2f"), ("seconds", "fwd+bwd s", ".1f")]),
        f"learner default (chunks of {default['chunk']}): {default['x_bf16_logits']:.2f}x one micro-batch's bf16 logits "
        f"(goal <= {GOAL_X:g}x)",
    ])
    name = "learner_memory" if args.device == "cpu" else "learner_memory_cuda"
    path = write(name, {"args": vars(args), "rows": rows, "bf16_logits_gb": bf16_logits_gb,
                        "gpu": gpu_name() if args.device == "cuda" else None,
                        "goals": [goal("peak activation / one micro-batch's bf16 logits, learner default",
                                       default["x_bf16_logits"], GOAL_X, False, "x")]}, text)
    if args.device == "cuda":
        gpu_page("learner_memory", path)


if __name__ == "__main__":
    main()

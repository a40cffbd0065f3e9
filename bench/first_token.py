"""Why a model collapses under greedy decoding: the probability of the first word of its think block.

The training format starts every answer with "<think>The request needs ..." (a tool call) or
"<think>No tool call is needed here ..." (none). A small shift between those two first tokens flips
every greedy answer at once while sampled rollouts barely change. For each model directory, over the
ToolRL test prompts (the evaluation's own prompts, no demos), this prints the mean P("The") and P("No")
after "<think>", split by whether the question needs a tool call, and the share of prompts where greedy
decoding would pick "No".

    python -m bench.first_token models/smollm2-135m-learn-sft runs/learn-<stamp>/arm_d/hf
"""

from __future__ import annotations

import argparse

import numpy as np


def first_word_probs(model_dir: str) -> dict[bool, np.ndarray]:
    """{needs a tool call: array of (P("The"), P("No")) per ToolRL test prompt}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolexpander.eval.runner import load_items
    from toolexpander.prompt import prompt_ids

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    think = tok.encode("<think>", add_special_tokens=False)
    the, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("The", "No"))
    out: dict[bool, list] = {True: [], False: []}
    for item in load_items("toolrl"):
        ids = prompt_ids(tok, item.task) + think
        with torch.no_grad():
            p = torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        out[bool(item.task.answer.tool_calls)].append((p[the].item(), p[no].item()))
    return {k: np.array(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model directories (HF format)")
    args = ap.parse_args(argv)
    print("| model | questions | n | P(The) | P(No) | greedy picks No |")
    print("|---|---|---|---|---|---|")
    for model_dir in args.models:
        for needs, a in first_word_probs(model_dir).items():
            print(f"| {model_dir} | {'tool call' if needs else 'no call'} | {len(a)} | {a[:, 0].mean():.3f} | "
                  f"{a[:, 1].mean():.3f} | {(a[:, 1] > a[:, 0]).mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Teacher sampling throughput by batch size and precision, and what bf16 does to samples.

    python benchmarks/sampling_throughput.py [--prompts 32] [--batch-sizes 1,8,16,32]
                                             [--precisions fp32,bf16] [--max-new-tokens 64]

Prints tokens/s for each (precision, batch size), with top-20 log-probs recorded as in
stage 01 (greedy). With both precisions, it also compares the bf16 samples with the
float32 ones: the share of greedy tokens that are identical (position by position),
the share of answers identical throughout, and the mean absolute difference of the
top-k log-probs of the tokens both top-k lists hold, over the positions before the
two answers first differ.
"""

import argparse
import time

import numpy as np

from distill.data import encode_chat, load_prompts, split_prompts
from distill.generation import generate_all
from distill.models import load_model
from distill.precision import weights_dtype


def sample(model, tokenizer, prompt_ids, batch_size, max_new_tokens):
    generate_all(model, tokenizer, prompt_ids[:2], 2, max_new_tokens=4)  # warm-up
    start = time.perf_counter()
    outputs = generate_all(model, tokenizer, prompt_ids, batch_size,
                           max_new_tokens=max_new_tokens, top_k_logprobs=20)
    return outputs, time.perf_counter() - start


def compare(reference: list[dict], other: list[dict]) -> dict:
    """How far `other`'s greedy samples are from `reference`'s."""
    same, total, whole, differences = 0, 0, 0, []
    for a, b in zip(reference, other):
        ids_a, ids_b = a["completion_ids"], b["completion_ids"]
        n = min(len(ids_a), len(ids_b))
        equal = [x == y for x, y in zip(ids_a[:n], ids_b[:n])]
        same += sum(equal)
        total += max(len(ids_a), len(ids_b))
        whole += ids_a == ids_b
        prefix = equal.index(False) if False in equal else n
        for t in range(prefix):  # same context: the distributions are comparable
            mine = dict(zip(a["topk_ids"][t], a["topk_logprobs"][t]))
            theirs = dict(zip(b["topk_ids"][t], b["topk_logprobs"][t]))
            differences += [abs(mine[v] - theirs[v]) for v in mine.keys() & theirs.keys()]
    return {"identical_tokens": same / total, "identical_answers": whole / len(reference),
            "topk_logprob_mad": float(np.mean(differences))}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,16,32")
    parser.add_argument("--precisions", default="fp32")
    args = parser.parse_args()

    train, _ = split_prompts(load_prompts(), 0, seed=0, train_size=args.prompts)
    rows, largest = [], {}
    for precision in args.precisions.split(","):
        model, tokenizer = load_model(args.teacher, dtype=weights_dtype(precision))
        prompt_ids = [encode_chat(tokenizer, p["messages"]) for p in train]
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            outputs, seconds = sample(model, tokenizer, prompt_ids, batch_size,
                                      args.max_new_tokens)
            tokens = sum(len(o["completion_ids"]) for o in outputs)
            rows.append((precision, batch_size, tokens, seconds, tokens / seconds))
            largest[precision] = outputs
    base = rows[0][4]
    print(f"\n{len(train)} prompts, max_new_tokens={args.max_new_tokens}, top-20 log-probs, "
          "greedy")
    print(f"{'precision':<9} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} "
          f"{'vs first':>9}")
    for precision, batch_size, tokens, seconds, rate in rows:
        print(f"{precision:<9} {batch_size:>5} {tokens:>7} {seconds:>8.1f} {rate:>9.1f} "
              f"{rate / base:>8.2f}x")
    if "fp32" in largest and "bf16" in largest:
        print("bf16 samples against fp32 (largest batch size): " + ", ".join(
            f"{k} {v:.4f}" for k, v in compare(largest["fp32"], largest["bf16"]).items()))


if __name__ == "__main__":
    main()

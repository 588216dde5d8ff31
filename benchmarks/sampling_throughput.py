"""Teacher sampling throughput: one prompt at a time vs batched, same prompts.

    python benchmarks/sampling_throughput.py [--prompts 32] [--max-new-tokens 64]

Prints a table of tokens/s per batch size (top-k log-probs recorded, as in 01).
"""

import argparse
import time

from distill.data import encode_chat, load_prompts, split_prompts
from distill.generation import generate_all
from distill.models import load_model


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,16,32")
    args = parser.parse_args()

    model, tokenizer = load_model(args.teacher)
    train, _ = split_prompts(load_prompts(), 0, seed=0, train_size=args.prompts)
    prompt_ids = [encode_chat(tokenizer, p["messages"]) for p in train]
    generate_all(model, tokenizer, prompt_ids[:2], 2, max_new_tokens=4)  # warm-up

    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        start = time.perf_counter()
        outputs = generate_all(model, tokenizer, prompt_ids, batch_size,
                               max_new_tokens=args.max_new_tokens, top_k_logprobs=20)
        seconds = time.perf_counter() - start
        tokens = sum(len(o["completion_ids"]) for o in outputs)
        rows.append((batch_size, tokens, seconds, tokens / seconds))
    base = rows[0][3]
    print(f"\n{len(prompt_ids)} prompts, max_new_tokens={args.max_new_tokens}, top-20 log-probs")
    print(f"{'batch':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'speed-up':>9}")
    for batch_size, tokens, seconds, rate in rows:
        print(f"{batch_size:>5} {tokens:>7} {seconds:>8.1f} {rate:>9.1f} {rate / base:>8.1f}x")


if __name__ == "__main__":
    main()

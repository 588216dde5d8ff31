"""Teacher sampling throughput by batch size and precision, and what bf16 does to samples.

    python benchmarks/sampling_throughput.py [--prompts 32] [--batch-sizes 1,8,16,32]
                                             [--precisions fp32,bf16] [--max-new-tokens 64]
                                             [--baseline] [--profile]

Prints tokens/s for each (precision, batch size), with top-20 log-probs recorded as in
stage 01 (greedy). With both precisions, it also compares the bf16 samples with the
float32 ones: the share of greedy tokens that are identical (position by position),
the share of answers identical throughout, and the mean absolute difference of the
top-k log-probs of the tokens both top-k lists hold, over the positions before the
two answers first differ. With --baseline it first runs transformers' own
`model.generate` in float32 at the largest batch size (the sampler before distill had
a decode loop of its own, with the top-20 taken from the logits it returns), and
compares distill's float32 samples with it: greedy float32 samples must be unchanged.
With --profile, the last (precision, batch size) is also run under torch.profiler and
the operators that took the most time are printed.
"""

import argparse
import time

import numpy as np
import torch

from distill.core.precision import weights_dtype
from distill.lm.data import encode_chat, load_prompts, split_prompts
from distill.lm.generation import generate_all
from distill.lm.models import load_model


def sample(model, tokenizer, prompt_ids, batch_size, max_new_tokens):
    generate_all(model, tokenizer, prompt_ids[:2], 2, max_new_tokens=4)  # warm-up
    start = time.perf_counter()
    outputs = generate_all(model, tokenizer, prompt_ids, batch_size,
                           max_new_tokens=max_new_tokens, top_k_logprobs=20)
    return outputs, time.perf_counter() - start


@torch.inference_mode()
def transformers_generate(model, tokenizer, prompt_ids, batch_size, max_new_tokens):
    """Greedy samples with top-20 log-probs by `model.generate`, in distill's format."""
    from distill.lm.generation import stop_token_ids

    stops, outputs = stop_token_ids(tokenizer, model.generation_config), []
    start = time.perf_counter()
    for first in range(0, len(prompt_ids), batch_size):
        batch = tokenizer.pad({"input_ids": prompt_ids[first:first + batch_size]},
                              padding=True, return_tensors="pt")
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                             output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[:, batch["input_ids"].shape[1]:].tolist()
        top = [torch.log_softmax(step.float(), -1).topk(20) for step in out.logits]
        for row, ids in enumerate(tokens):
            length = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
            outputs.append({"completion_ids": ids[:length],
                            "topk_ids": [t.indices[row].tolist() for t in top[:length]],
                            "topk_logprobs": [t.values[row].tolist() for t in top[:length]]})
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
    parser.add_argument("--profile", action="store_true",
                        help="print where the time goes for the last configuration")
    parser.add_argument("--baseline", action="store_true",
                        help="also run transformers' model.generate (float32) and compare")
    args = parser.parse_args()

    train, _ = split_prompts(load_prompts(), 0, seed=0, train_size=args.prompts)
    rows, largest = [], {}
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.baseline:
        model, tokenizer = load_model(args.teacher)
        prompt_ids = [encode_chat(tokenizer, p["messages"]) for p in train]
        transformers_generate(model, tokenizer, prompt_ids[:2], 2, 4)  # warm-up
        outputs, seconds = transformers_generate(model, tokenizer, prompt_ids,
                                                 max(batch_sizes), args.max_new_tokens)
        tokens = sum(len(o["completion_ids"]) for o in outputs)
        rows.append(("fp32 (transformers generate)", max(batch_sizes), tokens, seconds,
                     tokens / seconds))
        largest["baseline"] = outputs
    for precision in args.precisions.split(","):
        model, tokenizer = load_model(args.teacher, dtype=weights_dtype(precision))
        prompt_ids = [encode_chat(tokenizer, p["messages"]) for p in train]
        for batch_size in batch_sizes:
            outputs, seconds = sample(model, tokenizer, prompt_ids, batch_size,
                                      args.max_new_tokens)
            tokens = sum(len(o["completion_ids"]) for o in outputs)
            rows.append((precision, batch_size, tokens, seconds, tokens / seconds))
            largest[precision] = outputs
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            sample(model, tokenizer, prompt_ids, batch_sizes[-1], args.max_new_tokens)
        print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    base = rows[0][4]
    print(f"\n{len(train)} prompts, max_new_tokens={args.max_new_tokens}, top-20 log-probs, "
          "greedy")
    print(f"{'precision':<28} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} "
          f"{'vs first':>9}")
    for precision, batch_size, tokens, seconds, rate in rows:
        print(f"{precision:<28} {batch_size:>5} {tokens:>7} {seconds:>8.1f} {rate:>9.1f} "
              f"{rate / base:>8.2f}x")
    if "baseline" in largest and "fp32" in largest:
        print("distill fp32 samples against transformers generate: " + ", ".join(
            f"{k} {v:.4f}" for k, v in compare(largest["baseline"], largest["fp32"]).items()))
    if "fp32" in largest and "bf16" in largest:
        print("bf16 samples against fp32 (largest batch size): " + ", ".join(
            f"{k} {v:.4f}" for k, v in compare(largest["fp32"], largest["bf16"]).items()))


if __name__ == "__main__":
    main()

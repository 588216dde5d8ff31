"""Training throughput and peak memory: offline top-k vs online full-logit
distillation, float32 vs bfloat16 autocast, LM head chunked with the loss or whole,
same samples and student.

    python benchmarks/training_throughput.py [--steps 6] [--batch-size 8]
        [--configs topk:fp32,online:fp32,topk:bf16]   # source:autocast[:whole]

A third field `whole` projects the LM head over every position at once (as before
the head was chunked with the loss). Each configuration runs in its own process, so
peak memory (RSS on CPU) is its own. tokens/s counts completion (loss) tokens and
skips the first step (warm-up).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def sample(run_dir: Path, prompts: int):
    from distill.lm.data import load_prompts, split_prompts
    from distill.lm.models import load_model
    from distill.teachers.local import sample_teacher

    model, tokenizer = load_model("smollm2-135m-instruct")
    train, _ = split_prompts(load_prompts(), 0, seed=0, train_size=prompts)
    sample_teacher(model, tokenizer, train, [], run_dir, seed=0, shard_size=64, batch_size=32,
                   max_new_tokens=64, do_sample=False, temperature=1.0, top_p=1.0,
                   top_k_logprobs=20)


def train_once(run_dir: Path, source: str, precision: str, steps: int, batch_size: int,
               head: str) -> dict:
    from distill.core.params import StudentTrainingParams
    from distill.lm.models import load_model, prune_layers
    from distill.lm.samples import build_examples, read_samples
    from distill.training import batch_loss, train

    if head == "whole":
        batch_loss.CHUNK_HEAD = False
    teacher, tokenizer = load_model("smollm2-135m-instruct")
    student = prune_layers(teacher)
    if source == "topk":
        teacher = None
    examples = build_examples(read_samples(run_dir))
    with tempfile.TemporaryDirectory() as scratch:
        config = StudentTrainingParams(
            epochs=1, max_steps=steps, batch_size=batch_size, grad_accum=1, lr=1e-4, warmup_steps=1,
            weight_decay=0.0, max_grad_norm=1.0, mixed_precision=precision,
            checkpoint_every=10**9, ce_weight=0.0, kd_weight=1.0, temperature=1.0,
            kd_source=source)
        log = train(student, examples, Path(scratch), config, seed=0, teacher=teacher,
                    tokenizer=tokenizer)
    timed = log.iloc[1:]
    return {"source": source, "precision": precision, "head": head, "steps": len(timed),
            "tokens_per_second": timed["tokens"].sum() / timed["seconds"].sum(),
            "peak_memory_mb": float(log["peak_memory_mb"].max())}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--configs", default="topk:fp32,online:fp32,topk:bf16,online:bf16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", nargs=4, metavar=("RUN_DIR", "SOURCE", "PRECISION", "HEAD"))
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(train_once(Path(args.child[0]), args.child[1],
                                                args.child[2], args.steps, args.batch_size,
                                                args.child[3])))
        return
    with tempfile.TemporaryDirectory() as run_dir:
        sample(Path(run_dir), args.prompts)
        rows = []
        for config in args.configs.split(","):
            source, precision, *head = config.split(":")
            result = subprocess.run([sys.executable, __file__, "--steps", str(args.steps),
                                     "--batch-size", str(args.batch_size),
                                     "--child", run_dir, source, precision,
                                     head[0] if head else "chunked"],
                                    capture_output=True, text=True, check=True)
            line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
            rows.append(json.loads(line[len("RESULT "):]))
    print(f"\npruned 15-layer student, batch {args.batch_size}, {args.steps} steps "
          "(first one excluded)")
    print(f"{'teacher signal':<15} {'autocast':<9} {'LM head':<8} {'tokens/s':>9} {'peak MB':>8}")
    for row in rows:
        print(f"{row['source']:<15} {row['precision']:<9} {row['head']:<8} "
              f"{row['tokens_per_second']:>9.1f} {row['peak_memory_mb']:>8.0f}")


if __name__ == "__main__":
    main()

"""distill against TRL's GKDTrainer on the same work, side by side.

    pip install -e .[bench]          # TRL: a benchmark extra, never a runtime dependency
    python benchmarks/vs_trl.py [--steps 12] [--precisions fp32,bf16]

The work: the embedded teacher's answers to 64 chat prompts, the 15-layer pruned
student (every other layer), batch 4, sequences of at most 256 tokens, forward KL at
T = 1 (GKD with lmbda 0 and beta 0 is exactly that), 12 optimizer steps, AdamW at
lr 1e-4 (TRL with a constant schedule, distill with its cosine one: the last losses
are not comparable). Each configuration runs in its own process (peak RSS is its own):

- trl:            GKDTrainer; the teacher in memory, full logits at every position;
- distill online: distill.training.train with kd_source online (teacher in memory);
- distill topk:   distill's default, the teacher's top-20 log-probs recorded by stage 01.

Both trainers get the very same batches in the same order (TRL through a collator that
hands it distill's batches), so equal first losses for trl and distill online show
that they did the same work. tokens/s counts completion (loss) tokens and skips the
first step. The offline path moves the teacher's forward pass into stage 01, so the
end-to-end line adds that pass (teacher-forced top-k of the same answers) to distill
topk's training time.
"""

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEACHER = "smollm2-135m-instruct"
PROMPTS, BATCH, MAX_LENGTH, LR, TOP_K = 64, 4, 256, 1e-4, 20


def make_samples(run_dir: Path, precision: str) -> float:
    """The teacher's answers with their top-k (stage 01); returns the seconds that a
    teacher-forced top-k pass over those answers takes, the part of stage 01 that the
    offline path adds to the answers every method needs."""
    import torch

    from distill.lm.data import load_prompts, split_prompts
    from distill.lm.models import load_model
    from distill.lm.samples import build_examples, collate, read_samples
    from distill.teachers.local import sample_teacher

    model, tokenizer = load_model(TEACHER)
    train, _ = split_prompts(load_prompts(), 0, seed=0, train_size=PROMPTS)
    sample_teacher(model, tokenizer, train, [], run_dir, seed=0, shard_size=PROMPTS,
                   batch_size=32, max_new_tokens=64, do_sample=False, temperature=1.0,
                   top_p=1.0, top_k_logprobs=TOP_K)
    if precision == "bf16":
        model.to(torch.bfloat16)
    examples = build_examples(read_samples(run_dir))
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(examples), 16):
            batch = collate(examples[i:i + 16], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            torch.log_softmax(logits.float(), -1).topk(TOP_K, dim=-1)
    return time.perf_counter() - start


def ordered_examples(run_dir: Path):
    """The examples (at most MAX_LENGTH tokens) in the order distill's seeded first
    epoch visits them, so that a sequential sampler (TRL) sees the same batches."""
    from distill.lm.samples import build_examples, epoch_order, read_samples

    examples = [e for e in build_examples(read_samples(run_dir))
                if len(e.input_ids) <= MAX_LENGTH]
    order = epoch_order([e.source for e in examples], {}, 0, 0)
    return examples, [examples[i] for i in order]


def run_distill(run_dir: Path, source: str, precision: str, steps: int) -> dict:
    from distill.core.params import StudentTrainingParams
    from distill.core.precision import autocast_mode
    from distill.lm.models import load_model, prune_layers
    from distill.training import train

    teacher, tokenizer = load_model(TEACHER)
    student = prune_layers(teacher)
    if source == "topk":  # as notebook 02 does: the cached top-k stands in for the teacher
        del teacher
        gc.collect()
        teacher = None
    examples, _ = ordered_examples(run_dir)
    config = StudentTrainingParams(
        kd_source=source, kd_loss="forward_kl", kd_weight=1.0, ce_weight=0.0, epochs=1,
        max_steps=steps, batch_size=BATCH, lr=LR, warmup_steps=0, weight_decay=0.0,
        mixed_precision=autocast_mode(precision), checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as scratch:
        log = train(student, examples, Path(scratch), config, seed=0, teacher=teacher,
                    tokenizer=tokenizer)
    timed = log.iloc[1:]
    return {"tokens_per_second": timed["tokens"].sum() / timed["seconds"].sum(),
            "train_seconds": float(log["seconds"].sum()),
            "first_loss": float(log["loss"].iloc[0]), "last_loss": float(log["loss"].iloc[-1])}


def run_trl(run_dir: Path, precision: str, steps: int) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distill.lm.losses import IGNORE_INDEX
    from distill.lm.models import load_model, prune_layers
    from distill.lm.samples import collate

    teacher, tokenizer = load_model(TEACHER)
    student = prune_layers(teacher)
    _, in_order = ordered_examples(run_dir)
    tokens: list[int] = []

    def collator(rows):
        """distill's batch, as TRL reads it: labels of full length, -100 where no loss."""
        batch = collate([in_order[row["index"]] for row in rows], tokenizer.pad_token_id)
        labels = torch.cat([torch.full((len(rows), 1), IGNORE_INDEX), batch["labels"]], 1)
        tokens.append(int((batch["labels"] != IGNORE_INDEX).sum()))
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "labels": labels}

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds, self.losses = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    times = StepTimes()
    config = GKDConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=BATCH,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        lmbda=0.0, beta=0.0, temperature=1.0, max_length=MAX_LENGTH, seed=0, use_cpu=True,
        bf16=precision == "bf16", logging_steps=1, save_strategy="no", report_to=[],
        dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch_fused")
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config,
                         processing_class=tokenizer, data_collator=collator,
                         train_dataset=datasets.Dataset.from_dict(
                             {"index": list(range(len(in_order)))}),
                         callbacks=[times])
    # the batches in the order distill visits them (TRL would shuffle with its own seed)
    trainer._get_train_sampler = lambda *args: torch.utils.data.SequentialSampler(
        trainer.train_dataset)
    trainer.train()
    timed = slice(1, steps)
    return {"tokens_per_second": sum(tokens[timed]) / sum(times.seconds[timed]),
            "train_seconds": sum(times.seconds),
            "first_loss": times.losses[0], "last_loss": times.losses[-1]}


def child(run_dir: Path, method: str, precision: str, steps: int) -> dict:
    from distill.core.measure import peak_memory_mb

    result = run_trl(run_dir, precision, steps) if method == "trl" else \
        run_distill(run_dir, method.split()[-1], precision, steps)
    return {"method": method, "precision": precision, **result,
            "peak_rss_mb": peak_memory_mb()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--methods", default="trl,distill online,distill topk")
    parser.add_argument("--child", nargs=3, metavar=("RUN_DIR", "METHOD", "PRECISION"))
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(Path(args.child[0]), args.child[1], args.child[2],
                                           args.steps)))
        return
    rows, topk_pass = [], {}
    with tempfile.TemporaryDirectory() as run_dir:
        for precision in args.precisions.split(","):
            topk_pass[precision] = make_samples(Path(run_dir), precision)
            for method in args.methods.split(","):
                result = subprocess.run([sys.executable, __file__, "--steps", str(args.steps),
                                         "--child", run_dir, method, precision],
                                        capture_output=True, text=True)
                if result.returncode:
                    sys.exit(f"{method} {precision} failed:\n{result.stderr[-3000:]}")
                line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
                rows.append(json.loads(line[len("RESULT "):]))
                print(f"done: {method} {precision}", file=sys.stderr)
    print(f"\n{PROMPTS} chat answers of the embedded teacher, 15-layer pruned student, batch "
          f"{BATCH}, length <= {MAX_LENGTH}, forward KL, {args.steps} steps (first excluded)")
    print(f"{'configuration':<24} {'tokens/s':>9} {'peak MiB':>9} {'first loss':>11} "
          f"{'last loss':>10} {'vs trl speed':>13} {'vs trl memory':>14}")
    trl = {r["precision"]: r for r in rows if r["method"] == "trl"}
    for row in rows:
        base = trl.get(row["precision"])
        ratios = (f"{row['tokens_per_second'] / base['tokens_per_second']:>12.2f}x "
                  f"{row['peak_rss_mb'] / base['peak_rss_mb']:>13.2f}x") if base else ""
        print(f"{row['method'] + ', ' + row['precision']:<24} {row['tokens_per_second']:>9.1f} "
              f"{row['peak_rss_mb']:>9.0f} {row['first_loss']:>11.4f} {row['last_loss']:>10.4f} "
              f"{ratios}")
    print("\nend to end (the offline path's teacher pass moved into stage 01):")
    for precision, seconds in topk_pass.items():
        topk = next((r for r in rows if r["method"] == "distill topk"
                     and r["precision"] == precision), None)
        if topk and precision in trl:
            total = seconds + topk["train_seconds"]
            print(f"  {precision}: teacher top-k pass {seconds:.1f} s + distill topk training "
                  f"{topk['train_seconds']:.1f} s = {total:.1f} s, against trl training "
                  f"{trl[precision]['train_seconds']:.1f} s "
                  f"({trl[precision]['train_seconds'] / total:.2f}x)")


if __name__ == "__main__":
    main()

"""Cost of distillation across tokenizers: training tokens/s and peak memory of each
cross-tokenizer objective against same-tokenizer top-k KD, with the same student
(SmolLM2-135M-Instruct), batch size, precision and number of steps.

    python benchmarks/cross_tokenizer_cost.py CROSS_RUN SAME_RUN [--steps 10]
        [--arms sequence_kd,span_kl,mapped_kl,uld,hybrid,same_forward_kl]

CROSS_RUN: a run folder whose samples come from Gemma 3 270M (stage 01 of
params/cross/gemma-to-smollm2.yaml); SAME_RUN: one whose samples come from SmolLM2
itself (the main job's). The cross arms re-read CROSS_RUN's samples in SmolLM2's
tokens, aligned by bytes; `same_forward_kl` trains on SAME_RUN's samples as the
main job does (forward KL over the cached top-20, LM head chunked with the loss).
Each arm runs in its own process, so peak memory (RSS on CPU) is its own; tokens/s
counts completion (loss) tokens and skips the first step (warm-up).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ARMS = {"sequence_kd": {"ce_weight": 1.0, "kd_weight": 0.0},
        "span_kl": {"kd_loss": "span_kl"}, "mapped_kl": {"kd_loss": "mapped_kl"},
        "uld": {"kd_loss": "uld"}, "hybrid": {"kd_loss": "hybrid"},
        "same_forward_kl": {"kd_loss": "forward_kl"}}
STUDENT = "smollm2-135m-instruct"


def train_once(arm: str, cross_run: Path, same_run: Path, steps: int, batch_size: int,
               precision: str) -> dict:
    from distill.core.params import StudentTrainingParams
    from distill.lm.models import load_model
    from distill.training import train, transfer_set

    student, tokenizer = load_model(STUDENT)
    settings = {"ce_weight": 0.0, "kd_weight": 1.0, **ARMS[arm]}
    config = StudentTrainingParams(
        student=STUDENT, epochs=1, max_steps=steps, batch_size=batch_size, lr=1e-4,
        warmup_steps=1, mixed_precision=precision, checkpoint_every=10**9, validation_size=0,
        **settings)
    same = arm == "same_forward_kl"
    examples, _ = transfer_set(same_run if same else cross_run, config, seed=0,
                               tokenizer=None if same else tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        log = train(student, examples, Path(scratch), config, seed=0, tokenizer=tokenizer)
    timed = log.iloc[1:]
    return {"arm": arm, "precision": precision, "steps": len(timed),
            "tokens_per_second": round(timed["tokens"].sum() / timed["seconds"].sum(), 1),
            "peak_memory_mb": round(float(log["peak_memory_mb"].max()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cross_run", type=Path)
    parser.add_argument("same_run", type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(train_once(args.one, args.cross_run, args.same_run, args.steps,
                                    args.batch_size, args.precision)))
        return
    rows = []
    for arm in args.arms.split(","):
        output = subprocess.run(
            [sys.executable, __file__, str(args.cross_run), str(args.same_run), "--one", arm,
             "--steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--precision", args.precision], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

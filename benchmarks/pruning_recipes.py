"""Each pruning recipe at one parameter budget, before any training: how close to the
teacher does the cut leave the student?

    python benchmarks/pruning_recipes.py outputs/<run> [--student-size 0.6]

Calibrates on 32 of the run's training samples (as notebook 02 does), then prints, per
recipe: parameters, seconds to build, the KL to the teacher's cached top-k on the last 32
training samples (what `auto` scores), and the full-vocabulary KL and top-1 agreement on
the run's held-out samples and the perplexity on the shipped prose corpus (what notebook
03 reports).
"""

import argparse
import math
import time

from distill.evaluation import metrics as evaluation
from distill.lm import data, models, pruning, samples, validation


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--student-size", type=float, default=0.6)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    args = parser.parse_args()

    teacher, tokenizer = models.load_model(args.teacher)
    examples = samples.build_examples(samples.read_samples(args.run_dir, split="train"),
                                      need_topk=True)
    heldout = samples.read_samples(args.run_dir, split="heldout")
    calibration, scored = [e.input_ids for e in examples[:32]], examples[-32:]
    prose = samples.prose_examples(tokenizer, data.load_corpus(), 2048, 256)
    budget = pruning.budget_parameters(teacher, args.student_size)
    print(f"budget {budget:,} parameters ({args.student_size} of the teacher)")
    print(f"{'recipe':<10} {'parameters':>11} {'build s':>8} {'val KL':>7} "
          f"{'held-out KL':>12} {'top-1':>6} {'perplexity':>11}")
    for recipe in pruning.RECIPES:
        start = time.perf_counter()
        student = pruning.prune(teacher, recipe, calibration, budget)
        seconds = time.perf_counter() - start
        val = validation.topk_fidelity(student, scored, tokenizer.pad_token_id)
        fidelity = evaluation.teacher_forced_fidelity(
            teacher, {"s": student}, heldout, tokenizer.pad_token_id, 16)["s"]
        text = evaluation.teacher_forced_fidelity(teacher, {"s": student}, prose,
                                                  tokenizer.pad_token_id, 8)["s"]
        print(f"{recipe:<10} {models.count_parameters(student):>11,} {seconds:>8.1f} "
              f"{val['kl']:>7.3f} {fidelity['kl']:>12.3f} {fidelity['top1_agreement']:>6.3f} "
              f"{math.exp(text['nll']):>11.1f}")


if __name__ == "__main__":
    main()

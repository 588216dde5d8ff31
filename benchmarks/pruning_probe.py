"""Does a short training probe rank pruning recipes the way full training does, where the
KL at initialisation does not?

    python benchmarks/pruning_probe.py outputs/<run> [--speedup 2.0 | --student-size 0.6]
                                       [--probe-steps 30] [--trained RECIPE=RUN ...]

Cuts every recipe of `distill.lm.pruning` at one budget (a decode speed-up measured here,
or a parameter budget) from the run's teacher samples, as notebook 02 does, and prints
per recipe: layers, parameters, the validation KL at initialisation and after
`--probe-steps` optimizer steps of the run's own training settings (`probe_score`, what
`auto` with `prune_probe_steps` ranks by). `--trained recipe=RUN` adds the held-out KL of
that recipe's fully trained student (a finished run with the same budget), and the
script then asserts its premise (every ranked recipe has a trained run) and prints
whether each predictor ranks the recipes in the trained order.
"""

import argparse
import copy

import pandas as pd

from distill import training
from distill.core.params import load_params
from distill.core.runs import PARAMS, read_metrics
from distill.lm import models, pruning, speed, validation


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--speedup", type=float)
    budget.add_argument("--student-size", type=float, default=None)
    parser.add_argument("--probe-steps", type=int, default=30)
    parser.add_argument("--trained", action="append", default=[],
                        help="RECIPE=RUN_DIR: a full run of that recipe at this budget")
    args = parser.parse_args()

    params = load_params(f"{args.run_dir}/{PARAMS}")
    config, seed = params.student_training, params.run.seed
    teacher, tokenizer = models.load_model(params.run.teacher)
    examples, slices = training.transfer_set(args.run_dir, config, seed)
    scored = slices.get("val") or examples[:32]
    calibration = [e.input_ids for e in examples[:32]]
    if args.speedup:
        meter = speed.speedup_meter(copy.deepcopy(teacher), tokenizer,
                                    [e.input_ids[:e.prompt_length] for e in examples[:32]])
        cut = pruning.SpeedBudget(args.speedup, meter)
    else:
        cut = pruning.ParameterBudget(teacher, pruning.budget_parameters(
            teacher, args.student_size or config.student_size))
    print(f"budget: {cut}; probe: {args.probe_steps} steps of batch {config.batch_size}, "
          f"lr {config.lr}; {len(scored)} validation sequences")
    rows = {}
    for recipe in pruning.RECIPES:
        try:
            student = pruning.prune(teacher, recipe, calibration, cut)
        except pruning.PruningError as error:
            print(f"{recipe}: left out ({error})")
            continue
        rows[recipe] = {
            "layers": student.config.num_hidden_layers,
            "mlp": student.config.intermediate_size,
            "parameters_m": models.count_parameters(student) / 1e6,
            "kl_at_init": validation.topk_fidelity(student, scored, tokenizer.pad_token_id)["kl"],
            "kl_after_probe": training.probe_score(student, examples, scored, config,
                                                   args.probe_steps, seed=seed,
                                                   tokenizer=tokenizer)}
        print(recipe, {k: round(v, 3) for k, v in rows[recipe].items()}, flush=True)
    if getattr(cut, "measured", None):
        print("speed-up measured by layer count:",
              {k: round(v, 2) for k, v in cut.measured.items()})
    table = pd.DataFrame(rows).T
    trained = dict(item.split("=", 1) for item in args.trained)
    if trained:
        missing = set(table.index) - set(trained)
        assert not missing, f"premise: every recipe ranked needs its trained run; missing {missing}"
        table["trained_heldout_kl"] = [read_metrics(trained[r])["models"]["student"]["heldout_kl"]
                                       for r in table.index]
    print(table.round(3).to_string())
    if trained:
        truth = list(table["trained_heldout_kl"].sort_values().index)
        for predictor in ("kl_at_init", "kl_after_probe"):
            order = list(table[predictor].sort_values().index)
            print(f"{predictor}: ranks {order}; trained {truth}: "
                  f"{'same order' if order == truth else 'differs'}; best pick "
                  f"{'right' if order[0] == truth[0] else 'wrong'}")


if __name__ == "__main__":
    main()

"""Does a short training probe rank pruned students the way full training does, where
the KL at initialisation does not?

    python benchmarks/pruning_probe.py RUN [RUN ...] [--probe-steps 30]

Each RUN is a finished run whose student was pruned from the teacher (any recipe and
budget). The script asserts its premise: every run read the same teacher samples and
trained with the same settings but the pruning (recipe, student_size, student_speedup),
so the trained figures differ by the cut alone. Then, for each run's `student_init/` (the
exact student its training started from), it prints the validation KL at initialisation
and after `--probe-steps` optimizer steps of those settings (`training.probe_score`, what
`auto` with `prune_probe_steps` ranks by), beside the held-out KL the full training
reached (metrics.json), and says whether each predictor ranks the runs in the trained
order.
"""

import argparse
import dataclasses
import hashlib
from pathlib import Path

import pandas as pd

from distill import training
from distill.core.params import load_params
from distill.core.runs import PARAMS, SAMPLES, STUDENT_INIT, read_metrics
from distill.lm import models, validation

PRUNING_KEYS = {"prune_recipe", "student_size", "student_speedup"}


def samples_digest(run_dir: Path) -> str:
    digest = hashlib.sha256()
    for shard in sorted((run_dir / SAMPLES).glob("*.parquet")):
        digest.update(shard.read_bytes())
    return digest.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--probe-steps", type=int, default=30)
    args = parser.parse_args()

    params = {run: load_params(run / PARAMS) for run in args.runs}
    settings = {run: {k: v for k, v in dataclasses.asdict(p.student_training).items()
                      if k not in PRUNING_KEYS} for run, p in params.items()}
    first = args.runs[0]
    for run in args.runs[1:]:  # the premise: the cut is the only difference
        assert samples_digest(run) == samples_digest(first), f"{run}: other samples than {first}"
        differ = {k for k in settings[first] if settings[run].get(k) != settings[first][k]}
        assert not differ, f"{run}: trained otherwise than {first}: {sorted(differ)}"
    config, seed = params[first].student_training, params[first].run.seed
    examples, slices = training.transfer_set(first, config, seed)
    scored = slices.get("val") or examples[:32]
    rows = {}
    for run in args.runs:
        student, tokenizer = models.load_model(str(run / STUDENT_INIT))
        rows[run.name] = {
            "recipe": student.config.distill_prune_recipe,
            "layers": student.config.num_hidden_layers,
            "mlp": student.config.intermediate_size,
            "parameters_m": round(models.count_parameters(student) / 1e6, 1),
            "kl_at_init": validation.topk_fidelity(student, scored, tokenizer.pad_token_id)["kl"],
            "kl_after_probe": training.probe_score(student, examples, scored, config,
                                                   args.probe_steps, seed=seed,
                                                   tokenizer=tokenizer),
            "trained_heldout_kl": read_metrics(run)["models"]["student"]["heldout_kl"]}
        print(run.name, rows[run.name], flush=True)
    table = pd.DataFrame(rows).T
    print(f"probe: {args.probe_steps} steps; validation: {len(scored)} sequences")
    print(table.to_string())
    truth = list(table["trained_heldout_kl"].astype(float).sort_values().index)
    for predictor in ("kl_at_init", "kl_after_probe"):
        order = list(table[predictor].astype(float).sort_values().index)
        verdict = "the trained order" if order == truth else f"not the trained order {truth}"
        print(f"{predictor} ranks {order}: {verdict}; best pick "
              f"{'right' if order[0] == truth[0] else 'wrong'}")


if __name__ == "__main__":
    main()

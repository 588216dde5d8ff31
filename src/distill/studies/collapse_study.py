"""The recursive-collapse study's steps (notebook 08, `study: collapse`): the real data,
the held-out text and the shared initialisation, then the chains of generations, one per
condition and seed. distill.studies.collapse holds the conditions, the metrics and the
figures. Each generation's samples and metrics are saved as it finishes; a re-run goes
on from there (weights are not kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core import runs
from ..lm import data, models, samples
from ..teachers.local import sample_teacher
from ..training.finetune import trained_copy
from . import collapse
from .runner import SUMMARY
from .shared import number_format, shared_initialisation, split_prompts, training_config

GENERATIONS = "collapse_generations.csv"  # one row per generation of each chain


class CollapseStudy:
    """Notebook 08's steps on one study folder, in the notebook's order."""

    def __init__(self, config, run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)
        self.precision, self.dtype = number_format(self.run_dir, config.precision)
        # seed 0 whatever the seeds: every chain answers the same prompts
        self.train, _ = split_prompts(config.prompts, config.train_prompts, 0, seed=0)
        self.g0_models = {}  # seed -> G0, the yardstick of its chains' samples

    def _samples_of(self, model, folder: Path, seed: int) -> list:
        """The model's samples of the training prompts (shards; a re-run reuses them)."""
        c = self.config
        sample_teacher(model, self.tokenizer, self.train, [], folder, seed=seed, shard_size=64,
                       batch_size=16, max_new_tokens=c.max_new_tokens, do_sample=True,
                       temperature=c.temperature, top_p=c.top_p, top_k_logprobs=0)
        return samples.build_examples(samples.read_samples(folder, split="train"))

    def real_data(self) -> dict:
        """The teacher's samples (the real data, one set per seed), the held-out real
        text and its rare tokens, the shared initialisation; returns the teacher's own
        metrics on the held-out text (the floor of every generation)."""
        c = self.config
        teacher, self.tokenizer = models.load_model(c.teacher, dtype=self.dtype)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.real = {seed: self._samples_of(teacher, self.run_dir / "real" / f"seed-{seed}", seed)
                     for seed in c.seeds}
        self.heldout = samples.prose_examples(self.tokenizer, data.load_validation_prose(),
                                              10**9, c.block_size)
        real_ids = [e.input_ids for e in samples.prose_examples(
            self.tokenizer, data.load_corpus(), 10**9, c.block_size)]
        self.rare = collapse.rare_tokens(real_ids + [e.input_ids for e in self.heldout],
                                         teacher.config.vocab_size)
        self.init_dir = shared_initialisation(teacher, self.tokenizer,
                                              self.run_dir / runs.STUDENT_INIT, c.prune_recipe,
                                              c.student_size, real_ids[:32])
        found = collapse.text_metrics(teacher, self.heldout, self.rare, self.pad_id)
        del teacher
        print(f"{sum(map(len, self.real.values()))} real samples; {len(self.heldout)} blocks of "
              f"held-out real text; {int(self.rare.sum())} rare tokens; the teacher's held-out "
              f"perplexity {found['perplexity']:.1f}")
        self.training = training_config(self.precision, ce_weight=1.0, kd_weight=0.0,
                                        max_steps=c.steps, epochs=10**6,
                                        batch_size=c.batch_size, lr=c.lr)
        return found

    def _trained(self, examples: list, folder: Path, seed: int):
        """A copy of the initialisation trained by cross-entropy on `examples`."""
        return trained_copy(self.init_dir, examples, folder, self.training, dtype=self.dtype,
                            seed=seed, tokenizer=self.tokenizer)[0]

    def _generation(self, folder: Path, examples: list, seed: int) -> dict:
        """Train a generation on `examples`, measure it, sample from it; its metrics (with
        its samples' perplexity under G0) are saved in folder/metrics.json."""
        found = runs.read_json(folder / "metrics.json")
        if found is not None:
            return found
        model = self._trained(examples, folder, seed)
        produced = self._samples_of(model, folder / "samples", seed)
        texts = samples.read_samples(folder / "samples", split="train")["completion"].tolist()
        self.g0_models.setdefault(seed, model)  # the first trained of a seed is its G0
        found = {**collapse.text_metrics(model, self.heldout, self.rare, self.pad_id),
                 **{f"distinct_{n}": collapse.distinct(texts, n) for n in (1, 2, 3)},
                 "perplexity_under_g0": collapse.sample_perplexities(self.g0_models[seed],
                                                                     produced, self.pad_id),
                 "training_examples": len(examples)}
        runs.write_json(folder / "metrics.json", found)
        return found

    def _g0_of(self, seed: int):
        """G0 of a seed, for scoring samples: rebuilt when a re-run finds it measured."""
        if seed not in self.g0_models:
            self.g0_models[seed] = self._trained(
                self.real[seed], self.run_dir / "chains" / f"seed-{seed}" / "g0-rebuilt", seed)
        return self.g0_models[seed]

    def chains(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Every chain, G0 shared by a seed's conditions: (one row per generation,
        GENERATIONS; the samples' perplexity under G0; the means over seeds, SUMMARY)."""
        c, rows, histogram_rows = self.config, [], []
        for seed in c.seeds:
            g0_folder = self.run_dir / "chains" / f"seed-{seed}" / "g0"
            g0 = self._generation(g0_folder, self.real[seed], seed)
            g0_samples = samples.build_examples(samples.read_samples(g0_folder / "samples",
                                                                     split="train"))
            for condition in tqdm(c.conditions, desc=f"seed {seed}"):
                history = [g0_samples]
                rng = np.random.default_rng([seed, collapse.CONDITIONS.index(condition)])
                rows.append({"seed": seed, "condition": condition, "generation": 0, **g0})
                for k in range(1, c.generations + 1):
                    folder = self.run_dir / "chains" / f"seed-{seed}" / condition / f"g{k}"
                    if not (folder / "metrics.json").exists():
                        self._g0_of(seed)
                    # drawn even when measured, so that later generations draw the same
                    examples = collapse.training_data(condition, self.real[seed], history,
                                                      c.real_share, rng)
                    found = self._generation(folder, examples, seed)
                    history.append(samples.build_examples(
                        samples.read_samples(folder / "samples", split="train")))
                    rows.append({"seed": seed, "condition": condition, "generation": k, **found})
        for row in rows:
            histogram_rows += [{"condition": row["condition"],
                                "generation": f"G{row['generation']}", "seed": row["seed"],
                                "perplexity_under_g0": p} for p in row.pop("perplexity_under_g0")]
        measured = [*collapse.METRICS, "training_examples"]
        table = pd.DataFrame(rows)[["seed", "condition", "generation", *measured]]
        table.to_csv(self.run_dir / GENERATIONS, index=False)
        summary = table.groupby(["condition", "generation"], as_index=False)[measured].mean()
        summary.to_csv(self.run_dir / SUMMARY, index=False)
        return table, pd.DataFrame(histogram_rows), summary

"""The teacher-drift study's steps (notebook 07, `study: drift`): S distilled from T_v1,
the drift curve of S against T_v2 = T_v1 fine-tuned N steps, and three ways of
re-distilling to T_v2. distill.studies.drift turns what they measure into figures.
Every step resumes: sample shards, S, each changed teacher, each arm.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import runs
from ..core.precision import autocast_mode
from ..evaluation import metrics as evaluation
from ..lm import data, generation, models, samples, validation
from ..teachers.local import sample_teacher
from ..training.finetune import changed_teacher, trained_copy
from . import drift
from .runner import SUMMARY
from .shared import number_format, shared_initialisation, split_prompts, training_config

CURVE, CURVES = "drift_curve.csv", "redistill_curves.csv"  # besides SUMMARY (the arms)


class DriftStudy:
    """Notebook 07's steps on one study folder, in the notebook's order."""

    def __init__(self, config, run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)
        self.precision, self.dtype = number_format(self.run_dir, config.precision)
        self.train, self.test = split_prompts(config.prompts, config.train_prompts,
                                              config.test_prompts, config.seed)
        self.verifiable = [p for p in self.test if p.get("reference")]
        print(f"{len(self.train)} training prompts, {len(self.test)} held-out prompts "
              f"({len(self.verifiable)} with a verifiable answer)")

    def _sampled(self, model, name: str, train_part: list, test_part: list) -> Path:
        """The model's greedy answers with top-k as sample shards (resumed on a re-run)."""
        c, folder = self.config, self.run_dir / "samples" / name
        sample_teacher(model, self.tokenizer, train_part, test_part, folder, seed=c.seed,
                       shard_size=64, batch_size=16, max_new_tokens=c.max_new_tokens,
                       do_sample=False, temperature=1.0, top_p=1.0,
                       top_k_logprobs=c.top_k_logprobs)
        return folder

    @staticmethod
    def _examples(folder: Path, split: str) -> list:
        return samples.build_examples(samples.read_samples(folder, split=split), need_topk=True)

    def _distilled(self, start: Path, examples: list, folder: Path, steps: int, slices: dict):
        """(a copy of the model at `start` distilled by forward KL on the top-k of
        `examples` for `steps` steps, its training log with validations on `slices`); saved
        in folder/model, which a re-run loads."""
        c, final = self.config, folder / "model"
        if (final / "config.json").exists():
            return (models.load_model(str(final), dtype=self.dtype)[0].eval(),
                    pd.read_csv(folder / runs.TRAIN_LOG))
        config = training_config(self.precision, kd_weight=1.0, max_steps=steps, epochs=10**6,
                                 batch_size=c.batch_size, lr=c.lr,
                                 validation_every=c.eval_every)
        return trained_copy(start, examples, folder, config, dtype=self.dtype, seed=c.seed,
                            tokenizer=self.tokenizer, validation=slices, save_to=final)

    def _right(self, model_or_answers) -> list[bool]:
        """Which verifiable held-out prompts are answered right (the reference among the
        answer's words), by a model or in given answers."""
        answers = model_or_answers if isinstance(model_or_answers, list) else \
            generation.chat_answers(model_or_answers, self.tokenizer,
                                    [p["messages"] for p in self.verifiable],
                                    self.config.max_new_tokens, 16, "verifiable")[0]
        return [evaluation.reference_in_answer(a, p["reference"])
                for a, p in zip(answers, self.verifiable)]

    def student(self) -> pd.Series:
        """T_v1 answers the prompts; S, cut from T_v1, is distilled on its training
        answers. Returns S's last validation against T_v1's held-out answers."""
        c = self.config
        self.teacher_v1, self.tokenizer = models.load_model(c.teacher, dtype=self.dtype)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.v1 = self._sampled(self.teacher_v1, "v1", self.train, self.test)
        self.v1_train = self._examples(self.v1, "train")
        self.v1_test = self._examples(self.v1, "heldout")
        calibration = samples.prose_examples(self.tokenizer, data.load_corpus(), 10**9,
                                             c.drift_block_size)
        self.init_dir = shared_initialisation(
            self.teacher_v1, self.tokenizer, self.run_dir / runs.STUDENT_INIT, c.prune_recipe,
            c.student_size, [e.input_ids for e in calibration[:32]])
        self.student_model, log = self._distilled(self.init_dir, self.v1_train,
                                                  self.run_dir / "student", c.distill_steps,
                                                  {"old": self.v1_test})
        self.before = log.dropna(subset=["old_top1"]).iloc[-1]
        print(f"S: {models.count_parameters(self.student_model) / 1e6:.1f} M parameters; top-1 "
              f"agreement with T_v1 {self.before['old_top1']:.3f}, KL "
              f"{self.before['old_kl']:.3f} (held-out, top-{c.top_k_logprobs})")
        return self.before

    def curve(self) -> pd.DataFrame:
        """For each N of drift_steps: S against T_v2 on T_v2's own held-out answers (and
        against T_v1, the level S had), the negative flips, the held-out perplexity of
        T_v2 and S. The last T_v2 also answers the training prompts (re-distillation)."""
        c, student, teacher_v1 = self.config, self.student_model, self.teacher_v1
        corpus = samples.prose_examples(self.tokenizer, data.load_corpus(), 10**9,
                                        c.drift_block_size)
        prose = samples.prose_examples(self.tokenizer, data.load_validation_prose(), 10**9,
                                       c.drift_block_size)
        v1_frame = samples.read_samples(self.v1, split="heldout")
        against_v1 = evaluation.teacher_forced_fidelity(teacher_v1, {"student": student},
                                                        v1_frame, self.pad_id, 16)["student"]
        self.student_right = self._right(student)
        rows, final = [], max(c.drift_steps)
        for n in sorted(c.drift_steps):
            changed = teacher_v1 if n == 0 else changed_teacher(
                teacher_v1, self.tokenizer, corpus, n, self.run_dir / "teachers" / f"v2-{n:03d}",
                lr=c.drift_lr, batch_size=c.drift_batch_size, seed=c.seed,
                mixed_precision=autocast_mode(self.precision))
            # N = 0 is T_v1: its own samples (sampled again, bf16 batching could change a
            # few tokens)
            folder = self.v1 if n == 0 else self._sampled(
                changed, f"v2-{n:03d}", self.train if n == final else [], self.test)
            frame = samples.read_samples(folder, split="heldout")
            fidelity = evaluation.teacher_forced_fidelity(changed, {"student": student}, frame,
                                                          self.pad_id, 16)["student"]
            perplexity = evaluation.teacher_forced_fidelity(
                changed, {"student": student, "teacher": changed}, prose, self.pad_id, 16)
            answers = dict(zip(frame["prompt_id"], frame["completion"]))
            teacher_right = self._right([answers[p["prompt_id"]] for p in self.verifiable])
            rows.append({"drift_steps": n, "top1_vs_changed": fidelity["top1_agreement"],
                         "kl_vs_changed": fidelity["kl"],
                         "top1_vs_original": against_v1["top1_agreement"],
                         "kl_vs_original": against_v1["kl"],
                         **drift.negative_flips(self.student_right, teacher_right),
                         "teacher_accuracy": np.mean(teacher_right),
                         "teacher_perplexity": math.exp(perplexity["teacher"]["nll"]),
                         "student_perplexity": math.exp(perplexity["student"]["nll"])})
            del changed
        curve = pd.DataFrame(rows)
        curve.to_csv(self.run_dir / CURVE, index=False)
        return curve

    def redistill(self) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], float]:
        """The arms warm (from S), cold (from the initialisation) and warm_replay (from S,
        T_v1's samples mixed in at replay_share), each distilled on the last T_v2's
        answers: (the table, SUMMARY; each arm's cost curve; the target agreement)."""
        c = self.config
        v2 = self.run_dir / "samples" / f"v2-{max(c.drift_steps):03d}"
        v2_train, v2_test = self._examples(v2, "train"), self._examples(v2, "heldout")
        slices = {"new": v2_test, "old": self.v1_test}
        goal = c.target * self.before["old_top1"]
        rng, v1_train = np.random.default_rng(c.seed), self.v1_train
        replay = [v1_train[i] for i in rng.choice(len(v1_train), size=min(len(v1_train), round(
            len(v2_train) * c.replay_share / (1 - c.replay_share))), replace=False)
                  ] if c.replay_share else []
        student_dir = self.run_dir / "student" / "model"
        arms = {"warm": (student_dir, v2_train, 1.0), "cold": (self.init_dir, v2_train, 1.0),
                "warm_replay": (student_dir, v2_train + replay,
                                len(v2_train) / (len(v2_train) + len(replay)))}
        costs, table = {}, []
        for arm, (start, examples, share) in arms.items():
            begin = models.load_model(str(start), dtype=self.dtype)[0]
            scores = {name: validation.topk_fidelity(begin, part, self.pad_id)
                      for name, part in slices.items()}
            del begin
            model, log = self._distilled(start, examples, self.run_dir / "redistill" / arm,
                                         c.redistill_steps, slices)
            start_row = {"step": 0, "train_seconds": 0.0, "teacher_tokens": 0.0,
                         "new_top1": scores["new"]["top1_agreement"],
                         "new_kl": scores["new"]["kl"], "old_top1": scores["old"]["top1_agreement"]}
            costs[arm] = pd.concat([pd.DataFrame([start_row]), drift.cost_curve(log, share)],
                                   ignore_index=True)
            flips = drift.negative_flips(self.student_right, self._right(model))
            table.append({"arm": arm, "start_new_top1": start_row["new_top1"],
                          **drift.to_target(costs[arm], goal),
                          "negative_flip_rate": flips["negative_flip_rate"],
                          "flipped": flips["flipped"]})
            del model
        table = pd.DataFrame(table)
        table.to_csv(self.run_dir / SUMMARY, index=False)
        pd.concat([curve.assign(arm=arm) for arm, curve in costs.items()]).to_csv(
            self.run_dir / CURVES, index=False)
        print(f"target: top-1 agreement with T_v2 of {goal:.3f} ({c.target} x S's "
              f"{self.before['old_top1']:.3f} with T_v1)")
        return table, costs, goal

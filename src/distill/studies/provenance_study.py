"""The provenance study: do the tests of `distill.studies.provenance` flag the students of a
teacher T, and only them? (notebook 06, `params/studies/`)

Every student starts from one shared initialisation (T pruned once, by one fixed
recipe), so whatever a test sees of T in the weights is the same in every arm, and is
trained by cross-entropy on the text of its arm, the same budget for each:

    teacher     T's answers (T samples under a watermark when a key is given)
    other       another teacher T''s answers (read in the student's tokens)
    reference   plain text no teacher wrote (the shipped corpus, or the user's)
    dilute_<p>  reference text with p percent of T's answers mixed in

`teacher` students are the positives, `other` and `reference` the nulls; dilutions show
how little of T's data a test still finds. Each student is tested on prompts no
student trained on, against T (candidate) and T' (control), with the initialisation as
the likelihood test's reference. `ProvenanceStudy` holds the notebook's steps; the
statistics over the students are distill.studies.detection's.
"""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core import runs
from ..core.precision import autocast_mode
from ..lm import cross_tokenizer, data, generation, models, samples
from ..lm.samples import Example
from ..lm.watermark import from_env as watermark_from_env
from ..teachers.local import sample_teacher
from ..training.finetune import changed_teacher, trained_copy
from . import detection, provenance
from .detection import NULLS, POSITIVE
from .runner import SUMMARY
from .shared import number_format, shared_initialisation, split_prompts, training_config

STUDENTS = "study_students.csv"  # one row per student; the summary goes to SUMMARY


def dilution(arm: str) -> float | None:
    """The share of T's answers in an arm's data: 1 (teacher), 0 (reference), p / 100
    (dilute_<p>); None for `other`. ValueError for an unknown arm."""
    fixed = {"teacher": 1.0, "reference": 0.0, "other": None}
    if arm in fixed:
        return fixed[arm]
    if match := re.fullmatch(r"dilute_(\d+(?:\.\d+)?)", arm):
        return float(match.group(1)) / 100
    raise ValueError(f"arms: unknown arm {arm!r}; use teacher, other, reference or "
                     "dilute_<percent>, e.g. dilute_5")


def check_arms(arms: dict[str, int]) -> None:
    """The arms a study can measure: known names, the teacher arm (the positives) and at
    least one null arm (other, reference), with student counts >= 0."""
    for arm, count in arms.items():
        dilution(arm)
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"arms: {arm}: expected a count of students >= 0, got {count!r}")
    if not arms.get(POSITIVE) or not any(arms.get(arm) for arm in NULLS):
        raise ValueError(f"arms: a study needs {POSITIVE} students (the positives) and "
                         f"{' or '.join(NULLS)} students (the nulls); got {arms}")


# What every student of a study depends on: a study folder goes on only with the same.
STUDENT_PARAMETERS = ("teacher", "other_teacher", "prompts", "train_prompts", "test_prompts",
                      "max_new_tokens", "temperature", "reference_text", "block_size",
                      "examples_per_student", "prune_recipe", "student_size", "epochs",
                      "batch_size", "lr", "watermark_gamma", "watermark_delta", "precision",
                      "seed")


def check_resume(run_dir, parameters: dict, watermark=None) -> None:
    """Record what the study's students depend on (`STUDENT_PARAMETERS` and the
    watermark key's id) in its folder, or, going on in a folder that has them, refuse
    other values: old students would be compared with new teachers' answers. More
    students per arm, and another max_edit, alpha or power_prompts, are fine."""
    from pathlib import Path

    from ..core.runs import read_json, write_json

    key = {**{name: parameters[name] for name in STUDENT_PARAMETERS},
           "watermark": watermark.key_id if watermark else None}
    path = Path(run_dir) / "study_key.json"
    saved = read_json(path, None)
    if saved is None:
        write_json(path, key)
        return
    changed = sorted(name for name in key if saved.get(name) != key[name])
    if changed:
        raise ValueError(f"{run_dir} was made with other values of {', '.join(changed)} "
                         f"({', '.join(f'{n}={saved.get(n)!r}' for n in changed)}); its "
                         "students depend on them: start a new study for new values")


def arm_examples(arm: str, pools: dict[str, list[Example]], size: int,
                 rng: np.random.Generator) -> list[Example]:
    """`size` training examples of an arm, drawn at random (with replacement only when
    a pool is smaller than asked) from the pools 'teacher', 'other' and 'reference'."""
    def draw(pool: str, count: int) -> list[Example]:
        if count == 0:
            return []
        examples = pools.get(pool, [])
        if not examples:
            raise ValueError(f"arm {arm}: the {pool} pool is empty")
        index = rng.choice(len(examples), count, replace=count > len(examples))
        return [examples[i] for i in index]

    share = dilution(arm)
    if share is None:
        return draw("other", size)
    from_teacher = round(share * size)
    return draw("teacher", from_teacher) + draw("reference", size - from_teacher)




class ProvenanceStudy:
    """Notebook 06's steps on one study folder, in the notebook's order (each resumes:
    teacher shards, answers, the initialisation, each student's evidence)."""

    def __init__(self, config, run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)
        self.mark = (watermark_from_env(config.watermark_key_env, config.watermark_gamma,
                                        config.watermark_delta)
                     if config.watermark_key_env else None)
        check_resume(run_dir, {name: getattr(config, name) for name in STUDENT_PARAMETERS},
                     self.mark)
        if self.mark:
            runs.update_manifest(run_dir, watermark=self.mark.describe())
        self.precision, self.dtype = number_format(self.run_dir, config.precision)
        self.train, self.test = split_prompts(config.prompts, config.train_prompts,
                                              config.test_prompts, config.seed)
        self.messages = [p["messages"] for p in self.test]
        print(f"{len(self.train)} training prompts, {len(self.test)} test prompts; "
              f"arms: {config.arms}")

    def _answers(self, name: str, model, tokenizer) -> list[str]:
        """Greedy answers to the test prompts, saved under answers/ (a re-run reuses them)."""
        c = self.config
        return provenance.saved_answers(
            self.run_dir / "answers" / f"{name}.json", [p["prompt_id"] for p in self.test],
            c.max_new_tokens, lambda: generation.chat_answers(
                model, tokenizer, self.messages, c.max_new_tokens, c.batch_size, desc=name)[0])

    def teachers(self) -> dict[str, list[str]]:
        """T and T' sample answers to the training prompts (T under the watermark) and
        answer the test prompts greedily: {'teacher': y_T, 'other': y_C}. T is kept for
        the initialisation; changed:N makes T' from T, as the drift study makes T_v2."""
        c, answers = self.config, {}
        for role, name, marker in (("teacher", c.teacher, self.mark),
                                   ("other", c.other_teacher, None)):
            if name.startswith("changed:"):
                corpus = samples.prose_examples(self.tokenizer, data.load_corpus(), 10**9,
                                                c.block_size)
                model = changed_teacher(self._teacher, self.tokenizer, corpus,
                                        int(name.removeprefix("changed:")),
                                        self.run_dir / "other_teacher",
                                        mixed_precision=autocast_mode(self.precision))
                tokenizer = self.tokenizer
            else:
                model, tokenizer = models.load_model(name, dtype=self.dtype)
            sample_teacher(model, tokenizer, self.train, [], self.run_dir / role, seed=c.seed,
                           shard_size=64, batch_size=16, watermark=marker,
                           max_new_tokens=c.max_new_tokens, do_sample=True,
                           temperature=c.temperature, top_p=1.0, top_k_logprobs=0)
            answers[role] = self._answers(role, model, tokenizer)
            if role == "teacher":
                self._teacher, self.tokenizer = model, tokenizer  # every student has T's tokenizer
            del model
        gc.collect()
        self.teacher_answers = answers
        return answers

    def _logliks(self, model, name: str) -> dict[str, np.ndarray]:
        """`model`'s per-token log-likelihood of each teacher's test answers, keyed
        <name>_teacher and <name>_other."""
        return {f"{name}_{role}": provenance.answer_logliks(
                    model, self.tokenizer, self.messages, texts, self.config.batch_size,
                    desc=f"{name} scores {role}")
                for role, texts in self.teacher_answers.items()}

    def initialisation(self) -> None:
        """The arms' pools (the teachers' samples in T's tokens, reference text), the
        shared initialisation (T pruned, calibrated on reference text so that the nulls
        start from it too), and its log-likelihoods of the teachers' answers."""
        c = self.config
        self.pools = {role: cross_tokenizer.cross_examples(
            samples.read_samples(self.run_dir / role, split="train"), self.tokenizer, False)
            for role in ("teacher", "other")}
        files = data.document_files(c.reference_text) if c.reference_text else []
        reference = (data.load_corpus() + "\n\n" + data.load_validation_prose()
                     + "".join("\n\n" + Path(f).read_text() for f in files))
        self.pools["reference"] = samples.prose_examples(self.tokenizer, reference, 10**9,
                                                         c.block_size)
        print({role: len(pool) for role, pool in self.pools.items()}, "examples in the pools")
        self.init_dir = shared_initialisation(
            self._teacher, self.tokenizer, self.run_dir / runs.STUDENT_INIT, c.prune_recipe,
            c.student_size, [e.input_ids for e in self.pools["reference"][:32]])
        del self._teacher
        init = models.load_model(str(self.init_dir), dtype=self.dtype)[0]
        self.init_logliks = self._logliks(init, "init")
        print(f"the initialisation: {models.count_parameters(init) / 1e6:.1f} M parameters "
              f"({c.prune_recipe}, {c.student_size})")
        self.training = training_config(self.precision, ce_weight=1.0, kd_weight=0.0,
                                        epochs=c.epochs, batch_size=c.batch_size, lr=c.lr)

    def _trained(self, arm: str, rng: np.random.Generator, folder: Path, seed: int):
        """A copy of the initialisation trained by cross-entropy on a draw of `arm`'s data."""
        examples = arm_examples(arm, self.pools, self.config.examples_per_student, rng)
        return trained_copy(self.init_dir, examples, folder, self.training, dtype=self.dtype,
                            seed=seed, tokenizer=self.tokenizer)[0]

    def jobs(self) -> list[tuple[str, int]]:
        return [(arm, i) for arm, count in self.config.arms.items() for i in range(count)]

    def students(self) -> None:
        """Each student in turn: trained on its arm's draw, then its answers and its d on
        the test prompts saved as its evidence.json (its weights are not kept)."""
        c = self.config
        for arm, i in tqdm(self.jobs(), desc="students"):
            folder = self.run_dir / "students" / f"{arm}-{i:02d}"
            if (folder / "evidence.json").exists():
                continue
            rng = np.random.default_rng([c.seed, i, sum(map(ord, arm))])
            student = self._trained(arm, rng, folder, c.seed * 1000 + i)
            texts, _ = generation.chat_answers(student, self.tokenizer, self.messages,
                                               c.max_new_tokens, c.batch_size, desc=f"{arm}-{i}")
            found = detection.evidence(texts, {**self._logliks(student, "suspect"),
                                               **self.init_logliks})
            runs.write_json(folder / "evidence.json", {"arm": arm, "index": i, **found})
            del student
            gc.collect()

    def healed_reference(self) -> np.ndarray:
        """The shift of every student's d from the initialisation to a healed reference
        R' (the initialisation trained like a reference student, on a draw of its own)."""
        c = self.config
        path = self.run_dir / "healed_reference.json"
        healed_logliks = runs.read_json(path)
        if healed_logliks is None:
            healed = self._trained("reference", np.random.default_rng([c.seed, 10**6]),
                                   self.run_dir / "healed_reference", c.seed * 1000 + 999)
            healed_logliks = {k: v.tolist() for k, v in self._logliks(healed, "healed").items()}
            runs.write_json(path, healed_logliks)
            del healed
        self.shift = detection.healed_shift(
            self.init_logliks, {k: np.asarray(v) for k, v in healed_logliks.items()})
        print(f"mean shift of d: {np.nanmean(self.shift):+.3f} nats/token (what healing "
              "alone adds)")
        return self.shift

    def results(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Every student's p-values on all the test prompts (STUDENTS), the teacher
        students' power at each of power_prompts, and the summary per test (SUMMARY)."""
        c = self.config
        evidence = [runs.read_json(self.run_dir / "students" / f"{arm}-{i:02d}" / "evidence.json")
                    for arm, i in self.jobs()]
        counts = sorted({min(n, len(self.test)) for n in c.power_prompts} | {len(self.test)})
        rows, power_rows = [], []
        for found in tqdm(evidence, desc="p-values"):
            for n in counts:
                p = detection.p_values(found, n, self.teacher_answers, self.tokenizer,
                                       self.messages, self.mark, c.max_edit, c.permutations,
                                       c.seed, self.shift)
                if n == len(self.test):
                    rows.append({"arm": found["arm"], "student": found["index"],
                                 "share": dilution(found["arm"]), **p,
                                 "mean_d": np.nanmean(found["d"])})
                if found["arm"] == POSITIVE:
                    power_rows += [{"test": t, "prompts": n, "flagged": p[t] <= c.alpha}
                                   for t in detection.TESTS]
        table = pd.DataFrame(rows)
        power = pd.DataFrame(power_rows).groupby(["test", "prompts"], as_index=False)[
            "flagged"].mean().rename(columns={"flagged": "power"})
        summary = detection.summary(table, c.alpha)
        table.to_csv(self.run_dir / STUDENTS, index=False)
        summary.to_csv(self.run_dir / SUMMARY, index=False)
        return table, power, summary

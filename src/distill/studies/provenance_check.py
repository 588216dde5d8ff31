"""One suspect checked against its candidate teachers (notebook 05, `distill provenance`):
the models loaded or reached, prompts no given run trained on, every model's answers,
then the three tests of distill.studies.provenance, each giving a row per candidate of
the verdict (or saying why it did not run), and the table and results written.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..core import runs
from ..core.precision import weights_dtype
from ..lm import data, generation, models
from ..lm.token_bytes import same_vocabulary
from ..lm.watermark import from_env as watermark_from_env
from ..teachers import api_client
from ..teachers import openai_api as api_teacher
from . import provenance

COLUMNS = ["test", "candidate", "statistic", "p_value", "decision"]  # of the verdict's table


class ProvenanceCheck:
    """Notebook 05's steps on one folder, in the notebook's order; `results` collects
    the verdict's rows as the tests run."""

    def __init__(self, config, run_dir: Path):
        self.config, self.run_dir, self.results = config, Path(run_dir), []
        self.agreement_result, self.lifts = None, {}  # what the tests found, for RESULTS
        self.suspect, self.reference = config.suspect, config.reference
        if self.suspect is None:  # by hand: the newest run with a distilled student
            finished = sorted(Path(config.output_dir).glob(f"*/{runs.STUDENT}/config.json"),
                              key=lambda p: p.stat().st_mtime)
            if not finished:
                raise FileNotFoundError(f"suspect is None and no run under {config.output_dir} "
                                        "has a student; set suspect")
            self.suspect = str(finished[-1].parent.parent)
            print(f"suspect: the newest run's student, {self.suspect}")
        if self.reference is None and (Path(self.suspect) / runs.STUDENT_INIT /
                                       "config.json").exists():
            self.reference = str(Path(self.suspect) / runs.STUDENT_INIT)  # what S grew from
            print(f"reference: {self.reference}")
        self.candidates, self.control = config.candidates, config.control
        self.compared = list(dict.fromkeys([*self.candidates, *self._if(self.control)]))
        self.loaded = {}  # model spec -> (model, tokenizer), or an Endpoint
        for spec in dict.fromkeys([self.suspect, *self.compared, *self._if(self.reference)]):
            if api_client.is_endpoint(spec):
                self.loaded[spec] = api_client.endpoint_from_spec(spec, config.api_key_env)
                api_client.check_endpoint(self.loaded[spec])
            else:
                self.loaded[spec] = models.load_model(spec, dtype=weights_dtype(config.dtype))
        self.local = {spec: not isinstance(value, api_client.Endpoint)
                      for spec, value in self.loaded.items()}

    @staticmethod
    def _if(spec: str | None) -> list[str]:
        return [spec] if spec else []

    def roles(self) -> pd.DataFrame:
        """Each model's role, and whether it runs here or behind an endpoint."""
        specs = [self.suspect, *self.candidates, *self._if(self.control),
                 *self._if(self.reference)]
        return pd.DataFrame({"role": ["suspect", *["candidate"] * len(self.candidates),
                                      *["control"] * len(self._if(self.control)),
                                      *["reference"] * len(self._if(self.reference))],
                             "model": specs,
                             "where": ["local" if self.local[s] else "endpoint" for s in specs]})

    def ask(self) -> pd.DataFrame:
        """Prompts none of the local run folders trained on, and every compared model's
        greedy answers (saved under answers/: a re-run asks no model twice). Returns the
        first three prompts and answers."""
        c = self.config
        run_folders = [spec for spec in self.loaded
                       if self.local[spec] and (Path(spec) / runs.SAMPLES).is_dir()]
        self.chosen = provenance.fresh_prompts(data.load_prompts(c.prompts, c.prompt_field),
                                               run_folders, c.n_prompts, c.seed)
        self.messages = [p["messages"] for p in self.chosen]
        print(f"{len(self.chosen)} prompts that {len(run_folders)} run folder(s) did not "
              "train on")
        self.answers = {spec: self._answers(spec) for spec in [self.suspect, *self.compared]}
        return pd.DataFrame({"prompt": [m[-1]["content"] for m in self.messages[:3]],
                             **{spec: texts[:3] for spec, texts in self.answers.items()}}).T

    def _answers(self, spec: str) -> list[str]:
        c = self.config

        def produce():
            if self.local[spec]:
                return generation.chat_answers(*self.loaded[spec], self.messages,
                                               c.max_new_tokens, c.batch_size, desc=spec)[0]
            return api_teacher.endpoint_answers(self.loaded[spec], self.messages,
                                                c.max_new_tokens, c.seed)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")[-100:] + ".json"
        return provenance.saved_answers(self.run_dir / "answers" / name,
                                        [p["prompt_id"] for p in self.chosen],
                                        c.max_new_tokens, produce)

    def _verdict(self, p_value: float) -> str:
        return "distilled from it" if p_value <= self.config.alpha else "no evidence"

    def _not_run(self, test: str, why: str, candidates: list[str], said: str) -> None:
        """Rows saying why `test` did not run, never a silent p-value; `said` is printed."""
        print(said)
        self.results += [{"test": test, "candidate": c, "statistic": None, "p_value": None,
                          "decision": f"not run: {why}"} for c in candidates]

    def agreement(self):
        """Test 1, output agreement: a row per candidate (only the closest model gets
        a p-value), and the figure of each model's share of agreeing answers."""
        c = self.config
        try:
            self.agreement_result = found = provenance.output_agreement(
                self.answers[self.suspect], {s: self.answers[s] for s in self.compared},
                c.max_edit, c.alpha)
        except ValueError as error:  # too few prompts or models
            return self._not_run("output agreement", str(error), self.candidates,
                                 f"output agreement not run: {error}")
        n, best = found["prompts"], found["best"]
        for candidate in self.candidates:
            self.results.append({
                "test": "output agreement", "candidate": candidate,
                "statistic": f"{found['matches'][candidate]}/{n} answers agree",
                "p_value": found["p_value"] if candidate == best else None,
                "decision": self._verdict(found["p_value"]) if candidate == best else
                f"not the closest model ({best} is)"})
        print(f"Closest: {best}; p = {found['p_value']:.3g} "
              f"(Holm-corrected, vs {', '.join(found['comparisons'])})")
        figure, axis = plt.subplots(figsize=(6, 0.5 + 0.4 * len(self.compared)))
        sns.barplot(x=[found["matches"][s] / n for s in self.compared], y=self.compared,
                    ax=axis, orient="h")
        axis.set(xlabel=f"share of {n} prompts where S's answer agrees", ylabel="", xlim=(0, 1))
        return runs.save_figure(figure, self.run_dir, "provenance_agreement")

    def _logliks(self, spec: str, texts: list[str]) -> np.ndarray:
        model, tokenizer = self.loaded[spec]
        return provenance.answer_logliks(model, tokenizer, self.messages, texts,
                                         self.config.batch_size, desc=f"{spec} scores")

    def likelihood(self):
        """Test 2, the reference-normalised likelihood: a row per candidate, and the
        histogram of d per prompt. Skipped, with the reason, where S is an endpoint, there
        is no control, or the reference is not local with S's tokenizer."""
        c, suspect, reference = self.config, self.suspect, self.reference
        why = ("it needs a control model's answers (set control)" if self.control is None
               else "it needs S's log-probs, and S is an endpoint" if not self.local[suspect]
               else f"the reference {reference} must be local with S's tokenizer"
               if reference and not (self.local[reference] and same_vocabulary(
                   self.loaded[suspect][1], self.loaded[reference][1])) else None)
        if why:
            return self._not_run("likelihood", why, self.candidates, f"likelihood test not run: "
                                 f"{why}; output agreement (text only) stands alone")
        s_c = self._logliks(suspect, self.answers[self.control])
        r_c = self._logliks(reference, self.answers[self.control]) if reference else None
        for candidate in self.candidates:
            try:
                lift = provenance.likelihood_lift(
                    self._logliks(suspect, self.answers[candidate]), s_c,
                    self._logliks(reference, self.answers[candidate]) if reference else None,
                    r_c, c.permutations, c.seed, c.alpha)
            except provenance.TooFewPrompts as error:  # its answers were too often empty
                self._not_run("likelihood", str(error), [candidate],
                              f"likelihood test for {candidate} not run: {error}")
                continue
            self.lifts[candidate] = lift
            self.results.append({"test": "likelihood", "candidate": candidate,
                                 "statistic": f"mean d = {lift['mean_d']:.3f} nats/token",
                                 "p_value": lift["p_value"],
                                 "decision": self._verdict(lift["p_value"])})
        if not self.lifts:
            return None
        figure, axis = plt.subplots(figsize=(6, 3))
        for candidate, lift in self.lifts.items():
            sns.histplot(lift["d"], ax=axis, label=candidate, element="step", fill=False)
        axis.axvline(0, color="grey", lw=1)
        axis.set(xlabel="d per prompt (nats/token): > 0 where S favours the candidate's "
                 "answer", ylabel="prompts")
        axis.legend()
        return runs.save_figure(figure, self.run_dir, "provenance_likelihood")

    def watermark(self) -> None:
        """Test 3, watermark radioactivity: one row for the key's teacher. Skipped, with
        the reason, without a key, where S is an endpoint, or where no local candidate
        shares S's tokenizer (the watermark hashes token ids)."""
        c, suspect = self.config, self.suspect
        if c.watermark_key_env is None:
            print("No watermark key (watermark_key_env is None): test 3 skipped.")
            return
        why = ("it needs S's token ids, and S is an endpoint" if not self.local[suspect]
               else "the watermark hashes the teacher's token ids, and S's tokenizer is no "
               "local candidate's; output agreement (text only) stands alone"
               if not any(self.local[m] and same_vocabulary(self.loaded[suspect][1],
                                                             self.loaded[m][1])
                          for m in self.candidates) else None)
        if why:
            return self._not_run("watermark", why, ["(the key's teacher)"],
                                 f"watermark test not run: {why}")
        mark = watermark_from_env(c.watermark_key_env, c.watermark_gamma)
        found = provenance.watermark_radioactivity(self.loaded[suspect][1], self.messages,
                                                   self.answers[suspect], mark)
        self.results.append({
            "test": "watermark", "candidate": f"(the teacher of key {mark.key_id})",
            "statistic": f"{found['green']}/{found['pairs']} pairs green "
                         f"({found['green_share']:.3f} vs {c.watermark_gamma}), "
                         f"z = {found['z']:.2f}",
            "p_value": found["p_value"], "decision": self._verdict(found["p_value"])})

    def verdict(self) -> pd.DataFrame:
        """Every test's rows as one table, written with the results (TABLE, RESULTS)."""
        table = pd.DataFrame(self.results, columns=COLUMNS)
        table.to_csv(self.run_dir / provenance.TABLE, index=False)
        runs.write_json(self.run_dir / provenance.RESULTS, {
            "suspect": self.suspect, "candidates": self.candidates, "control": self.control,
            "reference": self.reference, "prompts": len(self.chosen), "alpha": self.config.alpha,
            "table": table.replace({np.nan: None}).to_dict("records"),
            "output_agreement": self.agreement_result,
            "likelihood": {c: {k: v for k, v in lift.items() if k != "d"}
                           for c, lift in self.lifts.items()}})
        return table

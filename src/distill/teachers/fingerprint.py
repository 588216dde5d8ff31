"""A teacher's fingerprint: how it answers fixed probes, to tell later whether a model
name or an endpoint still stands for the same model.

    distill fingerprint http://host/v1#model -o teacher.json          # record
    distill fingerprint --check teacher.json http://host/v1#model     # same model?

The probes ship with the package (assets/canaries.json) and never change:
- canary prompts: the greedy answer (temperature 0) and the top-k log-probs at each of
  its tokens (chat `logprobs` / `top_logprobs`);
- probe texts: the log-prob of every token of fixed texts given the ones before, with
  the top-k (`/v1/completions` with `echo`; left out where the endpoint has no echo).

The divergence of one probe between two measurements is the mean over positions of
the mean absolute difference of the log-probs of the tokens both top-k lists name
(NOVEL nats where they share none). A greedy answer is compared up to and including
the first token where the two answers part: after it, the contexts differ. Texts cut
into other tokens (another tokenizer) diverge by NOVEL.

The decision is "changed" when the median divergence over the probes passes the
fingerprint's threshold: NOISE_FACTOR times the largest median divergence between
the recording's own passes, and at least FLOOR. The passes send the probes one at a
time and all together, so the noise of batching is in the threshold. Other weights or
another precision move most probes at once, which the median sees; one odd probe
cannot flip it. `benchmarks/fingerprint_checks.py` measures the false-alarm rate over
repeated checks and restarts of one server.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import openai
import pandas as pd

from ..lm.data import builtin_path, encode_chat
from ..lm.generation import generate, score_prompt
from ..lm.token_bytes import TokenBytes

VERSION = 1
TOP_K = 5  # alternatives per position (OpenAI allows up to 20)
MAX_TOKENS = 24  # of each canary answer
NOVEL = 1.0  # nats: a position where the two top-k lists share no token
FLOOR = 1e-3  # nats: the least threshold (bf16 against fp32 moves the median far more)
NOISE_FACTOR = 4.0
REPEATS = 3  # passes when recording: one at a time, together, together again
SAME, CHANGED = "same model", "changed"


def canaries() -> dict:
    return json.loads(builtin_path("canaries.json").read_text())


# A measured probe is a list of positions, each [token, log-prob, {alternative: log-prob}].

class LocalProbes:
    """The probes answered by a model in this process, as `distill serve` would."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.vocab = model, tokenizer, TokenBytes(tokenizer)

    def _token(self, token_id: int) -> str:
        return self.vocab.token(token_id)[0]

    def answers(self, prompts: list[str], together: bool) -> list[list]:
        ids = [encode_chat(self.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        batches = [ids] if together else [[one] for one in ids]
        outputs = [output for batch in batches for output in generate(
            self.model, self.tokenizer, batch, MAX_TOKENS, top_k_logprobs=TOP_K,
            token_logprobs=True)]
        return [[[self._token(t), lp, {self._token(a): v for a, v in zip(alt_ids, alt_lps)}]
                 for t, lp, alt_ids, alt_lps in zip(o["completion_ids"], o["token_logprobs"],
                                                    o["topk_ids"], o["topk_logprobs"])]
                for o in outputs]

    def scores(self, texts: list[str], together: bool) -> list[list]:
        measured = []
        for text in texts:
            ids = self.tokenizer(text)["input_ids"]
            chosen, alternatives = score_prompt(self.model, ids, TOP_K)
            measured.append([[self._token(t), lp, {self._token(a): v for a, v in alts}]
                             for t, lp, alts in zip(ids[1:], chosen[1:], alternatives[1:])])
        return measured


class EndpointProbes:
    """The probes answered by an OpenAI-compatible endpoint
    (`distill.teachers.api_client.Endpoint`)."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.client = endpoint.client().with_options(max_retries=3)

    def _map(self, function, items: list, together: bool) -> list:
        with ThreadPoolExecutor(self.endpoint.concurrency if together else 1) as pool:
            return list(pool.map(function, items))

    def answers(self, prompts: list[str], together: bool) -> list[list]:
        def one(prompt: str) -> list:
            response = self.client.chat.completions.create(
                model=self.endpoint.model, messages=[{"role": "user", "content": prompt}],
                max_completion_tokens=MAX_TOKENS, temperature=0, seed=0, logprobs=True,
                top_logprobs=TOP_K)
            content = response.choices[0].logprobs.content or []
            return [[e.token, e.logprob, {a.token: a.logprob for a in e.top_logprobs}]
                    for e in content]
        return self._map(one, prompts, together)

    def scores(self, texts: list[str], together: bool) -> list[list] | None:
        def one(text: str) -> list:
            # max_tokens 1, not 0: not every server echoes without generating
            response = self.client.completions.create(
                model=self.endpoint.model, prompt=text, echo=True, logprobs=TOP_K,
                max_tokens=1, temperature=0)
            found = response.choices[0].logprobs
            rows = list(zip(found.tokens, found.token_logprobs, found.top_logprobs))
            return [[t, lp, dict(alts or {})] for t, lp, alts in
                    rows[1:response.usage.prompt_tokens]]
        try:
            return self._map(one, texts, together)
        except (openai.NotFoundError, openai.BadRequestError, openai.UnprocessableEntityError):
            return None  # no echo here: the canary answers alone make the fingerprint


def measure(probes, together: bool) -> dict:
    """One pass over the shipped probes: {'answers': {id: positions}, 'texts': ... | None}."""
    shipped = canaries()
    answers = probes.answers(shipped["prompts"], together)
    texts = probes.scores(shipped["texts"], together)
    return {"answers": {f"prompt-{i:02d}": a for i, a in enumerate(answers)},
            "texts": None if texts is None else {f"text-{i}": t for i, t in enumerate(texts)}}


def _positions_divergence(old: list, new: list, up_to_parting: bool) -> float:
    distances = []
    for (old_token, old_lp, old_top), (new_token, new_lp, new_top) in zip(old, new):
        both_old, both_new = {**old_top, old_token: old_lp}, {**new_top, new_token: new_lp}
        shared = both_old.keys() & both_new.keys()
        distances.append(np.mean([abs(both_old[t] - both_new[t]) for t in shared])
                         if shared else NOVEL)
        if old_token != new_token:
            if not up_to_parting:
                return NOVEL  # a text cut into other tokens: another tokenizer
            break
    if not up_to_parting and len(old) != len(new):
        return NOVEL
    return float(np.mean(distances)) if distances else NOVEL


def divergences(old: dict, new: dict) -> dict[str, float]:
    """Per probe, the divergence of two measurements (probes both have)."""
    found = {key: _positions_divergence(positions, new["answers"][key], True)
             for key, positions in old["answers"].items() if key in new["answers"]}
    if old.get("texts") and new.get("texts"):
        found.update({key: _positions_divergence(positions, new["texts"][key], False)
                      for key, positions in old["texts"].items() if key in new["texts"]})
    return found


def median_divergence(old: dict, new: dict) -> float:
    return float(np.median(list(divergences(old, new).values())))


def record(probes, model: str, repeats: int = REPEATS) -> dict:
    """A fingerprint: the first pass's measurement and a threshold set by the spread
    between `repeats` passes (alternately one probe at a time and all together)."""
    if repeats < 2:
        raise ValueError("repeats must be at least 2: the threshold comes from their spread")
    passes = [measure(probes, together=bool(i % 2)) for i in range(repeats)]
    noise = max(median_divergence(a, b) for a, b in combinations(passes, 2))
    return {"version": VERSION, "probes_version": canaries()["version"], "model": model,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "top_k": TOP_K,
            "max_tokens": MAX_TOKENS, "noise": noise,
            "threshold": max(FLOOR, NOISE_FACTOR * noise), "measurement": passes[0]}


@dataclass
class Check:
    divergence: dict[str, float]  # per probe
    median: float
    threshold: float
    answers_changed: int  # canary answers whose text differs
    answers: int
    texts_compared: bool

    @property
    def decision(self) -> str:
        return CHANGED if self.median > self.threshold else SAME

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"probe": list(self.divergence),
                             "divergence_nats": list(self.divergence.values())})

    def summary(self) -> str:
        texts = "" if self.texts_compared else " (canary answers only: no texts on both sides)"
        return (f"{self.decision}: median divergence {self.median:.2g} nats against a threshold "
                f"of {self.threshold:.2g}{texts}; {self.answers_changed} of {self.answers} canary "
                "answers changed")


def check(fingerprint: dict, probes) -> Check:
    """Measure again (all probes together, as a busy server answers) and compare."""
    if fingerprint.get("probes_version") != canaries()["version"]:
        raise ValueError(f"the fingerprint was recorded with probes version "
                         f"{fingerprint.get('probes_version')}, this distill ships version "
                         f"{canaries()['version']}: record it again")
    old, new = fingerprint["measurement"], measure(probes, together=True)
    found = divergences(old, new)
    changed = sum([p[0] for p in positions] != [p[0] for p in new["answers"][key]]
                  for key, positions in old["answers"].items())
    return Check(found, float(np.median(list(found.values()))), fingerprint["threshold"],
                 changed, len(old["answers"]), bool(old.get("texts") and new.get("texts")))


def load(path: str | Path) -> dict:
    """A fingerprint file, or the teacher fingerprint of a run folder."""
    from ..core.runs import TEACHER_FINGERPRINT

    path = Path(path)
    file = path / TEACHER_FINGERPRINT if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: no fingerprint there; record one with "
                                "`distill fingerprint MODEL -o FILE`")
    found = json.loads(file.read_text())
    if found.get("version") != VERSION or "measurement" not in found:
        raise ValueError(f"{file} is not a distill fingerprint (version {VERSION})")
    return found

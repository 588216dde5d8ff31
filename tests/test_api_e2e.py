"""End to end over HTTP: `distill serve` runs the embedded teacher in its own process,
a fault-injecting proxy stands in front of it, and `distill run params/smoke.yaml`
samples through it with the openai backend, then trains and evaluates.

Checks: every prompt sampled exactly once despite the faults, the health report
counts exactly the faults injected, the API's top-k log-probs equal the local
backend's, 02 and 03 complete, and the key appears in no file the run wrote. The
served teacher is the tiny one (conftest.tiny_teacher): what is tested is the path
through HTTP, not the teacher. Marked e2e."""

import json
import math
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_TEACHER_STUDENT_SIZE
from distill.lm import generation, models, samples
from distill.lm.data import encode_chat
from distill.pipeline import run_pipeline
from distill.testing import FaultProxy, launch

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "smollm2-135m-instruct"
KEY_ENV = "DISTILL_E2E_API_KEY"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def key():
    return f"sk-e2e-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def served_teacher(key, tmp_path_factory, tiny_teacher):
    """`distill serve` in a subprocess, as a user starts it."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as output:
        try:
            # float32: the log-probs are compared with a local float32 forward below
            server, url = launch(tiny_teacher, "--api-key-env", KEY_ENV, "--precision", "fp32",
                                 env={**os.environ, KEY_ENV: key}, output=output)
        except RuntimeError as error:
            pytest.fail(f"{error}:\n{log.read_text()}")
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def api_run(served_teacher, key, tmp_path_factory, tiny_teacher):
    """The smoke pipeline through the proxy; its own request cache (the converted
    teacher is linked in, not converted again)."""
    cache = tmp_path_factory.mktemp("cache")
    (cache / TEACHER).symlink_to(models.resolve_model_path(TEACHER))
    output_dir = tmp_path_factory.mktemp("outputs")
    patch = pytest.MonkeyPatch()
    patch.setenv("DISTILL_CACHE", str(cache))
    patch.setenv(KEY_ENV, key)
    # The proxy's draws are a seeded stream: seed 15 injects each kind of fault (5 in all)
    proxy = FaultProxy(served_teacher, rate=0.15, seed=15, slow_s=12.0, retry_after_s=0.2)
    try:
        with proxy as url:
            run_dir = run_pipeline(ROOT / "params" / "smoke.yaml", [
                f"run.output_dir={output_dir}", "run.name=smoke-api",
                f"run.teacher={tiny_teacher}", "student_training.prune_recipe=width",
                f"student_training.student_size={TINY_TEACHER_STUDENT_SIZE}",
                "teacher_sampling.backend=openai", f"teacher_sampling.base_url={url}/v1",
                f"teacher_sampling.api_key_env={KEY_ENV}", "teacher_sampling.request_timeout=10",
                "teacher_sampling.retry_backoff=0.2",
                "teacher_sampling.generic_samples=0",  # an API scores no given text
                # the fault counts below are of sampling's requests alone
                "teacher_sampling.fingerprint=false"])
    finally:
        patch.undo()
    yield run_dir, proxy, cache
    shutil.rmtree(output_dir)  # GBs of weights: CI's disk holds a few runs, not all


def test_every_prompt_sampled_once_and_the_faults_counted(api_run):
    run_dir, proxy, _ = api_run
    frame = samples.read_samples(run_dir)
    assert len(frame) == 32 and frame["prompt_id"].is_unique
    assert proxy.forwarded == {200: 32}
    assert set(proxy.injected) == {"rate_limited", "server_error", "slow", "drop"}
    report = json.loads((run_dir / "api_health.json").read_text())
    assert report["samples_lost"] == 0
    assert report["errors"]["rate_limited"] == proxy.injected["rate_limited"]
    assert report["errors"]["server_error"] == proxy.injected["server_error"]
    # a slow fault is a timeout, or (once a retry's longer timeout outlasts the proxy's
    # hold) a connection closed without an answer, as a drop is
    assert report["errors"]["timeout"] >= 1
    assert report["errors"]["timeout"] + report["errors"]["connection"] == \
        proxy.injected["slow"] + proxy.injected["drop"]
    assert report["completion_tokens"] == sum(len(ids) for ids in frame["completion_ids"])
    assert (run_dir / "figures" / "api_health.png").is_file()
    assert (run_dir / "api_requests.csv").is_file()


def test_api_logprobs_equal_the_local_backend(api_run, tiny_teacher):
    """Greedy answers and their top-20 log-probs, as the local backend computes them for
    the same prompts. Batches differ (so does float rounding): compare where the two
    answers agree, and ask that they agree almost everywhere."""
    run_dir, _, _ = api_run
    api = samples.read_samples(run_dir, split="heldout")
    model, tokenizer = models.load_model(tiny_teacher)
    chats = [json.loads(m) for m in api["messages"]]
    local = generation.generate(model, tokenizer, [encode_chat(tokenizer, c) for c in chats],
                              max_new_tokens=24, top_k_logprobs=20)
    compared = total = 0
    for row, reference in zip(api.itertuples(), local):
        ours, theirs = list(row.completion_ids), reference["completion_ids"]
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                    min(len(ours), len(theirs)))
        total += len(theirs)
        compared += same
        np.testing.assert_array_equal(np.stack(row.topk_ids)[:same],
                                      np.array(reference["topk_ids"])[:same])
        np.testing.assert_allclose(np.stack(row.topk_logprobs)[:same],
                                   np.array(reference["topk_logprobs"])[:same], atol=1e-3)
    assert compared >= 0.9 * total


def test_training_and_evaluation_complete_on_api_samples(api_run):
    """The student trained on the API's samples and every model was scored. Whether it
    came closer to its teacher is the smoke run's question (a real teacher); this one's
    is random, and a student pruned to 0.9 of it starts nearly on it."""
    run_dir, _, _ = api_run
    metrics = json.loads((run_dir / "metrics.json").read_text())["models"]
    assert set(metrics) == {"teacher", "student_init", "student"}
    assert all(math.isfinite(m["heldout_kl"]) and m["bits_per_byte"] > 0
               for m in metrics.values())
    assert metrics["student"]["heldout_kl"] != metrics["student_init"]["heldout_kl"]  # trained
    log = pd.read_csv(run_dir / "train_log.csv")
    assert len(log) == 6 and log["loss"].notna().all()  # 2 epochs of 3 batches of 8
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())


def test_the_key_is_in_no_file_the_run_wrote(api_run, key):
    run_dir, _, cache = api_run
    written = [p for folder in (run_dir, cache / "api-requests") for p in folder.rglob("*")
               if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in written) and any(p.suffix == ".json" for p in
                                                                written)
    leaks = [p for p in written if key.encode() in p.read_bytes()]
    assert leaks == []

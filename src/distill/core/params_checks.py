"""Checks of a params file that need more than one key, or facts of the models named
(the embedded teacher's vocabulary and depth, the student's tokenizer). Run by
`distill.core.params.load_params` after each key has passed its own check."""

from __future__ import annotations

from urllib.parse import urlsplit

from .embedded import EMBEDDED
from .params_fields import MAX_TOP_LOGPROBS, SOURCES, ParamsError, objective_names


def check_across_sections(params, source: str) -> None:
    """Checks that need more than one key (or the teacher's vocabulary)."""
    embedded = EMBEDDED.get(params.run.teacher)
    sampling = params.teacher_sampling
    k = sampling.top_k_logprobs
    if sampling.backend == "openai":
        if not sampling.base_url:
            raise ParamsError(f"{source}: teacher_sampling.base_url: the openai backend needs "
                              "the endpoint, e.g. http://127.0.0.1:8000/v1")
        if k > MAX_TOP_LOGPROBS:
            raise ParamsError(f"{source}: teacher_sampling.top_k_logprobs: an OpenAI-compatible "
                              f"API returns at most {MAX_TOP_LOGPROBS} log-probs per token, "
                              f"got {k}")
        address = urlsplit(sampling.base_url)
        if address.username or address.password or "key" in address.query.lower():
            raise ParamsError(f"{source}: teacher_sampling.base_url carries credentials; put "
                              "the key in the environment variable named by api_key_env "
                              "instead (params files are saved with every run)")
    if embedded and k > embedded.vocab_size:
        raise ParamsError(f"{source}: teacher_sampling.top_k_logprobs: {k} is larger than "
                          f"the teacher's vocabulary ({embedded.vocab_size})")
    training = params.student_training
    if training.ce_weight == 0 and training.kd_weight == 0:
        raise ParamsError(f"{source}: student_training: ce_weight and kd_weight are both 0; "
                          "set at least one above 0")
    if training.lmbda > 0 and training.kd_weight == 0:
        raise ParamsError(f"{source}: student_training.lmbda: on-policy batches are scored by "
                          "the teacher's distribution; set kd_weight above 0")
    pairs = training.hidden_layer_map
    if pairs is not None and not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(i, int) and i >= 0 for i in p)
            for p in pairs):
        raise ParamsError(f"{source}: student_training.hidden_layer_map: expected a list of "
                          f"[student layer, teacher layer] pairs, got {pairs!r}")
    weights = training.source_weights
    if not (set(weights) <= set(SOURCES) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
            for w in weights.values()) and any(w > 0 for w in weights.values())):
        raise ParamsError(f"{source}: student_training.source_weights: expected weights >= 0 "
                          f"for sources among {', '.join(SOURCES)}, at least one above 0; "
                          f"got {weights!r}")
    if training.keep == "best" and training.validation_size == 0:
        raise ParamsError(f"{source}: student_training.keep: best needs a validation slice; "
                          "set validation_size above 0")
    if (sampling.generic_samples or sampling.documents) and k == 0:
        raise ParamsError(f"{source}: teacher_sampling: generic_samples and documents record "
                          "the teacher's top-k; set top_k_logprobs above 0")
    if sampling.backend == "openai" and (sampling.generic_samples or sampling.documents):
        raise ParamsError(f"{source}: teacher_sampling: generic_samples and documents need the "
                          "local backend (an API scores no given text); set them to 0 / null")
    if sampling.watermark and sampling.backend == "openai":
        raise ParamsError(f"{source}: teacher_sampling.watermark: only a local teacher can be "
                          "sampled under a watermark (an endpoint samples for itself)")
    if sampling.watermark and training.needs_teacher:
        raise ParamsError(f"{source}: teacher_sampling.watermark marks the recorded samples, "
                          "but kd_source online, hidden_weight or lmbda read the teacher's "
                          "own, unmarked logits in stage 02; use kd_source topk, "
                          "hidden_weight 0 and lmbda 0")
    _check_tokenizers(training, embedded, source)
    layers = training.student_layers
    if layers is not None and training.prune_recipe != "alternate":
        raise ParamsError(f"{source}: student_training.student_layers names the layers "
                          f"itself; it goes with prune_recipe alternate, not "
                          f"{training.prune_recipe}")
    if layers is not None:
        if not layers or not all(isinstance(i, int) and i >= 0 for i in layers):
            raise ParamsError(f"{source}: student_training.student_layers: expected a non-empty "
                              f"list of layer indices >= 0, got {layers!r}")
        if embedded and max(layers) >= embedded.num_layers:
            raise ParamsError(f"{source}: student_training.student_layers: the teacher has "
                              f"{embedded.num_layers} layers (0..{embedded.num_layers - 1}), "
                              f"got {max(layers)}")


def _check_tokenizers(training, teacher, source: str) -> None:
    """A token-level objective must suit the student's tokenizer (when params can tell:
    embedded models; stage 02 checks the tokenizers themselves)."""
    student = EMBEDDED.get(training.student)
    crossing = teacher and student and teacher.tokenizer != student.tokenizer
    if training.cross_objective:
        if training.needs_teacher:
            raise ParamsError(f"{source}: student_training.kd_loss {training.kd_loss} aligns the "
                              "teacher's recorded tokens (offline): set kd_source topk, "
                              "hidden_weight 0 and lmbda 0")
        if training.temperature != 1:
            raise ParamsError(f"{source}: student_training.temperature: {training.kd_loss} "
                              "compares probabilities across tokenizers, unsoftened; set 1")
    elif crossing and training.kd_weight > 0:
        raise ParamsError(f"{source}: student_training.{objective_mismatch(training)}")


def objective_mismatch(training) -> str:
    """Why a same-tokenizer objective cannot train a student of another tokenizer, and
    what to use instead."""
    return (f"kd_loss {training.kd_loss} compares the teacher's and the student's "
            f"distributions token by token, but {training.student} has another tokenizer "
            f"than the teacher's: use a cross-tokenizer objective ("
            f"{', '.join(objective_names(cross=True))}), or sequence-level KD (kd_weight 0, "
            "ce_weight 1)")

"""Checks of a params file that need more than one key, or facts of the models named
(the embedded teacher's vocabulary and depth, the student's tokenizer), or what the
teacher backend can do. Run by `distill.core.params.load_params` after each key has
passed its own check."""

from __future__ import annotations

from .embedded import EMBEDDED
from .params_fields import (
    SOURCES,
    ParamsError,
    objective_names,
    teacher_backend_named,
    teacher_backend_names,
)


def check_across_sections(params, source: str) -> None:
    """Checks that need more than one key (or the teacher's vocabulary)."""
    embedded = EMBEDDED.get(params.run.teacher)
    sampling = params.teacher_sampling
    k = sampling.top_k_logprobs
    training = params.student_training
    if params.run.task == "asr" and params.run.heldout_seed is not None:
        raise ParamsError(f"{source}: run.heldout_seed: a speech set is planned from run.seed "
                          "alone (texts and voices together); set heldout_seed to null")
    check_teacher_backend(sampling, source, training)
    if embedded and k > embedded.vocab_size:
        raise ParamsError(f"{source}: teacher_sampling.top_k_logprobs: {k} is larger than "
                          f"the teacher's vocabulary ({embedded.vocab_size})")
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
    if sampling.watermark and training.needs_teacher:
        raise ParamsError(f"{source}: teacher_sampling.watermark marks the recorded samples, "
                          "but kd_source online, hidden_weight or lmbda read the teacher's "
                          "own, unmarked logits in stage 02; use kd_source topk, "
                          "hidden_weight 0 and lmbda 0")
    _check_tokenizers(training, embedded, source)
    if training.student_speedup is not None and training.student_size is not None:
        raise ParamsError(f"{source}: student_training: student_speedup and student_size are "
                          "two budgets for one student; set one of them (the other null)")
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


# what each capability of a teacher backend means, for the messages below
CAN = {"scores_text": "reads given text and returns its top-k",
       "logprobs": "returns top-k log-probs", "tokenizer": "runs in this process with the "
       "run's tokenizer"}


def _backends(capability: str) -> str:
    """'the local backend', 'the local or openai backend': those that can."""
    names = teacher_backend_names(capability)
    return f"the {' or '.join(names)} backend" if names else "no backend registered yet"


def check_teacher_backend(sampling, source: str, training=None) -> None:
    """The one place where what the teacher backend can do (its TeacherCapabilities)
    decides which keys it refuses, after the backend's checks of its own keys. `training`:
    the student_training section, where known (notebook 01 knows its own section only)."""
    backend = teacher_backend_named(sampling.backend)
    backend.check_params(sampling, source)
    can, k = backend.capabilities, sampling.top_k_logprobs
    if can.max_top_logprobs is not None and k > can.max_top_logprobs:
        raise ParamsError(f"{source}: teacher_sampling.top_k_logprobs: the {sampling.backend} "
                          f"backend returns at most {can.max_top_logprobs} log-probs per "
                          f"token, got {k}")
    # (capability, asked for, key, what needs it, what to do instead). The builtin
    # validation prose is no request: a teacher that reads no text leaves it out (01 says so).
    needs = [
        ("scores_text", bool(sampling.generic_samples or sampling.documents), "teacher_sampling",
         "sampling generic_samples or documents", "set them to 0 / null"),
        ("scores_text", sampling.validation_prose not in (None, "builtin"),
         "teacher_sampling.validation_prose", "reading prose to validate on",
         "set null (stage 02 then validates on its validation slice only)"),
        ("logprobs", k > 0, "teacher_sampling.top_k_logprobs", "recording the top-k",
         "set 0 (text only: sequence-level KD, kd_weight 0 and ce_weight 1)"),
        ("tokenizer", sampling.watermark, "teacher_sampling.watermark",
         "sampling under a watermark", "set watermark false"),
        ("tokenizer", training is not None and training.needs_teacher, "student_training",
         "training with the teacher in stage 02 (kd_source online, hidden_weight or lmbda)",
         "use kd_source topk, hidden_weight 0 and lmbda 0"),
    ]
    for capability, asked, key, need, instead in needs:
        if asked and not getattr(can, capability):
            raise ParamsError(f"{source}: {key}: {need} needs a teacher that "
                              f"{CAN[capability]} ({_backends(capability)}); the "
                              f"{sampling.backend} backend does not: {instead}")


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

"""The loss of one micro-batch, and the on-policy batches GKD trains on.

Kept apart from the loop (loop.py): what one batch costs and how the teacher signal
enters is the part people change when they try another objective.
"""

from __future__ import annotations

import contextlib

import torch

from ..core.params import StudentTrainingParams
from ..lm.chunked_head import distillation_loss_from_hidden
from ..lm.generation import generate
from ..lm.losses import IGNORE_INDEX, distillation_loss
from ..lm.models import layer_outputs
from ..lm.samples import CROSS_FIELDS, Example

# what a batch holds of the teacher: its cached top-k, and, for a student with another
# tokenizer, the aligned signal (distill.lm.cross_tokenizer)
TEACHER_FIELDS = ("topk_ids", "topk_logprobs", *(field[0] for field in CROSS_FIELDS))


def on_policy_examples(student, tokenizer, examples: list[Example], max_new_tokens: int,
                       temperature: float) -> list[Example]:
    """The batch's prompts completed by the student itself (sampled at `temperature`):
    the loss then covers exactly the tokens the student generated, and the teacher
    scores them online (GKD, Agarwal et al. 2024). No top-k: the teacher is present."""
    was_training = student.training
    student.eval()
    prompts = [e.input_ids[:e.prompt_length] for e in examples]
    outputs = generate(student, tokenizer, prompts, max_new_tokens=max_new_tokens,
                       do_sample=True, temperature=temperature)
    student.train(was_training)
    return [Example(prompt + out["completion_ids"],
                    [IGNORE_INDEX] * (len(prompt) - 1) + out["completion_ids"],
                    [[] for _ in out["completion_ids"]], [[] for _ in out["completion_ids"]])
            for prompt, out in zip(prompts, outputs)]



def _capture(model, hidden, side: int):
    """Capture the decoder-layer outputs that `hidden` compares (nothing without it)."""
    if hidden is None:
        return contextlib.nullcontext({})
    module = getattr(hidden, "module", hidden)
    return layer_outputs(getattr(model, "module", model), [pair[side] for pair in module.pairs])


def micro_batch_loss(session, batch: dict, config: StudentTrainingParams, *,
                     teacher_logits: bool) -> dict:
    """The training loss of one micro-batch and its parts (`session`: a loop.Session)."""
    student, teacher, hidden = session.student, session.teacher, session.hidden
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    # Only completion positions carry a loss. Projecting just the positions from the
    # batch's first completion token onwards through the LM head (`logits_to_keep`)
    # skips most prompt positions: that head is a third of this model's compute.
    start = int((batch["labels"] != IGNORE_INDEX).float().argmax(-1).min())
    keep = batch["input_ids"].shape[1] - start
    # the cross-tokenizer objectives read the whole distribution at chosen positions
    head_weight = None if config.cross_objective else \
        plain_head_weight(student, session.accelerator)
    with _capture(student, hidden, 0) as student_hidden:
        if head_weight is not None:  # the head is projected with the loss, in chunks
            student_output = student(**inputs, output_hidden_states=True, logits_to_keep=1)
            student_final = student_output.hidden_states[-1][:, start:-1]
        else:
            student_logits = student(**inputs, logits_to_keep=keep).logits[:, :-1]
    teacher_output, teacher_hidden = None, {}
    if teacher is not None and (teacher_logits or hidden is not None):
        with torch.no_grad(), session.accelerator.autocast(), \
                _capture(teacher, hidden, 1) as teacher_hidden:
            teacher_output = teacher(**inputs, logits_to_keep=keep).logits[:, :-1]
    signal = {"logits": teacher_output if teacher_logits else None,
              **{key: batch[key][:, start:] for key in TEACHER_FIELDS if key in batch}}
    objective = {"ce_weight": config.ce_weight, "kd_weight": config.kd_weight,
                 "temperature": config.temperature, "kd_loss": config.kd_loss,
                 "options": config.objective_options}
    labels = batch["labels"][:, start:]
    if head_weight is not None:
        with session.accelerator.autocast():  # the head in the run's precision, as inside
            parts = distillation_loss_from_hidden(student_final, head_weight, labels, signal,
                                                  **objective)
    else:
        parts = distillation_loss(student_logits, labels, signal, **objective)
    if hidden is not None:
        # hidden states at input positions 0..L-2 line up with labels (next tokens)
        kept = batch["labels"] != IGNORE_INDEX
        parts["hidden"] = hidden({k: v[:, :-1] for k, v in student_hidden.items()},
                                 {k: v[:, :-1] for k, v in teacher_hidden.items()}, kept)
        parts["loss"] = parts["loss"] + config.hidden_weight * parts["hidden"]
    return parts


# Project the LM head with the loss where it is a plain linear map (False: whole, as a
# model's forward does; benchmarks compare the two).
CHUNK_HEAD = True


def plain_head_weight(model, accelerator=None):
    """The LM head's weight where logits are exactly hidden @ W^T (a Linear without bias,
    no soft-capping or scaling, as in Llama, Qwen, Mistral); else None, and the
    training step projects the head the ordinary way. Also None where the weights are
    sharded across processes (FSDP, DeepSpeed): there only the model's own forward
    gathers them."""
    model = getattr(model, "module", model)
    head, config = model.get_output_embeddings(), model.config
    if not CHUNK_HEAD or (accelerator is not None and weights_sharded(accelerator)):
        return None
    scaled = any(getattr(config, name, None) not in (None, 1, 1.0) for name in
                 ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if isinstance(head, torch.nn.Linear) and head.bias is None and not scaled:
        return head.weight
    return None


def weights_sharded(accelerator) -> bool:
    """Whether the weights may be split across processes (FSDP, DeepSpeed), so that
    every process must take part in each forward pass and in gathering a state dict."""
    return str(accelerator.distributed_type).split(".")[-1] in ("FSDP", "DEEPSPEED")

"""The training loop of stage 02: plain PyTorch driven by `accelerate`.

`train(student, examples, run_dir, config)` is three visible parts: `prepare`
(optimizer, schedule, accelerate), `resume` (the newest checkpoint, if any) and
`train_step`, repeated. One optimizer step = `grad_accum` micro-batches of
`batch_size` sequences. The data order is a seeded permutation per epoch, so the
step number alone says which batches come next: a run resumed from a checkpoint
sees exactly the batches it would have seen. Under `accelerate launch` each
process takes its share of every micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .chunked_head import distillation_loss_from_hidden
from .generation import generate
from .losses import IGNORE_INDEX, HiddenStateLoss, distillation_loss
from .measure import peak_memory_mb
from .models import default_layer_map, layer_outputs
from .params import StudentTrainingParams
from .runs import CHECKPOINTS, TRAIN_LOG, atomic_dir, atomic_file
from .samples import Example, collate, epoch_order, length_grouped
from .validation import load_best, save_best, topk_fidelity


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / CHECKPOINTS).glob("step-*")
             if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return max(found) if found else None


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


@dataclass
class Session:
    """Everything one training run holds between steps."""
    accelerator: object
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    hidden: HiddenStateLoss | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    trained: list  # the parameters the optimizer updates (student, hidden projections)
    total_steps: int
    micro_per_epoch: int


def prepare(student, n_examples: int, config: StudentTrainingParams, seed: int,
            teacher=None) -> Session:
    """Optimizer, schedule and hidden-state projections, all handed to `accelerate`
    (device placement, mixed precision, sharding under `accelerate launch`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_cosine_schedule_with_warmup

    if teacher is None and config.needs_teacher:
        raise ValueError("kd_source='online', hidden_weight > 0 and lmbda > 0 need the teacher")
    # Accelerate's state is a process-wide singleton; reset it so a second call
    # (a benchmark, a test, a re-run cell) may choose another mixed precision.
    AcceleratorState._reset_state(reset_partial_state=True)
    # mixed_precision None (follow run.precision) is resolved by the caller; alone, fp32
    accelerator = Accelerator(mixed_precision=config.mixed_precision or "no",
                              cpu=not torch.cuda.is_available())
    torch.manual_seed(seed)
    hidden = None
    if config.hidden_weight:
        pairs = config.hidden_layer_map or default_layer_map(student, teacher)
        hidden = HiddenStateLoss(pairs, student.config.hidden_size, teacher.config.hidden_size,
                                 config.hidden_loss)
    micro_per_epoch = math.ceil(n_examples / config.batch_size)
    total_steps = config.max_steps or math.ceil(config.epochs * micro_per_epoch
                                                / config.grad_accum)
    trained = list(student.parameters()) + (list(hidden.parameters()) if hidden else [])
    optimizer = adamw(trained, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, min(config.warmup_steps, total_steps), total_steps)
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    if hidden is not None:
        hidden = accelerator.prepare_model(hidden)
    if teacher is not None:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
    return Session(accelerator, student, teacher, hidden, optimizer, scheduler, trained,
                   total_steps, micro_per_epoch)


def resume(session: Session, run_dir: Path) -> tuple[int, list[dict]]:
    """Restore the newest checkpoint of the run folder, if any: weights, optimizer,
    schedule and RNG state. Returns (steps already done, their log rows)."""
    if (checkpoint := latest_checkpoint(run_dir)) is None:
        return 0, []
    step, path = checkpoint
    session.accelerator.load_state(str(path))
    # load_state restores the optimizer's last learning rate; a resumed run with
    # another length (max_steps, epochs) must follow its own schedule instead.
    inner = getattr(session.scheduler, "scheduler", session.scheduler)
    for group, base_lr, factor in zip(session.optimizer.param_groups, inner.base_lrs,
                                      inner.lr_lambdas):
        group["lr"] = base_lr * factor(inner.last_epoch)
    log_path = Path(run_dir) / TRAIN_LOG
    log = pd.read_csv(log_path).query("step <= @step").to_dict("records") \
        if log_path.exists() else []
    session.accelerator.print(f"Resumed from {path} (step {step} of {session.total_steps})")
    return step, log


def train_step(session: Session, examples: list[Example], step: int,
               config: StudentTrainingParams, seed: int, pad_id: int, tokenizer=None,
               order_cache: dict | None = None) -> dict:
    """One optimizer step of `grad_accum` micro-batches; returns its log row. The
    micro-batches come from the epoch's seeded order, so the step number alone says
    which they are (and whether each is on-policy): a resumed run sees the same."""
    accelerator, started = session.accelerator, time.perf_counter()
    tokens, on_policy, parts_sum = 0, 0, {}
    order_cache = {} if order_cache is None else order_cache
    for micro in range(config.grad_accum):
        epoch, index = divmod(step * config.grad_accum + micro, session.micro_per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            order = epoch_order([e.source for e in examples], config.source_weights, seed, epoch)
            order_cache[epoch] = length_grouped([len(e.input_ids) for e in examples], order,
                                                config.batch_size, seed + epoch)
        ids = order_cache[epoch][index][accelerator.process_index::accelerator.num_processes]
        chosen = [examples[i] for i in ids]
        # a coin per micro-batch from its own seed: the same on resume
        coin = torch.rand(1, generator=torch.Generator().manual_seed(
            seed * 1_000_003 + step * config.grad_accum + micro)).item()
        if coin < config.lmbda:
            chosen = on_policy_examples(accelerator.unwrap_model(session.student), tokenizer,
                                        chosen, config.on_policy_max_new_tokens,
                                        config.on_policy_temperature)
            on_policy += 1
        batch = {k: v.to(accelerator.device) for k, v in collate(chosen, pad_id).items()}
        parts = _loss(session, batch, config,
                      teacher_logits=config.teaches_online or coin < config.lmbda)
        accelerator.backward(parts["loss"] / config.grad_accum)
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        for name, value in parts.items():
            parts_sum[name] = parts_sum.get(name, 0.0) + float(value.detach()) / config.grad_accum
    grad_norm = accelerator.clip_grad_norm_(session.trained, config.max_grad_norm)
    session.optimizer.step()
    session.scheduler.step()
    session.optimizer.zero_grad()
    seconds = time.perf_counter() - started
    return {"step": step + 1,
            "epoch": (step + 1) * config.grad_accum / session.micro_per_epoch,
            "lr": session.scheduler.get_last_lr()[0], **parts_sum,
            "grad_norm": float(grad_norm), "on_policy_batches": on_policy, "tokens": tokens,
            "seconds": seconds, "tokens_per_second": tokens / seconds,
            "peak_memory_mb": peak_memory_mb()}


def train(student, examples: list[Example], run_dir: Path, config: StudentTrainingParams, *,
          seed: int = 0, teacher=None, tokenizer=None,
          validation: dict[str, list[Example]] | None = None) -> pd.DataFrame:
    """Distil into `student` (in place) from `examples`, as `config` (the
    student_training params) says. The teacher signal is the cached top-k
    (kd_source='topk') or `teacher`'s full logits ('online'); with hidden_weight > 0
    hidden states are matched too, and with lmbda > 0 each micro-batch is, with
    probability lmbda, replaced by the student's own completions scored by the teacher
    (both need `teacher`; on-policy also `tokenizer`). Padding uses the tokenizer's pad
    id (its value is masked out either way). Resumes from the newest checkpoint in the
    run folder. `validation` names slices of examples with the teacher's top-k (e.g.
    {'val': ..., 'prose': ...}): every `validation_every` steps and at the end the
    student's KL and top-1 agreement on each go into the log (`val_kl`, `val_top1`,
    ...), and with keep='best' the student ends with the weights of its lowest first
    slice KL. Returns the log, one row per optimizer step."""
    epoch_size = len(epoch_order([e.source for e in examples], config.source_weights, seed, 0))
    if epoch_size == 0:
        raise ValueError("student_training.source_weights leave no training sample: the "
                         f"sources here are {sorted({e.source for e in examples})}")
    session = prepare(student, epoch_size, config, seed, teacher)
    start_step, log = resume(session, run_dir)
    pad_id = (tokenizer.pad_token_id if tokenizer is not None else None) or 0
    session.student.train()
    progress = tqdm(range(start_step, session.total_steps), initial=start_step,
                    total=session.total_steps, desc="training", unit="step",
                    disable=not session.accelerator.is_main_process)
    order_cache: dict[int, list[list[int]]] = {}
    for step in progress:
        log.append(train_step(session, examples, step, config, seed, pad_id, tokenizer,
                              order_cache))
        progress.set_postfix(loss=f"{log[-1]['loss']:.4f}")
        last = step + 1 == session.total_steps
        if validation and ((step + 1) % config.validation_every == 0 or last):
            log[-1].update(_validate(session, validation, pad_id, run_dir, log, config.keep))
        if (step + 1) % config.checkpoint_every == 0 or last:
            _checkpoint(session.accelerator, run_dir, step + 1, pd.DataFrame(log),
                        Path(run_dir) / TRAIN_LOG)
    progress.close()
    session.student.eval()
    if validation and config.keep == "best":
        load_best(session.accelerator.unwrap_model(session.student), run_dir)
    return pd.DataFrame(log)


def _validate(session: Session, slices: dict, pad_id: int, run_dir: Path, log: list,
              keep: str) -> dict:
    """KL and top-1 agreement on each validation slice; with keep='best', the weights
    of a new lowest KL on the first slice are saved (see `validation.save_best`)."""
    model = session.accelerator.unwrap_model(session.student)
    with session.accelerator.autocast():
        scores = {name: topk_fidelity(model, examples, pad_id) for name, examples in slices.items()}
    row = {f"{name}_{key}": value for name, score in scores.items()
           for key, value in (("kl", score["kl"]), ("top1", score["top1_agreement"]))}
    first = f"{next(iter(slices))}_kl"
    earlier = [r[first] for r in log[:-1]  # resumed logs hold NaN between validations
               if first in r and not math.isnan(r[first])]
    if keep == "best" and session.accelerator.is_main_process and \
            (not earlier or row[first] < min(earlier)):
        save_best(model, run_dir)
    return row


def adamw(parameters, **settings) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch and device have one: one pass over
    the weights instead of several: several times faster per step for the 81 M-parameter
    student on the 2-core CPU (benchmarks/optimizer_step.py)."""
    try:
        return torch.optim.AdamW(parameters, fused=True, **settings)
    except (RuntimeError, ValueError):  # no fused kernel here: the default implementation
        return torch.optim.AdamW(parameters, **settings)


def _capture(model, hidden, side: int):
    """Capture the decoder-layer outputs that `hidden` compares (nothing without it)."""
    if hidden is None:
        return contextlib.nullcontext({})
    module = getattr(hidden, "module", hidden)
    return layer_outputs(getattr(model, "module", model), [pair[side] for pair in module.pairs])


def _loss(session: Session, batch: dict, config: StudentTrainingParams, *,
          teacher_logits: bool) -> dict:
    """The training loss of one micro-batch and its parts."""
    student, teacher, hidden = session.student, session.teacher, session.hidden
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    # Only completion positions carry a loss. Projecting just the positions from the
    # batch's first completion token onwards through the LM head (`logits_to_keep`)
    # skips most prompt positions: that head is a third of this model's compute.
    start = int((batch["labels"] != IGNORE_INDEX).float().argmax(-1).min())
    keep = batch["input_ids"].shape[1] - start
    head_weight = _plain_head_weight(student)
    with _capture(student, hidden, 0) as student_hidden:
        if head_weight is not None:  # the head is projected with the loss, in chunks
            student_output = student(**inputs, output_hidden_states=True, logits_to_keep=1)
            student_final = student_output.hidden_states[-1][:, start:-1]
        else:
            student_logits = student(**inputs, logits_to_keep=keep).logits[:, :-1]
    teacher_output, teacher_hidden = None, {}
    if teacher is not None and (teacher_logits or hidden is not None):
        with torch.no_grad(), _capture(teacher, hidden, 1) as teacher_hidden:
            teacher_output = teacher(**inputs, logits_to_keep=keep).logits[:, :-1]
    signal = {"logits": teacher_output if teacher_logits else None,
              "topk_ids": batch["topk_ids"][:, start:],
              "topk_logprobs": batch["topk_logprobs"][:, start:]}
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


def _plain_head_weight(model):
    """The LM head's weight where logits are exactly hidden @ W^T (a Linear without bias,
    no soft-capping or scaling, as in Llama, Qwen, Mistral); else None, and the
    training step projects the head the ordinary way."""
    model = getattr(model, "module", model)
    head, config = model.get_output_embeddings(), model.config
    if not CHUNK_HEAD:
        return None
    scaled = any(getattr(config, name, None) not in (None, 1, 1.0) for name in
                 ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if isinstance(head, torch.nn.Linear) and head.bias is None and not scaled:
        return head.weight
    return None


def _checkpoint(accelerator, run_dir: Path, step: int, log: pd.DataFrame, log_path: Path):
    """Save model, optimizer, scheduler and RNG state; keep only the newest checkpoint."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    previous = latest_checkpoint(run_dir)
    with atomic_dir(Path(run_dir) / CHECKPOINTS / f"step-{step:06d}") as tmp:
        accelerator.save_state(str(tmp))
    with atomic_file(log_path) as handle:
        log.to_csv(handle, index=False)
    if previous is not None and previous[0] != step:
        shutil.rmtree(previous[1], ignore_errors=True)

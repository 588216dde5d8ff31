"""The training loop of stage 02: plain PyTorch driven by `accelerate`.

`train(student, examples, run_dir, config)` is three visible parts: `prepare`
(optimizer, schedule, accelerate), `resume` (the newest checkpoint, if any) and
`train_step`, repeated. One optimizer step = `grad_accum` micro-batches of
`batch_size` sequences. The data order is a seeded permutation per epoch, so the
step number alone says which batches come next: a run resumed from a checkpoint
sees exactly the batches it would have seen.

Under `accelerate launch` (launcher.py) each process takes its share of every
micro-batch, and the loss is weighted so the run equals a one-process run with the
same global batch: each process's mean is scaled by its share of the micro-batch's
tokens, so the gradient DDP averages is the mean over all the batch's tokens.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.measure import peak_memory_mb
from ..core.params import StudentTrainingParams
from ..core.precision import accelerate_mixed_precision, autocast_mode
from ..core.runs import CHECKPOINTS, TRAIN_LOG, atomic_file
from ..lm.losses import IGNORE_INDEX, HiddenStateLoss
from ..lm.models import default_layer_map, save_model
from ..lm.samples import Example, collate, epoch_order, length_grouped
from ..lm.validation import load_best, save_best, topk_fidelity
from .batch_loss import micro_batch_loss, on_policy_examples, weights_sharded


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / CHECKPOINTS).glob("step-*")
             if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return max(found) if found else None


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
            teacher=None, precision: str | None = None) -> Session:
    """Optimizer, schedule and hidden-state projections, all handed to `accelerate`
    (device placement, mixed precision, sharding under `accelerate launch`). Training
    autocasts to `config.mixed_precision` where set, else to `precision` (the run's
    choice), else not at all (fp32)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration
    from transformers import get_cosine_schedule_with_warmup

    if teacher is None and config.needs_teacher:
        raise ValueError("kd_source='online', hidden_weight > 0 and lmbda > 0 need the teacher")
    # Accelerate's state is a process-wide singleton; reset it so a second call
    # (a benchmark, a test, a re-run cell) may choose another mixed precision.
    AcceleratorState._reset_state(reset_partial_state=True)
    # split_batches: each process takes a share of one global micro-batch (train_step),
    # so the schedule advances once per optimizer step, not once per process
    accelerator = Accelerator(mixed_precision=accelerate_mixed_precision(
                                  autocast_mode(precision or "fp32", config.mixed_precision)),
                              cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    torch.manual_seed(seed)
    hidden = None
    if config.hidden_weight:
        pairs = config.hidden_layer_map or default_layer_map(student, teacher)
        hidden = HiddenStateLoss(pairs, student.config.hidden_size, teacher.config.hidden_size,
                                 config.hidden_loss)
    micro_per_epoch = math.ceil(n_examples / config.batch_size)
    total_steps = config.max_steps or math.ceil(config.epochs * micro_per_epoch
                                                / config.grad_accum)
    optimizer = adamw(list(student.parameters()) + (list(hidden.parameters()) if hidden else []),
                      lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, min(config.warmup_steps, total_steps), total_steps)
    if accelerator.state.deepspeed_plugin is not None:
        _fit_deepspeed(accelerator.state.deepspeed_plugin, config, accelerator.num_processes)
    if weights_sharded(accelerator) and (config.keep == "best" or config.lmbda > 0
                                         or config.hidden_weight > 0):
        # best weights are kept unsharded; on-policy decoding runs a different number of
        # forward passes per process (each a collective there); the hidden projections
        # are a second trained module
        raise ValueError("with FSDP or DeepSpeed, student_training needs keep='last', "
                         "lmbda=0 and hidden_weight=0")
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    if hidden is not None:
        hidden = accelerator.prepare_model(hidden)
    # clipped after `prepare`: FSDP clips only through the parameters of its own wrapper
    trained = list(student.parameters()) + (list(hidden.parameters()) if hidden else [])
    if teacher is not None:  # on the device, not registered: checkpoints hold no teacher
        teacher = teacher.to(accelerator.device).eval()
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
    """One optimizer step of `grad_accum` micro-batches; returns its log row (losses
    and token counts of the whole batch, the same in every process). The micro-batches
    come from the epoch's seeded order, so the step number alone says which they are
    (and whether each is on-policy): a resumed run sees the same."""
    accelerator, started = session.accelerator, time.perf_counter()
    processes = accelerator.num_processes
    tokens, on_policy, parts_sum = 0, 0, {}
    order_cache = {} if order_cache is None else order_cache
    for micro in range(config.grad_accum):
        epoch, index = divmod(step * config.grad_accum + micro, session.micro_per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            order = epoch_order([e.source for e in examples], config.source_weights, seed, epoch)
            order_cache[epoch] = length_grouped([len(e.input_ids) for e in examples], order,
                                                config.batch_size, seed + epoch)
        whole = order_cache[epoch][index]
        ids = whole[accelerator.process_index::processes]
        # a process left without examples (a short last batch) still joins the gradient
        # all-reduce: with one example and weight 0, it adds nothing
        chosen = [examples[i] for i in ids or whole[:1]]
        # a coin per micro-batch from its own seed: the same on resume and in every process
        coin = torch.rand(1, generator=torch.Generator().manual_seed(
            seed * 1_000_003 + step * config.grad_accum + micro)).item()
        if coin < config.lmbda:
            chosen = on_policy_examples(accelerator.unwrap_model(session.student), tokenizer,
                                        chosen, config.on_policy_max_new_tokens,
                                        config.on_policy_temperature)
            on_policy += 1
        batch = {k: v.to(accelerator.device) for k, v in collate(chosen, pad_id).items()}
        parts = micro_batch_loss(session, batch, config,
                                 teacher_logits=config.teaches_online or coin < config.lmbda)
        local = int((batch["labels"] != IGNORE_INDEX).sum()) if ids else 0
        total = local if processes == 1 else int(accelerator.reduce(
            torch.tensor([local], device=accelerator.device), "sum").item())
        weight = local * processes / max(total, 1)  # 1 in a single process
        accelerator.backward(parts["loss"] * weight / config.grad_accum)
        tokens += total
        for name, value in parts.items():
            parts_sum[name] = parts_sum.get(name, 0.0) + \
                float(value.detach()) * weight / config.grad_accum
    if processes > 1:  # the batch's loss: the mean of the processes' weighted parts
        names = sorted(parts_sum)
        mean = accelerator.reduce(torch.tensor([parts_sum[n] for n in names],
                                               device=accelerator.device), "mean")
        parts_sum = dict(zip(names, mean.tolist()))
    grad_norm = accelerator.clip_grad_norm_(session.trained, config.max_grad_norm)
    session.optimizer.step()
    session.scheduler.step()
    session.optimizer.zero_grad()
    seconds = time.perf_counter() - started
    return {"step": step + 1,
            "epoch": (step + 1) * config.grad_accum / session.micro_per_epoch,
            "lr": session.scheduler.get_last_lr()[0], **parts_sum,
            # DeepSpeed clips inside its engine and reports no norm
            "grad_norm": math.nan if grad_norm is None else float(grad_norm),
            "on_policy_batches": on_policy, "tokens": tokens,
            "seconds": seconds, "tokens_per_second": tokens / seconds,
            "peak_memory_mb": peak_memory_mb()}


def train(student, examples: list[Example], run_dir: Path, config: StudentTrainingParams, *,
          seed: int = 0, teacher=None, tokenizer=None,
          validation: dict[str, list[Example]] | None = None,
          on_step: Callable[[dict, int], None] | None = None,
          save_to: Path | None = None, precision: str | None = None) -> pd.DataFrame:
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
    slice KL. `on_step(row, total_steps)`, if given, is called in the main process after
    each step instead of drawing a progress bar. With `save_to`, the main process saves
    the final student there with the tokenizer (the weights gathered from every process
    where they are sharded). Returns the log, one row per optimizer step."""
    epoch_size = len(epoch_order([e.source for e in examples], config.source_weights, seed, 0))
    if epoch_size == 0:
        raise ValueError("student_training.source_weights leave no training sample: the "
                         f"sources here are {sorted({e.source for e in examples})}")
    session = prepare(student, epoch_size, config, seed, teacher, precision)
    start_step, log = resume(session, run_dir)
    pad_id = (tokenizer.pad_token_id if tokenizer is not None else None) or 0
    session.student.train()
    progress = tqdm(range(start_step, session.total_steps), initial=start_step,
                    total=session.total_steps, desc="training", unit="step",
                    disable=on_step is not None or not session.accelerator.is_main_process)
    order_cache: dict[int, list[list[int]]] = {}
    for step in progress:
        log.append(train_step(session, examples, step, config, seed, pad_id, tokenizer,
                              order_cache))
        progress.set_postfix(loss=f"{log[-1]['loss']:.4f}")
        last = step + 1 == session.total_steps
        if validation and ((step + 1) % config.validation_every == 0 or last):
            log[-1].update(_validate(session, validation, pad_id, run_dir, log, config.keep))
        if (step + 1) % config.checkpoint_every == 0 or last:
            checkpoint(session.accelerator, run_dir, step + 1, pd.DataFrame(log),
                        Path(run_dir) / TRAIN_LOG)
        if on_step is not None and session.accelerator.is_main_process:
            on_step(log[-1], session.total_steps)
    progress.close()
    session.student.eval()
    session.accelerator.wait_for_everyone()  # the main process has written the best
    if validation and config.keep == "best":
        load_best(session.accelerator.unwrap_model(session.student), run_dir)
    if save_to is not None:
        state = session.accelerator.get_state_dict(session.student)  # every process joins
        if session.accelerator.is_main_process:
            save_model(session.accelerator.unwrap_model(session.student), tokenizer, save_to,
                       state)
    return pd.DataFrame(log)


def _validate(session: Session, slices: dict, pad_id: int, run_dir: Path, log: list,
              keep: str) -> dict:
    """KL and top-1 agreement on each validation slice, measured by the main process
    and shared with the others (measured by all where the weights are sharded: each
    forward needs every process); with keep='best', the weights of a new lowest KL on
    the first slice are saved (see `validation.save_best`)."""
    from accelerate.utils import broadcast_object_list

    accelerator, row = session.accelerator, None
    if accelerator.is_main_process or weights_sharded(accelerator):
        model = accelerator.unwrap_model(session.student)
        with accelerator.autocast():
            scores = {name: topk_fidelity(model, examples, pad_id)
                      for name, examples in slices.items()}
        row = {f"{name}_{key}": value for name, score in scores.items()
               for key, value in (("kl", score["kl"]), ("top1", score["top1_agreement"]))}
        first = f"{next(iter(slices))}_kl"
        earlier = [r[first] for r in log[:-1]  # resumed logs hold NaN between validations
                   if first in r and not math.isnan(r[first])]
        if keep == "best" and (not earlier or row[first] < min(earlier)):
            save_best(model, run_dir)
    if accelerator.num_processes > 1 and not weights_sharded(accelerator):
        row = broadcast_object_list([row])[0]
    return row


def adamw(parameters, **settings) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch and device have one: one pass over
    the weights instead of several: several times faster per step for the 81 M-parameter
    student on the 2-core CPU (benchmarks/optimizer_step.py)."""
    try:
        return torch.optim.AdamW(parameters, fused=True, **settings)
    except (RuntimeError, ValueError):  # no fused kernel here: the default implementation
        return torch.optim.AdamW(parameters, **settings)


def checkpoint(accelerator, run_dir: Path, step: int, log: pd.DataFrame, log_path: Path):
    """Save model, optimizer, scheduler and RNG state; keep only the newest checkpoint.
    Every process saves (its RNG state; its shard under FSDP or DeepSpeed) into one
    temporary folder, which the main process then renames into place, so a killed run
    never leaves a half-written checkpoint behind."""
    final = Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"
    tmp = final.with_name(f".{final.name}.tmp")  # a name every process agrees on
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        previous = latest_checkpoint(run_dir)
        # the log first: a checkpoint in place always has its log rows (resume keeps the
        # rows up to its step)
        with atomic_file(log_path) as handle:
            log.to_csv(handle, index=False)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if previous is not None and previous[0] != step:
            shutil.rmtree(previous[1], ignore_errors=True)
    accelerator.wait_for_everyone()


def _fit_deepspeed(plugin, config: StudentTrainingParams, processes: int) -> None:
    """DeepSpeed sizes its engine from a data loader; this loop has none, so the
    micro-batch per process is set here. Its engine also steps the optimizer inside
    `backward`, which this loop's own accumulation would repeat."""
    if config.grad_accum != 1:
        raise ValueError("student_training.grad_accum must be 1 under DeepSpeed (its engine "
                         "accumulates by itself); raise batch_size or processes instead")
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = \
        max(1, config.batch_size // processes)

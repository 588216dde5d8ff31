"""The training loop: plain PyTorch driven by `accelerate`.

One optimizer step = `grad_accum` micro-batches of `batch_size` sequences. The
data order is a seeded permutation per epoch, so the step number alone says
which batches come next: a run resumed from a checkpoint sees exactly the
batches it would have seen. Under `accelerate launch` each process takes its
share of every micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .losses import IGNORE_INDEX, HiddenStateLoss, distillation_loss
from .measure import peak_memory_mb
from .models import default_layer_map, layer_outputs
from .runs import CHECKPOINTS, TRAIN_LOG, atomic_dir, atomic_file
from .sampling import generate


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # aligned with logits[:-1]: target of position t, or -100
    topk_ids: list[list[int]]  # one row per completion token
    topk_logprobs: list[list[float]]

    @property
    def prompt_length(self) -> int:
        """Tokens before the completion: one more than the leading ignored labels."""
        return next(i for i, label in enumerate(self.labels) if label != IGNORE_INDEX) + 1


def build_examples(samples: pd.DataFrame, need_topk: bool = False) -> list[Example]:
    """Training sequences from teacher samples: prompt + completion, loss on the
    completion only. Rows with an empty completion carry no signal and are dropped.

    Samples without top-k log-probs (a text-only API teacher, top_k_logprobs 0)
    serve sequence-level KD and online KD. With `need_topk` (offline token-level KD)
    they are dropped, and having none with top-k is an error that says what to do."""
    examples, without_topk = [], 0
    for row in samples.itertuples():
        # Parquet gives numpy arrays; .tolist() makes the Python ints tokenizers expect
        prompt, completion = np.asarray(row.prompt_ids).tolist(), \
            np.asarray(row.completion_ids).tolist()
        if not completion:
            continue
        if len(row.topk_ids) == 0:
            without_topk += 1
            if need_topk:
                continue
            topk_ids, topk_logprobs = [[] for _ in completion], [[] for _ in completion]
        else:
            topk_ids, topk_logprobs = np.stack(row.topk_ids).tolist(), \
                np.stack(row.topk_logprobs).tolist()
        labels = [IGNORE_INDEX] * (len(prompt) - 1) + completion
        examples.append(Example(prompt + completion, labels, topk_ids, topk_logprobs))
    if need_topk and without_topk:
        if not examples:
            raise ValueError(
                "the teacher samples carry no top-k log-probs (text only: an API without "
                "logprobs, another tokenizer, or top_k_logprobs 0), which offline token-level "
                "KD needs. Train sequence-level instead (student_training.kd_weight=0, "
                "ce_weight=1), or use kd_source=online with a local teacher.")
        print(f"{without_topk} samples without top-k log-probs skipped (token-level KD)")
    if not examples:
        raise ValueError("no training examples: every teacher completion is empty")
    return examples


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch. `topk_*` hold the teacher's top-k at every target position
    (zeros where labels are -100 or the sample has no top-k; the losses never read
    those)."""
    length = max(len(e.input_ids) for e in examples)
    k = max(len(e.topk_ids[0]) for e in examples)
    batch = {"input_ids": torch.full((len(examples), length), pad_id),
             "attention_mask": torch.zeros(len(examples), length, dtype=torch.long),
             "labels": torch.full((len(examples), length - 1), IGNORE_INDEX),
             "topk_ids": torch.zeros(len(examples), length - 1, k, dtype=torch.long),
             "topk_logprobs": torch.zeros(len(examples), length - 1, k)}
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        batch["input_ids"][row, :n] = torch.tensor(example.input_ids)
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n - 1] = torch.tensor(example.labels)
        if len(example.topk_ids[0]) == k > 0:
            start = n - 1 - len(example.topk_ids)  # first completion target position
            batch["topk_ids"][row, start:n - 1] = torch.tensor(example.topk_ids)
            batch["topk_logprobs"][row, start:n - 1] = torch.tensor(example.topk_logprobs)
    return batch


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch))
    return [order[i:i + batch_size].tolist() for i in range(0, n_examples, batch_size)]


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


def train(student, examples: list[Example], run_dir: Path, *, pad_id: int, seed: int,
          epochs: int, max_steps: int | None, batch_size: int, grad_accum: int, lr: float,
          warmup_steps: int, weight_decay: float, max_grad_norm: float, mixed_precision: str,
          checkpoint_every: int, ce_weight: float, kd_weight: float, temperature: float,
          kd_loss: str = "forward_kl", kd_beta: float = 0.5, kd_alpha: float = 0.1,
          kd_source: str = "topk", hidden_weight: float = 0.0, hidden_loss: str = "cosine",
          hidden_layer_map: list | None = None, lmbda: float = 0.0,
          on_policy_max_new_tokens: int = 64, on_policy_temperature: float = 1.0,
          teacher=None, tokenizer=None) -> pd.DataFrame:
    """Distil into `student` from `examples`. The teacher signal is the cached top-k
    (kd_source='topk') or `teacher`'s full logits ('online'); with hidden_weight > 0
    hidden states are matched too, and with lmbda > 0 each micro-batch is, with
    probability lmbda, replaced by the student's own completions scored by the teacher
    (both need `teacher`; on-policy also `tokenizer`). Resumes from the last checkpoint
    in the run folder. Returns the log (one row per optimizer step); trains in place."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_cosine_schedule_with_warmup

    if teacher is None and (kd_source == "online" or hidden_weight or lmbda):
        raise ValueError("kd_source='online', hidden_weight > 0 and lmbda > 0 need the teacher")
    # Accelerate's state is a process-wide singleton; reset it so a second call
    # (a benchmark, a test, a re-run cell) may choose another mixed precision.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    torch.manual_seed(seed)
    objective = {"ce_weight": ce_weight, "kd_weight": kd_weight, "temperature": temperature,
                 "kd_loss": kd_loss, "kd_beta": kd_beta, "kd_alpha": kd_alpha}
    hidden = None
    if hidden_weight:
        pairs = hidden_layer_map or default_layer_map(student, teacher)
        hidden = HiddenStateLoss(pairs, student.config.hidden_size, teacher.config.hidden_size,
                                 hidden_loss)
    micro_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = max_steps or math.ceil(epochs * micro_per_epoch / grad_accum)
    trained = list(student.parameters()) + (list(hidden.parameters()) if hidden else [])
    optimizer = adamw(trained, lr=lr, weight_decay=weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(warmup_steps, total_steps),
                                                total_steps)
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    if hidden is not None:
        hidden = accelerator.prepare_model(hidden)
    if teacher is not None:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True)

    log_path = Path(run_dir) / TRAIN_LOG
    start_step, log = 0, []
    if (checkpoint := latest_checkpoint(run_dir)) is not None:
        start_step, path = checkpoint
        accelerator.load_state(str(path))
        # load_state restores the optimizer's last learning rate; a resumed run with
        # another length (max_steps, epochs) must follow its own schedule instead.
        inner = getattr(scheduler, "scheduler", scheduler)
        for group, base_lr, factor in zip(optimizer.param_groups, inner.base_lrs,
                                          inner.lr_lambdas):
            group["lr"] = base_lr * factor(inner.last_epoch)
        if log_path.exists():
            log = pd.read_csv(log_path).query("step <= @start_step").to_dict("records")
        accelerator.print(f"Resumed from {path} (step {start_step} of {total_steps})")

    student.train()
    progress = tqdm(range(start_step, total_steps), initial=start_step, total=total_steps,
                    desc="training", unit="step", disable=not accelerator.is_main_process)
    order_cache: dict[int, list[list[int]]] = {}
    for step in progress:
        started, tokens, on_policy, parts_sum = time.perf_counter(), 0, 0, {}
        for micro in range(grad_accum):
            epoch, index = divmod(step * grad_accum + micro, micro_per_epoch)
            if epoch not in order_cache:
                order_cache = {epoch: epoch_batches(len(examples), batch_size, seed, epoch)}
            ids = order_cache[epoch][index][accelerator.process_index::accelerator.num_processes]
            chosen = [examples[i] for i in ids]
            # a coin per micro-batch from its own seed: the same on resume
            coin = torch.rand(1, generator=torch.Generator().manual_seed(
                seed * 1_000_003 + step * grad_accum + micro)).item()
            if coin < lmbda:
                chosen = on_policy_examples(accelerator.unwrap_model(student), tokenizer, chosen,
                                            on_policy_max_new_tokens, on_policy_temperature)
                on_policy += 1
            batch = {k: v.to(accelerator.device) for k, v in collate(chosen, pad_id).items()}
            parts = _loss(student, teacher, batch, hidden, hidden_weight,
                          teacher_logits=kd_source == "online" or coin < lmbda, **objective)
            accelerator.backward(parts["loss"] / grad_accum)
            tokens += int((batch["labels"] != IGNORE_INDEX).sum())
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + float(value.detach()) / grad_accum
        grad_norm = accelerator.clip_grad_norm_(trained, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        seconds = time.perf_counter() - started
        log.append({"step": step + 1, "epoch": (step + 1) * grad_accum / micro_per_epoch,
                    "lr": scheduler.get_last_lr()[0], **parts_sum,
                    "grad_norm": float(grad_norm), "on_policy_batches": on_policy,
                    "tokens": tokens, "seconds": seconds,
                    "tokens_per_second": tokens / seconds, "peak_memory_mb": peak_memory_mb()})
        progress.set_postfix(loss=f"{parts_sum['loss']:.4f}")
        if (step + 1) % checkpoint_every == 0 or step + 1 == total_steps:
            _checkpoint(accelerator, run_dir, step + 1, pd.DataFrame(log), log_path)
    progress.close()
    student.eval()
    return pd.DataFrame(log)


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


def _loss(student, teacher, batch, hidden, hidden_weight, *, teacher_logits: bool, **objective):
    """The training loss of one micro-batch and its parts."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    # Only completion positions carry a loss. Projecting just the positions from the
    # batch's first completion token onwards through the LM head (`logits_to_keep`)
    # skips most prompt positions: that head is a third of this model's compute.
    start = int((batch["labels"] != IGNORE_INDEX).float().argmax(-1).min())
    keep = batch["input_ids"].shape[1] - start
    with _capture(student, hidden, 0) as student_hidden:
        student_logits = student(**inputs, logits_to_keep=keep).logits[:, :-1]
    teacher_output, teacher_hidden = None, {}
    if teacher is not None and (teacher_logits or hidden is not None):
        with torch.no_grad(), _capture(teacher, hidden, 1) as teacher_hidden:
            teacher_output = teacher(**inputs, logits_to_keep=keep).logits[:, :-1]
    parts = distillation_loss(
        student_logits, batch["labels"][:, start:], **objective,
        teacher_logits=teacher_output if teacher_logits else None,
        topk_ids=batch["topk_ids"][:, start:], topk_logprobs=batch["topk_logprobs"][:, start:])
    if hidden is not None:
        # hidden states at input positions 0..L-2 line up with labels (next tokens)
        kept = batch["labels"] != IGNORE_INDEX
        parts["hidden"] = hidden({k: v[:, :-1] for k, v in student_hidden.items()},
                                 {k: v[:, :-1] for k, v in teacher_hidden.items()}, kept)
        parts["loss"] = parts["loss"] + hidden_weight * parts["hidden"]
    return parts


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

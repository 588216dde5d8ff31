"""What a teacher's drift costs its student (notebook 07): the figures of the drift
curve and of re-distillation, and their plots. The notebook trains and samples; this
module turns what it measured into tables.

- Negative flips: of the verifiable prompts the student answers right, the share the
  changed teacher now answers wrong: where student and teacher part on a right answer.
  Re-distillation has its own: what the old student got right and the new one gets
  wrong (the regression a user of the student sees after an update).
- Cost to a target: the first validation at which a re-distilled student's top-1
  agreement with the new teacher reaches the target, with the training seconds and the
  new teacher's tokens spent until then.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.runs import save_figure

ARMS = ("warm", "cold", "warm_replay")  # re-distillation: from S, from the init, from S + replay


def negative_flips(right_before: list[bool], right_after: list[bool]) -> dict:
    """Of the prompts right before, the share wrong after (NaN when none was right)."""
    before, after = np.asarray(right_before, bool), np.asarray(right_after, bool)
    kept = int(before.sum())
    flipped = int((before & ~after).sum())
    return {"right_before": kept, "flipped": flipped,
            "negative_flip_rate": flipped / kept if kept else float("nan")}


def cost_curve(log: pd.DataFrame, new_share: float) -> pd.DataFrame:
    """A re-distillation's training log (one row per step, validations on some) as the
    curve of its validations: step, cumulative training seconds and new-teacher tokens,
    agreement with the new teacher (`new_top1`, `new_kl`) and retention of the old
    (`old_top1`). `new_share`: the share of the arm's data the new teacher wrote (its
    tokens are counted in that proportion; replayed old samples cost the new teacher
    nothing)."""
    log = log.copy()
    log["train_seconds"] = log["seconds"].cumsum()
    log["teacher_tokens"] = (log["tokens"] * new_share).cumsum().round()
    columns = ["step", "train_seconds", "teacher_tokens", "new_top1", "new_kl", "old_top1"]
    return log.dropna(subset=["new_top1"])[columns].reset_index(drop=True)


def to_target(curve: pd.DataFrame, target: float) -> dict:
    """Where a cost curve first reaches `target` top-1 agreement with the new teacher
    (NaN figures when it never does), and where it ends."""
    reached = curve[curve["new_top1"] >= target]
    first = reached.iloc[0] if len(reached) else None
    return {"steps_to_target": first["step"] if first is not None else float("nan"),
            "seconds_to_target": first["train_seconds"] if first is not None else float("nan"),
            "teacher_tokens_to_target": first["teacher_tokens"] if first is not None
            else float("nan"),
            "final_new_top1": curve["new_top1"].iloc[-1], "final_new_kl": curve["new_kl"].iloc[-1],
            "final_old_top1": curve["old_top1"].iloc[-1]}


def plot(curve: pd.DataFrame, costs: dict[str, pd.DataFrame], target: float, run_dir=None):
    """Left: the fixed student against the teacher as it drifts. Right: re-distillation
    arms, agreement with the new teacher (solid) and the old (dashed) against seconds."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(curve["drift_steps"], curve["top1_vs_changed"], "o-", label="top-1 vs T_v2")
    left.plot(curve["drift_steps"], curve["top1_vs_original"], "s--", label="top-1 vs T_v1")
    left.plot(curve["drift_steps"], curve["negative_flip_rate"], "^:", label="negative flips")
    left.set(xlabel="teacher fine-tuning steps N", ylabel="share",
             title="the distilled student as its teacher drifts")
    twin = left.twinx()
    twin.plot(curve["drift_steps"], curve["kl_vs_changed"], "d-", color="grey", alpha=0.6,
              label="KL(T_v2 || S)")
    twin.set_ylabel("KL, nats/token")
    left.legend(loc="center left", fontsize=8)
    twin.legend(loc="center right", fontsize=8)
    for arm, frame in costs.items():
        line, = right.plot(frame["train_seconds"], frame["new_top1"], "o-", label=f"{arm}: T_v2")
        right.plot(frame["train_seconds"], frame["old_top1"], "--", color=line.get_color(),
                   alpha=0.7, label=f"{arm}: T_v1 (retention)")
    right.axhline(target, color="black", lw=0.8, ls=":", label="target")
    right.set(xlabel="training seconds", ylabel="top-1 agreement",
              title="re-distilling to the changed teacher")
    right.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, run_dir, "teacher_drift")
    return figure

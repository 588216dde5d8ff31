"""Stage 02's training: `train` in this process (loop.py), or `launch` under
`accelerate launch` in several (launcher.py); `batch_loss.py` is one micro-batch's
loss. `python -m distill.training RUN_DIR` is the launched entry point."""

from .batch_loss import on_policy_examples
from .finetune import probe_score
from .launcher import TrainingFailed, launch, transfer_set
from .loop import adamw, latest_checkpoint, train

__all__ = ["TrainingFailed", "adamw", "latest_checkpoint", "launch", "on_policy_examples",
           "probe_score", "train", "transfer_set"]

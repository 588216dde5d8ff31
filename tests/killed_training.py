"""A launched training process that is killed right after one checkpoint.

Run in place of `-m distill.training` by tests/test_scale_out.py: every process
SIGKILLs itself once the checkpoint of step KILL_AFTER_STEP is on disk, as a job
killed by a scheduler would be, so the test can check that a relaunch resumes
exactly."""

import os
import signal
import sys

from distill.training import launcher, loop

real_checkpoint = loop.checkpoint


def checkpoint_then_die(accelerator, run_dir, step, log, log_path):
    real_checkpoint(accelerator, run_dir, step, log, log_path)
    if step == int(os.environ["KILL_AFTER_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)


loop.checkpoint = checkpoint_then_die
launcher.main(sys.argv[1:])

"""Run model-written code against a task's tests, contained by the operating system, and
judge it here, where the answer cannot reach.

Each run gets a fresh process (`jail.py`, which runs `harness.py` in the confined answer
process) with a minimal environment, a wall-clock timeout and the `Limits` below. The
answer's process gets the task's inputs only (`observe.convert`: the tests with their
expected values taken out) and reports what it computed as plain data; `observe.verdict`
compares the reports with the expected values in this process. Nothing the answer writes
in its folder is read. The jail adds, where the system allows: a root of its own (the
interpreter read-only, /dev/null, /dev/urandom, its /proc, and a size-limited tmpfs
folder), new network and PID namespaces, an unprivileged uid, no capabilities, Landlock,
and a cgroup that caps memory and processes in total (`cgroups`). `probe.mechanisms()`
measures which of these hold by running a probe through this same path.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import cgroups, observe
from .cleanup import remove_tree

HERE = Path(__file__).resolve().parent
SANDBOX_UID = 61000  # the first of the unused uids an answer runs as (see sandbox_uid)
SLOTS_PER_PROCESS = 1024  # concurrent runs one distill process may have
# how an answer ended: the verdict gives passed, assertion and the stops harness.py
# reports; the exit status gives timeout and killed; sandbox_error is the sandbox's own
# failure on this answer (the batch goes on)
KINDS = ("passed", "assertion", "exception", "syntax_error", "timeout", "killed",
         "memory_limit", "process_limit", "sandbox_error")
MINIMAL_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # HOME is set to the folder
OUTPUT_TAIL = 2000  # characters of the answer's printed output kept
REPORTS_MAX = 4 * 1024 * 1024  # bytes of reports read back (the file-size limit caps them too)
JAIL_FAILED = 125  # jail.py's status (it is told so) when it could not start the answer
# the dynamic loader, for an answer that starts a program (itself, in a subprocess)
ALSO_EXPOSE = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the code it ran): the message says why."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock, per task
    memory_mb: int = 512  # address space, per process
    file_mb: int = 16  # largest file the answer may write
    processes: int = 32  # processes of the sandbox's uid; its cgroup's pids.max too
    folder_mb: int = 64  # the answer's folder, a tmpfs
    total_memory_mb: int = 1024  # all its processes and its folder together (cgroup)


@dataclass
class Outcome:
    kind: str  # one of KINDS
    detail: str  # the failing observation, the exception, the signal
    seconds: float
    output: str = ""  # the tail of what the answer printed

    @property
    def passed(self) -> bool:
        return self.kind == "passed"


def run(code: str, tests: str, limits: Limits = Limits(), slot: int = 0) -> Outcome:
    """Run `code` against `tests` (assert statements, `observe.convert`'s forms) in the
    sandbox. A failure of the sandbox itself is this answer's `sandbox_error`."""
    start = time.perf_counter()
    root = group = None
    try:
        converted = observe.convert(tests)
        root = Path(tempfile.mkdtemp(prefix="distill-sandbox-"))
        group = cgroups.create(limits.total_memory_mb, limits.processes + 2)  # + jail, init
        return _run_in(root, code, converted, limits, slot, group)
    except (OSError, SandboxError, observe.Unsupported) as error:
        return Outcome("sandbox_error", f"{type(error).__name__}: {error}"[:500],
                       time.perf_counter() - start)
    finally:
        try:
            if group:
                group.remove()
            if root:
                remove_tree(root)
        except OSError:  # left behind, said on stderr; the next answers go on
            print(f"distill sandbox: could not clean up {root}", file=sys.stderr)


def _run_in(root: Path, code: str, converted: observe.Converted, limits: Limits, slot: int,
            group: cgroups.Group | None) -> Outcome:
    folder = root / "root"  # the answer's root is built on this, in its own mount namespace
    folder.mkdir()
    uid = sandbox_uid(slot)
    if os.geteuid() == 0:  # without a root of its own, the answer's uid works in `folder`
        os.chmod(root, 0o711)
        os.chown(folder, uid, uid)
    config = {"folder": str(folder), "python": os.path.realpath(sys.executable),
              "prefix": sys.base_prefix, "also_expose": ALSO_EXPOSE,
              "uid": uid, "gid": uid, "barred": _barred(Path(sys.base_prefix)),
              "cgroups": group.procs if group else [], "cpu_seconds": int(limits.timeout_s) + 1,
              "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
              "processes": limits.processes, "folder_mb": limits.folder_mb,
              "failed_status": JAIL_FAILED, "solution": code, "probe": converted.probe}
    with open(os.open(root / "config.json", os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        json.dump(config, handle)
    env = {**MINIMAL_ENV, "HOME": str(folder)}
    with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            [config["python"], "-I", "-S", str(HERE / "jail.py"), str(root / "config.json")],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True)
        try:
            status = _wait(process, limits.timeout_s)
        finally:  # whatever is left of the session goes (the PID namespace takes the rest)
            _kill_group(process.pid)
            process.wait()
        seconds = time.perf_counter() - start
    output = _tail(root / "stderr")
    if status is None:
        return Outcome("timeout", f"still running after {limits.timeout_s:g} s", seconds, output)
    with open(root / "stdout", "rb") as handle:
        reports = handle.read(REPORTS_MAX).decode(errors="replace")
    judged = observe.verdict(reports, converted.observations)
    if judged:
        return Outcome(*judged, seconds, output)
    if status == JAIL_FAILED:
        raise SandboxError(f"the sandbox could not start the answer: {output.strip()[-300:]}")
    if group and group.oom_killed():
        return Outcome("memory_limit", f"killed at the memory total "
                       f"({limits.total_memory_mb} MB, all its processes)", seconds, output)
    if status > 128:
        name = signal.Signals(status - 128).name
        why = {"SIGXCPU": "the CPU-time limit", "SIGKILL": "SIGKILL (the CPU-time limit)",
               "SIGXFSZ": "the file-size limit"}.get(name, name)
        return Outcome("killed", f"killed by {why}", seconds, output)
    return Outcome("exception", f"exited with status {status} before its tests finished",
                   seconds, output)


def sandbox_uid(slot: int) -> int:
    """The uid of a run in `slot` of this process: its own, so that each concurrent run,
    in this process or in another distill process on the machine (two evaluations, two
    test workers), has its own process count under the process limit."""
    return SANDBOX_UID + (os.getpid() % 1024) * SLOTS_PER_PROCESS + slot % SLOTS_PER_PROCESS


def _barred(prefix: Path) -> bool:
    """Whether a folder above `prefix` is closed to others (root's home, where pyenv keeps
    the interpreter): without a root of its own, another uid could not load it."""
    return any(folder != Path("/") and not os.stat(folder).st_mode & 0o001
               for folder in prefix.parents)


def _wait(process: subprocess.Popen, timeout_s: float) -> int | None:
    """The exit status, or None at the timeout. Popen.wait(timeout) polls with growing
    sleeps, which adds tens of ms to a 60 ms run; a pidfd wakes us the moment it ends."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # before Linux 5.3
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    return process.wait() if ready else None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - OUTPUT_TAIL))
        return handle.read().decode(errors="replace")

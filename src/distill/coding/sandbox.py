"""Run model-written code with its tests, contained by the operating system.

Each run gets a fresh process (`jail.py`, then the program `harness.py`) in a fresh
temporary folder, a minimal environment, a wall-clock timeout and the `Limits` below. The
jail adds, where the system allows: new network and PID namespaces, an unprivileged uid
when distill runs as root, and a Landlock domain that confines writes to the folder.
`mechanisms()` probes which of these actually hold, by running a probe through the same
path; the evaluation prints its table, and the README says what each one means.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SANDBOX_UID = 61000  # + slot: an unused uid per concurrent run, so each has its own process count
# how an answer ended: harness.py records all but timeout and killed, which run() tells
KINDS = ("passed", "assertion", "exception", "syntax_error", "timeout", "killed",
         "memory_limit", "process_limit")
MINIMAL_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # HOME is set to the folder
OUTPUT_TAIL = 2000  # characters of the program's stdout and stderr kept
JAIL_FAILED = 125  # jail.py's status (it is told so) when it could not start the program


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the code it ran): the message says why."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock, per task
    memory_mb: int = 512  # address space
    file_mb: int = 16  # largest file the program may write
    processes: int = 32  # processes of the sandbox's uid


@dataclass
class Outcome:
    kind: str  # one of KINDS
    detail: str  # the failing assert, the exception, the signal
    seconds: float
    output: str = ""  # the tail of what the program printed

    @property
    def passed(self) -> bool:
        return self.kind == "passed"


def run(code: str, tests: str, limits: Limits = Limits(), slot: int = 0) -> Outcome:
    """Run `code`, then `tests` (Python statements that assert), in the sandbox."""
    root = Path(tempfile.mkdtemp(prefix="distill-sandbox-"))
    try:
        return _run_in(root, code, tests, limits, slot)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_in(root: Path, code: str, tests: str, limits: Limits, slot: int) -> Outcome:
    folder = root / "work"
    folder.mkdir()
    (folder / "solution.py").write_text(code)
    (folder / "tests.py").write_text(tests)
    shutil.copy(HERE / "harness.py", folder / "harness.py")
    uid = SANDBOX_UID + slot
    if os.geteuid() == 0:  # the program runs as `uid`: its folder must be its own
        os.chmod(root, 0o711)
        os.chown(folder, uid, uid)
    python = os.path.realpath(sys.executable)
    hidden = _barred_ancestor(Path(sys.base_prefix)) if os.geteuid() == 0 else None
    if hidden:
        (root / "python").mkdir()
    config = {"folder": str(folder), "program": "harness.py", "python": python,
              "uid": uid, "gid": uid, "hidden": hidden, "prefix": sys.base_prefix,
              "staging": str(root / "python"), "cpu_seconds": int(limits.timeout_s) + 1,
              "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
              "processes": limits.processes, "failed_status": JAIL_FAILED}
    env = {**MINIMAL_ENV, "HOME": str(folder)}
    with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen([python, "-I", "-S", str(HERE / "jail.py"), json.dumps(config)],
                                   cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=err, start_new_session=True)
        try:
            status = process.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            status = None
        finally:  # whatever is left of the session goes (the PID namespace takes the rest)
            _kill_group(process.pid)
            process.wait()
        seconds = time.perf_counter() - start
    output = _tail(root / "stdout") + _tail(root / "stderr")
    if status is None:
        return Outcome("timeout", f"still running after {limits.timeout_s:g} s", seconds, output)
    recorded = _record(folder / ".result.json")
    if recorded:
        return Outcome(recorded["kind"], recorded["detail"], seconds, output)
    if status == JAIL_FAILED:
        raise SandboxError(f"the sandbox could not start the program: {output.strip()}")
    if status > 128:
        name = signal.Signals(status - 128).name
        why = {"SIGXCPU": "the CPU-time limit", "SIGKILL": "SIGKILL (the CPU-time limit)",
               "SIGXFSZ": "the file-size limit"}.get(name, name)
        return Outcome("killed", f"killed by {why}", seconds, output)
    return Outcome("exception", f"exited with status {status} before its tests finished",
                   seconds, output)


def _record(path: Path) -> dict | None:
    """The harness's record, if it is one: a small regular file (not a link, a FIFO or a
    huge file the answer put there instead) holding a kind and a detail."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:
        return None
    try:
        recorded = json.loads(path.read_text())
        return recorded if recorded.get("kind") in KINDS and "detail" in recorded else None
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def _barred_ancestor(prefix: Path) -> str | None:
    """The first folder above `prefix` that others may not enter (root's home, mode 700):
    the jail must reveal the interpreter past it for an unprivileged uid."""
    for folder in reversed(prefix.parents):
        if folder != Path("/") and not os.stat(folder).st_mode & 0o001:
            return str(folder)
    return None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - OUTPUT_TAIL))
        return handle.read().decode(errors="replace")


PROBE = """
import json, os, resource, socket
facts = {{"uid": os.getuid(), "pid": os.getpid(), "env": sorted(os.environ),
          "interfaces": [name for _, name in socket.if_nameindex()],
          "processes": resource.getrlimit(resource.RLIMIT_NPROC)[0]}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    facts["connect"] = "connected"
except OSError as error:
    facts["connect"] = os.strerror(error.errno) if error.errno else repr(error)
try:
    open({outside!r}, "w").write("x")
    facts["write_outside"] = "written"
except OSError as error:
    facts["write_outside"] = os.strerror(error.errno)
print("PROBE" + json.dumps(facts))
"""


def describe(found: dict[str, dict]) -> str:
    """`mechanisms()` as lines to print: what holds, and how it was found."""
    return "\n".join(f"{'holds' if row['holds'] else 'DOES NOT HOLD':>13}  {name}: {row['how']}"
                     for name, row in found.items())


@functools.lru_cache(maxsize=4)
def mechanisms(limits: Limits = Limits()) -> dict[str, dict]:
    """{mechanism: {'holds': bool, 'how': str}}, measured: a probe run in the sandbox tries
    to reach a port the host listens on, to write into a world-writable folder outside its
    own, and reports its uid, PID, environment and process limit."""
    with socket.socket() as server, tempfile.TemporaryDirectory() as outside:
        server.bind(("127.0.0.1", 0))
        server.listen()
        os.chmod(outside, 0o777)  # only the sandbox, not file permissions, may stop the write
        target = Path(outside) / "escaped.txt"
        probe = PROBE.format(port=server.getsockname()[1], outside=str(target))
        outcome = run(probe, "", limits)
        line = next((x for x in outcome.output.splitlines() if x.startswith("PROBE")), None)
        if not outcome.passed or line is None:
            raise SandboxError(f"the sandbox probe did not run: {outcome.kind} {outcome.detail}")
        facts = json.loads(line[len("PROBE"):])
        escaped = target.exists()
    root = os.geteuid() == 0
    own_uid = facts["uid"] not in (0, os.geteuid())
    return {
        "network": {"holds": facts["connect"] != "connected",
                    "how": f"connecting to the host's loopback: {facts['connect']}; "
                           f"interfaces: {', '.join(facts['interfaces'])}"
                           + (" (a network namespace of its own)"
                              if facts["interfaces"] == ["lo"] else "")},
        "file writes": {"holds": not escaped,
                        "how": f"writing outside its folder: {facts['write_outside']}"},
        "user": {"holds": own_uid or not root,
                 "how": f"uid {facts['uid']}" + (" (unprivileged)" if own_uid else
                                                 " (root: the process limit does not hold)"
                                                 if facts["uid"] == 0 else " (distill's own)")},
        "processes": {"holds": facts["uid"] != 0 and facts["processes"] == limits.processes,
                      "how": f"at most {facts['processes']}"
                             + (", ended with the program (PID namespace)" if facts["pid"] <= 2
                                else ", no PID namespace: a detached child may outlive it")},
        "environment": {"holds": set(facts["env"]) <= set(MINIMAL_ENV) | {"HOME", "LC_CTYPE"},
                        "how": "variables: " + ", ".join(facts["env"])},
        "limits": {"holds": True, "how": ", ".join(f"{k} {v}" for k, v in asdict(limits).items())},
    }

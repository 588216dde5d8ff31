"""What the sandbox holds *here*, measured: a probe answer runs through the same path as
every answer (`sandbox.run`) and tries what an attacker would: reach the host's network,
Unix sockets (a file and an abstract name the parent listens on), files outside its root
(the project, a file in the system's temporary folder, /etc/passwd), write outside its
folder, leave a tree no recursive cleanup removes; it reports its uid, capabilities,
PIDs, cgroups, folder size and environment.
`mechanisms()` turns that into a table, `describe()` into lines to print; `warn()` says
loudly, once, what does not hold, before any answer runs."""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

from . import cgroups, sandbox

DEFAULT = sandbox.Limits()
PROBE = """
import json, os, resource, socket
facts = {{"uid": os.getuid(), "pid": os.getpid(), "env": sorted(os.environ),
          "interfaces": [name for _, name in socket.if_nameindex()],
          "processes": resource.getrlimit(resource.RLIMIT_NPROC)[0],
          "root": sorted(os.listdir("/"))}}
def attempt(name, action):
    try:
        action()
        facts[name] = "done"
    except OSError as error:
        facts[name] = os.strerror(error.errno) if error.errno else repr(error)
attempt("connect", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2).close())
for name, address in (("unix path", {path!r}), ("unix abstract", {abstract!r})):
    attempt(name, lambda: socket.socket(socket.AF_UNIX).connect(address))
attempt("write outside", lambda: open({outside!r}, "w").write("x"))
for name, path in {reads!r}.items():
    attempt("read " + name, lambda: open(path, "rb").read(1))
facts["folder_mb"] = os.statvfs(".").f_blocks * os.statvfs(".").f_frsize // 2**20
facts["status"] = {{k: v for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
                   if k == "CapEff"}} if os.path.exists("/proc/self/status") else {{}}
facts["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) \\
    if os.path.isdir("/proc") else []
facts["cgroup"] = open("/proc/self/cgroup").read() if os.path.exists("/proc/self/cgroup") else ""
here = os.getcwd()
for _ in range(1000):  # a tree shutil.rmtree cannot remove, and a folder closed to its owner
    os.mkdir("d")
    os.chdir("d")
os.chmod(".", 0)
os.chdir(here)
print("PROBE" + json.dumps(facts))
def probe():
    return 0
"""


def describe(found: dict[str, dict]) -> str:
    """`mechanisms()` as lines to print: what holds, and how it was found."""
    return "\n".join(f"{'holds' if row['holds'] else 'DOES NOT HOLD':>13}  {name}: {row['how']}"
                     for name, row in found.items())


def _facts(limits: sandbox.Limits) -> dict:
    with socket.socket() as server, socket.socket(socket.AF_UNIX) as unix_path, \
            socket.socket(socket.AF_UNIX) as unix_abstract, \
            tempfile.TemporaryDirectory() as outside:
        server.bind(("127.0.0.1", 0))
        server.listen()
        os.chmod(outside, 0o777)  # only the sandbox, not file permissions, may stop these
        unix_path.bind(str(Path(outside) / "socket"))
        os.chmod(Path(outside) / "socket", 0o777)
        unix_path.listen()
        abstract = f"\0distill-probe-{uuid.uuid4().hex}"
        unix_abstract.bind(abstract)
        unix_abstract.listen()
        secret = Path(outside) / "secret.txt"
        secret.write_text("secret")
        secret.chmod(0o644)
        reads = {"/etc/passwd": "/etc/passwd", "the project": str(sandbox.HERE / "sandbox.py"),
                 "the temporary folder": str(secret)}
        code = PROBE.format(port=server.getsockname()[1], path=str(Path(outside) / "socket"),
                            abstract=abstract, outside=str(Path(outside) / "escaped.txt"),
                            reads=reads)
        before = set(Path(tempfile.gettempdir()).glob("distill-sandbox-*"))
        outcome = sandbox.run(code, "assert probe() == 0\n", limits)
        left = [str(folder) for folder in  # this run's, not another process's
                set(Path(tempfile.gettempdir()).glob("distill-sandbox-*")) - before
                if abstract[1:] in _read(folder / "config.json")]
        line = next((x for x in outcome.output.splitlines() if x.startswith("PROBE")), None)
        if not outcome.passed or line is None:
            raise sandbox.SandboxError(f"the sandbox probe did not run: {outcome.kind} "
                                       f"{outcome.detail} {outcome.output[-300:]}")
        facts = json.loads(line[len("PROBE"):])
        facts["escaped"] = (Path(outside) / "escaped.txt").exists()
        facts["left"] = left
    return facts


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@functools.lru_cache(maxsize=4)
def mechanisms(limits: sandbox.Limits = DEFAULT) -> dict[str, dict]:
    """{mechanism: {'holds': bool, 'how': str}}, measured by the probe."""
    facts = _facts(limits)
    root = os.geteuid() == 0
    own_uid = facts["uid"] not in (0, os.geteuid())
    reads = {k[5:]: v for k, v in facts.items() if k.startswith("read ")}
    capabilities = facts["status"].get("CapEff", "?").strip()
    version, parents = cgroups.where()
    in_group = facts["cgroup"].count("distill-sandbox-") >= (1 if version == "cgroup v2" else 2)
    return {
        "network": {"holds": facts["connect"] != "done",
                    "how": f"connecting to the host's loopback: {facts['connect']}; "
                           f"interfaces: {', '.join(facts['interfaces'])}"
                           + (" (a network namespace of its own)"
                              if facts["interfaces"] == ["lo"] else "")},
        "unix sockets": {"holds": facts["unix path"] != "done"
                         and facts["unix abstract"] != "done",
                         "how": f"a socket file of the host: {facts['unix path']}; an abstract "
                                f"name the host listens on: {facts['unix abstract']}"},
        "files seen": {"holds": all(v != "done" for v in reads.values()),
                       "how": "reading " + "; ".join(f"{k}: {v}" for k, v in reads.items())
                              + f"; / holds {', '.join(facts['root'])}"},
        "file writes": {"holds": not facts["escaped"],
                        "how": f"writing outside its folder: {facts['write outside']}"},
        "folder": {"holds": 0 < facts["folder_mb"] <= limits.folder_mb,
                   "how": f"{facts['folder_mb']} MB in all"
                          + (" (a tmpfs of its own)" if facts["folder_mb"] <= limits.folder_mb
                             else " (the host's disk: only each file's size is limited)")},
        "totals": {"holds": parents is not None and in_group,
                   "how": (f"{version}: memory {limits.total_memory_mb} MB and "
                           f"{limits.processes + 2} processes across all its processes"
                           if parents is not None and in_group else
                           f"{version if parents is None else 'its processes are not in it'}:"
                           " memory is limited per process only")},
        "cleanup": {"holds": not facts["left"],
                    "how": "a 1,000-deep tree with a closed folder: "
                           + (f"left behind in {facts['left']}" if facts["left"] else "removed")},
        "user": {"holds": own_uid or not root,
                 "how": f"uid {facts['uid']}" + (" (unprivileged)" if own_uid else
                                                 " (root: the process limit does not hold)"
                                                 if facts["uid"] == 0 else " (distill's own)")},
        "capabilities": {"holds": capabilities == "0000000000000000",
                         "how": f"effective: {capabilities}"},
        "processes": {"holds": facts["uid"] != 0 and facts["processes"] == limits.processes,
                      "how": f"at most {facts['processes']}"
                             + (f", ended with the answer (PID namespace; it sees PIDs "
                                f"{facts['pids']})" if facts["pid"] <= 2
                                else ", no PID namespace: a detached child may outlive it")},
        "environment": {"holds": set(facts["env"]) <= set(sandbox.MINIMAL_ENV) | {"HOME"},
                        "how": "variables: " + ", ".join(facts["env"])},
        "limits": {"holds": True, "how": ", ".join(f"{k} {v}" for k, v in asdict(limits).items())},
    }


@functools.lru_cache(maxsize=4)
def warn(limits: sandbox.Limits = DEFAULT) -> list[str]:
    """Say on stderr, once per limits, each mechanism that does not hold here (the answers
    run anyway, with what the system gives); the names of those mechanisms."""
    found = mechanisms(limits)
    open_ = [name for name, row in found.items() if not row["holds"]]
    if open_:
        print("\n".join(["!" * 78, "WARNING: the code sandbox runs model-written code WITHOUT "
                         f"{', '.join(open_)}:", describe({n: found[n] for n in open_}),
                         "See README, 'The sandbox', for what that leaves open.", "!" * 78]),
              file=sys.stderr, flush=True)
    return open_

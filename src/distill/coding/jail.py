"""Run one program confined by the operating system: `python -I -S jail.py CONFIG_JSON`.

Standard library only, and never imported by distill: `sandbox.run` starts it as a script,
in a fresh process with a minimal environment. CONFIG_JSON names the working folder, the
program and its limits. What it does, in order, each step skipped where the system refuses
it (`sandbox.mechanisms` probes which steps held, rather than trusting this list):

1. New network and PID namespaces (`unshare`; as a user, inside a new user namespace that
   maps only the user's own ids). The network namespace has only a loopback, down: no
   connection leaves it. PID 1 of the namespace is a small waiter (below); when it exits the
   kernel kills every process left in the namespace, so a fork bomb dies with its program.
2. In the program's process: `resource` limits (CPU seconds, address space, file size,
   processes, no core dumps), then, as root, a switch to an unprivileged uid and gid (root
   ignores the process limit), then a Landlock domain that allows writes only beneath the
   working folder and no TCP bind or connect, then exec of the program.

The exit status is the program's; 128 + N where signal N killed it.
"""

import ctypes
import json
import os
import resource
import sys

MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
PR_SET_NO_NEW_PRIVS = 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
# Landlock's write-side file-system rights (uapi/linux/landlock.h): reads and execution
# stay allowed everywhere, so the interpreter and its standard library load.
WRITE_RIGHTS_ABI1 = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << bit for bit in range(6, 13))
REFER, TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
O_PATH = getattr(os, "O_PATH", 0o10000000)

libc = ctypes.CDLL(None, use_errno=True)


def unshare_namespaces() -> bool:
    """New network and PID namespaces (and, as root, mount namespace); False where the
    system allows neither way."""
    if os.geteuid() == 0:
        return libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) == 0
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return False
    # map only our own ids, so files the program writes are ours outside too
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    return True


def mount(source, target, fstype, flags, data=None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    if libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags),
                  encode(data)):
        raise OSError(ctypes.get_errno(), f"mount {source} on {target} failed")


def reveal(hidden: str, prefix: str, staging: str) -> None:
    """Make the interpreter at `prefix` reachable for an unprivileged uid when an ancestor,
    `hidden` (root's home, mode 700), bars the way: in our own mount namespace, cover
    `hidden` with an empty tmpfs and bind the interpreter's prefix back at its own path.
    The rest of `hidden` (root's files) stays out of sight."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    mount(prefix, staging, None, MS_BIND | MS_REC)
    mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64k")
    os.makedirs(prefix)
    mount(staging, prefix, None, MS_BIND | MS_REC)


def set_limits(config: dict) -> None:
    mb = 1024 * 1024
    for limit, value in ((resource.RLIMIT_CPU, config["cpu_seconds"]),
                         (resource.RLIMIT_AS, config["memory_mb"] * mb),
                         (resource.RLIMIT_FSIZE, config["file_mb"] * mb),
                         (resource.RLIMIT_NPROC, config["processes"]),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def drop_root(config: dict) -> None:
    if os.geteuid() == 0 and config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])


def landlock(folder: str) -> None:
    """Writes only beneath `folder`; no TCP bind or connect (ABI 4+); no signals to or
    abstract sockets of processes outside the domain (ABI 6+). Silently nothing where the
    kernel has no Landlock."""
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return
    rights = WRITE_RIGHTS_ABI1 | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0)
    fields = [rights, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else None,
              SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else None]
    values = [value for value in fields if value is not None]
    attr = (ctypes.c_uint64 * len(values))(*values)
    ruleset = syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        return

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    folder_fd = os.open(folder, O_PATH | os.O_CLOEXEC)
    rule = PathBeneath(rights, folder_fd)
    if syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
        raise OSError(ctypes.get_errno(), "landlock_add_rule failed")
    os.close(folder_fd)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) \
            or syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0):
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)


def status_of(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def wait_for(pid: int) -> int:
    """The exit status of child `pid`, reaping any orphans (we may be a namespace's init)."""
    while True:
        done, wait_status = os.waitpid(-1, 0)
        if done == pid:
            return status_of(wait_status)


def run_program(config: dict) -> None:
    """In the child that becomes the program: limits, user, Landlock, exec. Never returns;
    a step that fails exits with config["failed_status"] and says why on stderr."""
    try:
        set_limits(config)
        drop_root(config)
        landlock(config["folder"])
        os.execv(config["python"], [config["python"], "-I", "-S", config["program"]])
    except BaseException as error:  # noqa: BLE001 - the parent must learn of any failure
        print(f"distill sandbox: {error!r}", file=sys.stderr, flush=True)
    os._exit(config["failed_status"])


def start(config: dict) -> int:
    """Fork the program's process and wait for it."""
    pid = os.fork()
    if pid == 0:
        run_program(config)
    return wait_for(pid)


def main() -> int:
    config = json.loads(sys.argv[1])
    os.chdir(config["folder"])
    if not unshare_namespaces():
        if os.geteuid() == 0 and config["hidden"]:
            config["uid"] = None  # no mount namespace to reveal the interpreter in
        return start(config)
    if os.geteuid() == 0 and config["hidden"]:
        try:
            reveal(config["hidden"], config["prefix"], config["staging"])
        except OSError as error:  # the program cannot leave root: say so, run it as root
            print(f"distill sandbox: stays root ({error})", file=sys.stderr, flush=True)
            config["uid"] = None
    init = os.fork()  # PID 1 of the new namespace: it only waits
    if init == 0:
        os._exit(start(config))
    return wait_for(init)


if __name__ == "__main__":
    sys.exit(main())

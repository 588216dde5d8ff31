"""Run one answer confined by the operating system: `python -I -S jail.py CONFIG_FILE`.

Standard library only, and never imported by distill: `sandbox.run` starts it as a script,
in a fresh process with a minimal environment. CONFIG_FILE (outside the answer's reach)
names the folder, the limits, the cgroups to join, the answer's code and the probe (the
tests without their expected values). What it does, in order, each step skipped where the
system refuses it (`probe.mechanisms` measures which held, rather than trusting this):

1. Join the run's cgroups (memory and process totals across all its processes).
2. New mount, network, PID, IPC and UTS namespaces (as a user, inside a new user
   namespace that maps only the user's own ids). The network namespace has only a
   loopback, down: no connection leaves it, and abstract Unix sockets are per network
   namespace. PID 1 of the new namespace is a small waiter; when it exits the kernel
   kills every process left in the namespace, so a fork bomb dies with its answer.
3. In PID 1, a root of its own (`private_root`): a tmpfs holding only the interpreter's
   prefix and the shared libraries it loaded (read-only, at their own paths), /dev/null,
   /dev/urandom, a /proc of the new PID namespace and /work, a size-limited tmpfs that is
   the answer's folder; then pivot_root into it and detach the host's tree. Nothing else
   of the host (the project, /tmp, home folders, other runs, socket files) is there.
4. In the answer's process: `resource` limits, then (as root) an unprivileged uid, no
   capabilities, no new privileges, a Landlock domain (writes only beneath the folder, no
   TCP, no abstract sockets or signals outside), a seccomp filter that refuses Unix
   sockets, then `harness.py` run in this process.

The exit status is the answer process's; 128 + N where signal N killed it.
"""

import ctypes
import json
import os
import platform
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 4096, 16384, 1 << 18, 2
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_NO_NEW_PRIVS = 38
# the syscalls Python has no wrapper for; Landlock's numbers are the same on every arch
SYSCALLS = {"x86_64": {"pivot_root": 155, "capset": 126, "socket": 41, "arch": 0xC000003E},
            "aarch64": {"pivot_root": 41, "capset": 91, "socket": 198, "arch": 0xC00000B7},
            }.get(platform.machine(), {})
PR_SET_SECCOMP, SECCOMP_MODE_FILTER, AF_UNIX, EPERM = 22, 2, 1, 1
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
# Landlock's write-side file-system rights (uapi/linux/landlock.h)
WRITE_RIGHTS_ABI1 = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << bit for bit in range(6, 13))
REFER, TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
O_PATH = getattr(os, "O_PATH", 0o10000000)
# statvfs flags a bind mount keeps: a user namespace may not clear them on remount
KEPT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048  # + noatime, nodiratime

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def say(text: str) -> None:
    print(f"distill sandbox: {text}", file=sys.stderr, flush=True)


def call(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def mount(source, target, fstype, flags, data=None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    call(libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags),
                    encode(data)), f"mount {source} on {target}")


def unshare_namespaces() -> bool:
    """New mount, network, PID, IPC and UTS namespaces; False where the system refuses."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if os.geteuid() == 0:
        return libc.unshare(flags) == 0
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(flags | CLONE_NEWUSER) != 0:
        return False
    # map only our own ids, so files the answer writes are ours outside too
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    return True


def expose(path: str, root: str) -> None:
    """Make host `path` visible read-only at the same path under `root`, recreating the
    symbolic links met on the way (/lib -> usr/lib) rather than following them."""
    here = "/"
    parts = [p for p in path.split("/") if p]
    for index, part in enumerate(parts):
        here = os.path.join(here, part)
        inside = root + here
        if os.path.islink(here):
            target = os.readlink(here)
            if not os.path.lexists(inside):
                os.symlink(target, inside)
            rest = "/".join(parts[index + 1:])
            resolved = os.path.normpath(os.path.join(os.path.dirname(here), target))
            return expose(os.path.join(resolved, rest) if rest else resolved, root)
        if index < len(parts) - 1 or os.path.isdir(here):
            os.makedirs(inside, exist_ok=True)
        elif not os.path.exists(inside):
            open(inside, "w").close()
    if os.path.ismount(root + here) and here != "/":
        return  # already exposed
    mount(here, root + here, None, MS_BIND)
    kept = os.statvfs(here).f_flag & KEPT_FLAGS
    mount(None, root + here, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | kept)


def loaded_libraries() -> set[str]:
    """The folders of the shared libraries this interpreter has mapped (libc, libpython)."""
    with open("/proc/self/maps") as handle:
        fields = [line.split(None, 5) for line in handle]
    paths = {f[5].strip() for f in fields if len(f) == 6}
    return {os.path.dirname(p) for p in paths if p.startswith("/") and ".so" in p}


def private_root(config: dict) -> None:
    """Steps 3: build the answer's root in `config["folder"]` and pivot into it."""
    root = config["folder"]
    # the answer's uid owns its folder: the run's uid as root, our own in a user namespace
    as_root = os.geteuid() == 0 and config["uid"] is not None
    uid, gid = (config["uid"], config["gid"]) if as_root else (os.geteuid(), os.getegid())
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in sorted({config["prefix"], *loaded_libraries(), *config["also_expose"]}):
        if os.path.exists(path):
            expose(path, root)
    os.makedirs(root + "/dev")
    for device in ("null", "urandom"):
        open(f"{root}/dev/{device}", "w").close()
        mount(f"/dev/{device}", f"{root}/dev/{device}", None, MS_BIND)
    os.makedirs(root + "/work")
    mount("tmpfs", root + "/work", "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={config['folder_mb']}m,mode=700,uid={uid},gid={gid}")
    os.makedirs(root + "/proc")
    try:  # a /proc of this PID namespace; refused in a user namespace where the host's is masked
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as error:
        say(f"no /proc inside ({error})")
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    os.chdir(root)
    call(libc.syscall(SYSCALLS["pivot_root"], b".", b"."), "pivot_root")
    call(libc.umount2(b".", MNT_DETACH), "detach the host's root")  # the old root, stacked on ours
    os.chdir("/work")
    config["folder"] = "/work"


def set_limits(config: dict) -> None:
    mb = 1024 * 1024
    for limit, value in ((resource.RLIMIT_CPU, config["cpu_seconds"]),
                         (resource.RLIMIT_AS, config["memory_mb"] * mb),
                         (resource.RLIMIT_FSIZE, config["file_mb"] * mb),
                         (resource.RLIMIT_NPROC, config["processes"]),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def drop_privileges(config: dict) -> None:
    """As root, the run's uid; then, in every case, no capabilities (a process that made a
    user namespace holds them all there, and no exec follows to drop them) and no new
    privileges."""
    if os.geteuid() == 0 and config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: none, twice (64 bits)
    call(libc.syscall(SYSCALLS["capset"], header, data), "capset")
    call(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockProgram(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def no_unix_sockets() -> None:
    """A seccomp filter: socket(AF_UNIX, ...) fails with EPERM, so no Unix socket, by file
    or abstract name, can be connected to even where the namespaces did not hold
    (socketpair, which multiprocessing uses, stays allowed). Syscalls of another ABI (i386's
    socketcall, x32) fail too: they could make a socket the filter does not see."""
    load, jump_eq, jump_ge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | EPERM
    program = [(load, 0, 0, 4),  # the ABI (seccomp_data.arch)
               (jump_eq, 0, 6, SYSCALLS["arch"]),
               (load, 0, 0, 0),  # the syscall number
               (jump_ge, 4, 0, 0x40000000),  # x32
               (jump_eq, 0, 2, SYSCALLS["socket"]),
               (load, 0, 0, 16),  # socket's first argument, the family (low 32 bits)
               (jump_eq, 1, 0, AF_UNIX),
               (ret, 0, 0, allow),
               (ret, 0, 0, deny)]
    filters = (SockFilter * len(program))(*[SockFilter(*step) for step in program])
    prog = SockProgram(len(program), filters)
    call(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def landlock(folder: str) -> None:
    """Writes only beneath `folder`; no TCP bind or connect (ABI 4+); no signals to or
    abstract sockets of processes outside the domain (ABI 6+). Nothing where the kernel
    has no Landlock."""
    syscall = libc.syscall
    abi = syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)  # 1: the ABI version
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
    call(syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0), "landlock rule")
    os.close(folder_fd)
    call(syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
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


def run_answer(config: dict, harness: str) -> None:
    """In the child that becomes the answer: limits, privileges, Landlock, then the
    harness in this very process (no second interpreter start). Never returns; a step
    that fails exits with config["failed_status"] and says why on stderr."""
    try:
        os.chdir(config["folder"])
        os.environ["HOME"] = config["folder"]
        set_limits(config)
        drop_privileges(config)
        landlock(config["folder"])
        if SYSCALLS:
            no_unix_sockets()
        os.closerange(3, 1 << 16)
        namespace = {"__name__": "harness"}
        exec(compile(harness, "harness.py", "exec"), namespace)
    except BaseException as error:  # noqa: BLE001 - the parent must learn of any failure
        say(repr(error))
        os._exit(config["failed_status"])
    namespace["main"](config["solution"], config["probe"])
    sys.stdout.flush()
    os._exit(0)  # threads the answer started do not hold the process open


def start(config: dict, harness: str) -> int:
    pid = os.fork()
    if pid == 0:
        run_answer(config, harness)
    return wait_for(pid)


def main() -> int:
    with open(sys.argv[1]) as handle:
        config = json.load(handle)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")) as handle:
        harness = handle.read()
    for procs in config["cgroups"]:  # children inherit them: the totals cover every process
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))
    if not unshare_namespaces():
        say("no namespaces: the answer shares the host's network, processes and files")
        if config["barred"]:
            config["uid"] = None  # the interpreter is unreachable to another uid: stay root
        return start(config, harness)
    init = os.fork()  # PID 1 of the new namespace: it builds the root, then only waits
    if init == 0:
        try:
            private_root(config)
        except OSError as error:  # the system refused a step: go on with what it gives
            say(f"no private root ({error}): the answer sees the host's files")
            if config["barred"]:
                config["uid"] = None
        except BaseException as error:  # noqa: BLE001 - a fault of ours: this answer's sandbox_error
            say(f"building the root failed: {error!r}")
            os._exit(config["failed_status"])
        os._exit(start(config, harness))
    return wait_for(init)


if __name__ == "__main__":
    sys.exit(main())

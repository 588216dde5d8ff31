"""Totals across all of one answer's processes: a memory cgroup (its processes' memory and
the pages of its tmpfs folder, no swap) and a pids cgroup, one pair per run, made beneath
distill's own cgroups and removed after it.

cgroup v2 where distill's own cgroup delegates the memory and pids controllers to its
children (`cgroup.subtree_control`); else the v1 hierarchies (/sys/fs/cgroup/memory and
/pids) where they are writable (root, most containers). `where()` says which, or why none.
"""

from __future__ import annotations

import functools
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MOUNT = Path("/sys/fs/cgroup")


def _own(controller: str) -> str | None:
    """Distill's own cgroup path in `controller`'s hierarchy ("" for v2), from /proc."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers.split(",") == [controller] or (controller == "" and controllers == ""):
            return path
    return None


@functools.lru_cache(maxsize=1)
def where() -> tuple[str, dict[str, Path]] | tuple[str, None]:
    """("cgroup v2"/"cgroup v1", {controller: parent folder}) where runs can get cgroups;
    (the reason, None) where they cannot."""
    v2 = _own("")
    if v2 is not None and (MOUNT / "cgroup.controllers").is_file():
        parent = MOUNT / v2.lstrip("/")
        delegated = (parent / "cgroup.subtree_control").read_text().split()
        if {"memory", "pids"} <= set(delegated) and os.access(parent, os.W_OK):
            return "cgroup v2", {"memory": parent, "pids": parent}
    parents = {}
    for controller in ("memory", "pids"):
        own = _own(controller)
        folder = MOUNT / controller / (own or "/").lstrip("/")
        if own is None or not os.access(folder, os.W_OK):
            return (f"no writable {controller} cgroup (v2 without delegation of memory and "
                    "pids, and no writable v1 hierarchy)"), None
        parents[controller] = folder
    return "cgroup v1", parents


@dataclass
class Group:
    folders: list[Path]  # one per hierarchy (one folder on v2)
    version: str

    @property
    def procs(self) -> list[str]:
        """The files the jail writes its PID to, to join."""
        return [str(folder / "cgroup.procs") for folder in self.folders]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process for the memory total."""
        name = "memory.events" if self.version == "cgroup v2" else "memory.oom_control"
        for line in (self.folders[0] / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value) > 0
        return False

    def remove(self, patience_s: float = 2.0) -> None:
        """Kill what is left in the group, then remove it (a folder stays busy until its
        last process has exited)."""
        deadline = time.monotonic() + patience_s
        for folder in reversed(self.folders):
            while True:
                for pid in (folder / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    folder.rmdir()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)


def create(memory_mb: int, processes: int) -> Group | None:
    """A new group capped at `memory_mb` in all (no swap) and `processes` processes; None
    where `where()` found no way."""
    version, parents = where()
    if parents is None:
        return None
    name = f"distill-sandbox-{uuid.uuid4().hex[:12]}"
    memory = str(memory_mb * 1024 * 1024)
    if version == "cgroup v2":
        folder = parents["memory"] / name
        folder.mkdir()
        group = Group([folder], version)
        settings = {"memory.max": memory, "memory.swap.max": "0", "pids.max": str(processes)}
    else:
        group = Group([parents["memory"] / name, parents["pids"] / name], version)
        for folder in group.folders:
            folder.mkdir()
        settings = {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory}
    try:
        for key, value in settings.items():
            path = group.folders[0] / key
            if path.exists():  # memsw and swap.max exist only where swap is accounted
                path.write_text(value)
        if version == "cgroup v1":
            (group.folders[1] / "pids.max").write_text(str(processes))
    except OSError:
        group.remove()
        raise
    return group

"""Remove a folder an answer has had its way with: any depth (no recursion, no long
paths), folders it made unwritable or unreadable, files of another uid (as root).

`shutil.rmtree` recurses once per level (a 2,000-deep tree raises RecursionError) and
gives up on a folder without write permission. Here every subfolder met is first moved
up to the top folder under a fresh name, so the tree is flattened as it is emptied, and
only two folders are open at any time.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path


def _open_folder(name: str, parent_fd: int) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except PermissionError:  # a folder the answer made unreadable: it is still ours to open
        os.chmod(name, 0o700, dir_fd=parent_fd, follow_symlinks=False)
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)


def remove_tree(path: Path) -> None:
    """Remove `path` and all beneath it. A link is removed, never followed."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.chmod(top, 0o700)
        counter, tag = 0, uuid.uuid4().hex[:8]  # names no answer can foresee
        with os.scandir(top) as entries:
            pending = [entry.name for entry in entries]
        while pending:
            name = pending.pop()
            try:
                mode = os.stat(name, dir_fd=top, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(mode):
                os.unlink(name, dir_fd=top)
                continue
            folder = _open_folder(name, top)
            try:
                os.chmod(folder, 0o700)  # writable, so its entries can go
                with os.scandir(folder) as entries:
                    children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
                for child, is_folder in children:
                    if is_folder:  # up to the top: the depth never grows
                        counter += 1
                        moved = f".flat-{tag}-{counter}"
                        os.rename(child, moved, src_dir_fd=folder, dst_dir_fd=top)
                        pending.append(moved)
                    else:
                        os.unlink(child, dir_fd=folder)
            finally:
                os.close(folder)
            try:
                os.rmdir(name, dir_fd=top)
            except OSError as error:
                if error.errno != errno.ENOTEMPTY:
                    raise
                pending.append(name)  # something appeared meanwhile: once more
    finally:
        os.close(top)
    os.rmdir(path)


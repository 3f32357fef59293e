"""Directories only the daemon's user may change, and files in them opened without following
symlinks: the state dir (sqlite) and the control socket's dir.

A directory another user can write lets that user plant `state.sqlite -> /etc/passwd`, so
blockerd would chmod or write the target. Such a directory is refused with a clear error, as
is one reached through a path another user could re-point (an ancestor writable by others
without the sticky bit, as OpenSSH's StrictModes checks). Inside a private directory files are
opened relative to its descriptor with O_NOFOLLOW; sqlite opens by path, so what it will open
(the database, its -wal and -shm files) is checked with lstat() first: in a directory nobody
else can write, nothing can change between the check and the open.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


class UnsafePathError(OSError):
    """A state or socket path another user could control: blockerd will not use it."""


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _describe(mode: int) -> str:
    return f"mode {stat.S_IMODE(mode):04o}"


def check_ancestors(path: Path, what: str) -> None:
    """Every directory above `path` is owned by root (or us) and not writable by group or
    others, unless sticky (as /tmp): nobody else can rename `path` away."""
    for parent in path.absolute().parents:
        info = os.stat(parent)
        if not _trusted_owner(info.st_uid):
            raise UnsafePathError(
                f"{what} {path}: its parent {parent} is owned by uid {info.st_uid}, not root"
            )
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise UnsafePathError(
                f"{what} {path}: its parent {parent} is writable by group or others "
                f"({_describe(info.st_mode)}) and not sticky"
            )


def open_private_dir(path: Path, what: str, create: bool = True) -> int:
    """A descriptor of directory `path` (created 0700 when missing), after checking that it
    is a real directory, not a symlink, owned by root (or the daemon's user) and not writable
    by group or others. The caller closes it."""
    path = path.absolute()
    if create:
        try:
            os.lstat(path)
        except FileNotFoundError:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
    check_ancestors(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePathError(f"{what} {path} is a symlink: give its real path") from exc
        raise
    try:
        info = os.fstat(fd)
        if not _trusted_owner(info.st_uid):
            raise UnsafePathError(
                f"{what} {path} is owned by uid {info.st_uid}, not root: chown root {path}"
            )
        if info.st_mode & 0o022:
            raise UnsafePathError(
                f"{what} {path} is writable by group or others "
                f"({_describe(info.st_mode)}): chmod go-w {path}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def regular_or_missing(dir_fd: int, name: str, where: Path) -> bool:
    """True when `name` in the directory is a regular file, False when it does not exist;
    UnsafePathError for a symlink (dangling or not) or anything else."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(
            f"{where / name} is a symlink: blockerd never follows one in its state; remove it"
        )
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(f"{where / name} is not a regular file")
    if not _trusted_owner(info.st_uid):
        raise UnsafePathError(f"{where / name} is owned by uid {info.st_uid}, not root")
    return True


def create_private_file(dir_fd: int, name: str, where: Path) -> None:
    """Make sure `name` exists in the directory as a regular file of mode 0600, without
    following a symlink at any point (O_NOFOLLOW, fchmod on the open descriptor)."""
    exists = regular_or_missing(dir_fd, name, where)
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if not exists:
        flags |= os.O_CREAT | os.O_EXCL
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{where / name} is not a regular file")
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)

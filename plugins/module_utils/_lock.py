# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""One writer at a time per host: an exclusive flock(2) on a lock file, waited for with a bound.

The ksm module holds it for its whole read, validate, plan, write, verify and persist sequence (check mode too),
so overlapping runs (AWX schedules, a provisioning play, an ad hoc command) apply one after the other. The lock is
advisory: ksmtuned, other tools and a hand-typed ``echo`` into /sys/kernel/mm/ksm do not take it. The kernel drops
the lock when the holder's file descriptor closes, so a run that dies cannot leave a stale lock behind; the pid in
the file only names the holder in a message. Stdlib only. Runs on Python 3.6+.
"""

import contextlib
import errno
import fcntl
import os
import time
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KsmError, os_remedy

DEFAULT_PATH = "/run/lock/kvmhost-ksm.lock"
DEFAULT_TIMEOUT = 60  # seconds: longer than a typical run (an unmerge can take a while), short for a stuck one
POLL_INTERVAL = 0.1  # seconds between attempts


def holder(path: str) -> t.Optional[int]:
    """The pid the holder of the lock wrote into path, or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        try:
            text = os.read(fd, 64).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        return int(text)
    except (OSError, ValueError):
        return None


def _open(path: str) -> int:
    """The lock file's descriptor, the file (and its directory) made when missing; KsmError when it cannot be."""
    if not path or not os.path.isabs(path):
        raise KsmError("lock_file must be an absolute path, got {0!r}; leave it at {1} or choose another absolute "
                       "path; nothing was written.".format(path, DEFAULT_PATH), errno.EINVAL)
    try:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        flags = os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not os.path.isfile(path):
                raise
            return os.open(path, os.O_RDONLY | flags)  # flock needs no write access (non-root check mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            remedy = "it is a symbolic link, which is never followed; remove the link or choose another lock_file"
        elif exc.errno == errno.EISDIR:
            remedy = "it is a directory; choose a file path for lock_file"
        else:
            remedy = os_remedy(path, exc.errno) or "{0}; choose another lock_file".format(exc.strerror)
        raise KsmError("Cannot open the lock file {0}: {1}; nothing was written.".format(path, remedy),
                       exc.errno) from None


def _acquire(fd: int, path: str, timeout: float, interval: float) -> None:
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except (IOError, OSError) as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise KsmError("Cannot lock {0}: {1}; choose a lock_file on a local file system that supports "
                               "flock; nothing was written.".format(path, exc.strerror), exc.errno) from None
        if time.monotonic() >= deadline:
            pid = holder(path)
            who = "process {0}".format(pid) if pid is not None else "another process (its pid is not in the file)"
            raise KsmError("Another run of kvmhost.ksm.ksm holds the lock {0} (held by {1}) for more than "
                           "lock_timeout={2} s; wait for that run to finish and retry, raise lock_timeout, or check "
                           "that the holder is not stuck; nothing was written.".format(path, who, timeout),
                           errno.ETIMEDOUT)
        time.sleep(interval)


@contextlib.contextmanager
def host_lock(path: str = DEFAULT_PATH,
              timeout: float = DEFAULT_TIMEOUT,
              interval: float = POLL_INTERVAL) -> t.Iterator[None]:
    """Hold an exclusive flock on path for the body; wait at most timeout seconds (polling every interval) for
    another holder. Writes '<pid>\\n' into the file once held. Raises KsmError (one sentence) on timeout."""
    fd = _open(path)
    try:
        _acquire(fd, path, timeout, interval)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, "{0}\n".format(os.getpid()).encode("ascii"))
        except OSError:
            pass  # the pid only names the holder in a message; the lock holds without it
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def no_lock() -> t.Iterator[None]:
    """A stand-in for host_lock when the caller did not ask for a lock (contextlib.nullcontext is 3.7+)."""
    yield


def maybe_lock(path: t.Optional[str], timeout: float) -> t.ContextManager[None]:
    """host_lock(path, timeout) when path is set, else no lock."""
    if path is None:
        return no_lock()
    return host_lock(path, timeout)

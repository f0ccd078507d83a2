# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The persist file of the ksm module: a systemd-tmpfiles drop-in of 'w' lines that writes KSM knobs at boot.

The text is computed purely (``persist_text``, also in check mode). Before any KSM write the module asks
``problems`` whether the file may be replaced (an absolute path to a regular file or to nothing yet, never a
symlink, whose directory can be made and written, without immutable or append-only attributes), reads it with
``read_file`` (which refuses symlinks, other non-regular files and files that are no tmpfiles drop-in without
showing their content) and stages the new text with ``stage_file``; ``replace`` renames the staged file over it
at the end. Format: tmpfiles.d(5): the first line for a path is the one that applies (later ones are dropped
when the file is rewritten), and each line keeps its type (``w``, ``w+``, ``w-``, ...). Runs on Python 3.6+.
"""

import errno
import fcntl
import os
import platform
import re
import stat
import struct
import tempfile
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils._plan import Values, advisor_owns_pages_to_scan
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import (
    KNOBS,
    TUNABLES,
    KsmError,
    format_value,
    kind_of,
    os_remedy,
)

DEFAULT_PATH = "/etc/tmpfiles.d/kvmhost-ksm.conf"
PERSIST_HEADER = ("# KSM settings written by kvmhost.ksm.ksm, applied at boot by systemd-tmpfiles "
                  "(see tmpfiles.d(5)).")
MAX_SIZE = 1 << 20  # a drop-in is a few lines; a larger file at persist_file is something else
TYPE_FIELD = re.compile(r"^[A-Za-z][-+!=~^$?]*$")  # a line type and its modifiers (tmpfiles.d(5))
LITERAL_ONLY = "~^"  # modifiers that make the argument base64 or a credential name: dropped when the value changes
FS_IMMUTABLE_FL = 0x10
FS_APPEND_FL = 0x20

Change = t.Tuple[str, str, str]  # (path, old text, new text)
Line = t.Tuple[str, str, str]  # (type, knob, argument)


def parse_line(line: str, root: str) -> t.Optional[Line]:
    """(type, knob, argument) of a tmpfiles 'w' line (any modifiers) for a KSM knob under root, else None."""
    fields = line.split(None, 6)
    if len(fields) < 2 or fields[0][0] != "w" or not TYPE_FIELD.match(fields[0]):
        return None
    if os.path.normpath(os.path.dirname(fields[1])) != os.path.normpath(root):
        return None
    name = os.path.basename(fields[1])
    if name not in KNOBS:
        return None
    return fields[0], name, fields[6].strip() if len(fields) == 7 else ""


def parse_entry(line: str, root: str) -> t.Optional[t.Tuple[str, str]]:
    """(knob, argument) of a tmpfiles 'w' line for a KSM knob under root, else None."""
    parsed = parse_line(line, root)
    return None if parsed is None else (parsed[1], parsed[2])


def _line(kind: str, root: str, name: str, argument: str) -> str:
    kind = "".join(c for c in kind if c not in LITERAL_ONLY) or "w"
    return "{0} {1} - - - - {2}".format(kind, os.path.join(root, name), argument)


def persist_text(old: str, request: Values, root: str) -> str:
    """The tmpfiles.d text that writes the requested values at boot, merged with the entries already in old.

    The KSM entries form one block in safe order (run last) where the first of them was; per knob the first line
    applies (as for systemd-tmpfiles) and keeps its type, later duplicates are dropped; foreign lines stay as they
    are.
    """
    lines: t.Dict[str, str] = {}  # knob -> its first line, as it was
    kinds: t.Dict[str, str] = {}
    entries: t.Dict[str, str] = {}
    kept: t.List[str] = []
    at: t.Optional[int] = None
    for line in old.splitlines():
        parsed = parse_line(line, root)
        if parsed is None:
            kept.append(line)
            continue
        at = len(kept) if at is None else at
        kind, name, argument = parsed
        if name not in entries:  # the first line for a path is the one that applies
            lines[name], kinds[name], entries[name] = line, kind, argument
    if not request and not old:
        return old  # nothing to keep: do not create an empty drop-in
    for name, value in request.items():
        text = format_value(name, value)
        if entries.get(name) != text:
            lines[name] = _line(kinds.get(name, "w"), root, name, text)
            entries[name] = text
    if advisor_owns_pages_to_scan(entries.get("advisor_mode")):
        entries.pop("pages_to_scan", None)  # refused under the advisor, at boot too
    block = [lines[k.name] for k in TUNABLES if k.name in entries]  # safe order, run last
    if not kept and at is None:
        kept = [PERSIST_HEADER]
    at = len(kept) if at is None else at
    return "\n".join(kept[:at] + block + kept[at:]) + "\n"


# ---------------------------------------------------------------------------------------------- checks

def _getflags_request() -> int:
    """FS_IOC_GETFLAGS, _IOR('f', 1, long), for this architecture's ioctl encoding."""
    size = struct.calcsize("l")
    machine = platform.machine().lower()
    if machine.startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
        return (2 << 29) | (size << 16) | (ord("f") << 8) | 1
    return (2 << 30) | (size << 16) | (ord("f") << 8) | 1


def inode_flags(path: str) -> t.Optional[int]:
    """The inode flags of path (lsattr), without following a symlink; None where they cannot be read (the file
    system has none, or the file cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        raw = fcntl.ioctl(fd, _getflags_request(), b"\0" * struct.calcsize("l"))
        return struct.unpack("i", raw[:4])[0]
    except (IOError, OSError):
        return None  # ENOTTY, EOPNOTSUPP, EINVAL: no such flags here
    finally:
        os.close(fd)


def _attribute_problem(path: str, what: str) -> t.Optional[str]:
    flags = inode_flags(path)
    if flags is None:
        return None
    for flag, attribute, letter in ((FS_IMMUTABLE_FL, "immutable", "i"), (FS_APPEND_FL, "append-only", "a")):
        if flags & flag:
            return ("{0} {1} has the {2} attribute (lsattr shows '{3}'), so persist_file cannot be replaced; clear "
                    "it with chattr -{3} {1} or choose another persist_file; nothing was written."
                    .format(what, path, attribute, letter))
    return None


def _existing_ancestor(directory: str) -> str:
    while not os.path.lexists(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    return directory


def problems(path: str) -> t.List[str]:
    """Why the persist file at path cannot be replaced, checked without reading it (each one sentence)."""
    if not path or not os.path.isabs(path):
        return ["persist_file must be an absolute path, got {0!r}; set it to an absolute path such as {1}; "
                "nothing was written.".format(path, DEFAULT_PATH)]
    try:
        mode: t.Optional[int] = os.lstat(path).st_mode
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return ["Cannot inspect persist_file {0}: {1}; nothing was written.".format(
                path, os_remedy(path, exc.errno) or exc.strerror)]
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        return ["persist_file {0} is a symbolic link, which is never followed (its target is neither read nor "
                "shown); remove the link or point persist_file at a regular file; nothing was written."
                .format(path)]
    if mode is not None and stat.S_ISDIR(mode):
        return ["persist_file {0} is a directory, not a file; set persist_file to a file in it, such as {1}; "
                "nothing was written.".format(path, os.path.join(path, os.path.basename(DEFAULT_PATH)))]
    if mode is not None and not stat.S_ISREG(mode):
        return ["persist_file {0} is {1}, not a regular file; point persist_file at a regular file; nothing was "
                "written.".format(path, kind_of(mode))]
    found: t.List[str] = []
    directory = os.path.dirname(path)
    ancestor = _existing_ancestor(directory)
    if not os.path.isdir(ancestor):
        return ["Cannot write persist_file {0}: {1} is not a directory, so {2} cannot be made; choose another "
                "persist_file; nothing was written.".format(path, ancestor, directory)]
    checked = [(path, "persist_file")] if mode is not None else []
    for problem in (_attribute_problem(p, what) for p, what in checked + [(ancestor, "The directory")]):
        if problem is not None:
            found.append(problem)
    if not found and not os.access(ancestor, os.W_OK | os.X_OK):
        err = errno.EROFS if _read_only(ancestor) else errno.EACCES
        remedy = os_remedy(os.path.join(ancestor, "x"), err) or os.strerror(err)
        found.append("Cannot write persist_file {0}: {1} is not writable ({2}); nothing was written.".format(
            path, ancestor, remedy))
    return found


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- file I/O

def _not_a_drop_in(path: str, why: str) -> KsmError:
    return KsmError("persist_file {0} does not look like a systemd-tmpfiles drop-in ({1}), so it is left as it "
                    "is and its content is not shown; choose a drop-in path such as {2}; nothing was written."
                    .format(path, why, DEFAULT_PATH), errno.EINVAL)


def read_file(path: str) -> str:
    """The text of the persist file; '' when it does not exist yet. Never follows a symlink and never returns the
    content of anything but a regular file of tmpfiles lines."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return ""
        if exc.errno == errno.ELOOP:
            raise KsmError(problems(path)[0] if problems(path) else "persist_file {0} is a symbolic link; "
                           "nothing was written.".format(path), exc.errno) from None
        if exc.errno == errno.EISDIR:
            raise KsmError("Cannot read persist_file {0}: it is a directory, not a file; set persist_file to a "
                           "file in it; nothing was written.".format(path), exc.errno) from None
        raise KsmError("Cannot read persist_file {0}: {1}; nothing was written.".format(
            path, os_remedy(path, exc.errno) or exc.strerror), exc.errno) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise KsmError("Cannot read persist_file {0}: it is a directory, not a file; set persist_file to a "
                           "file in it; nothing was written.".format(path), errno.EISDIR)
        if not stat.S_ISREG(info.st_mode):
            raise KsmError("persist_file {0} is {1}, not a regular file; point persist_file at a regular file; "
                           "nothing was written.".format(path, kind_of(info.st_mode)), errno.EINVAL)
        if info.st_size > MAX_SIZE:
            raise _not_a_drop_in(path, "it is larger than {0} bytes".format(MAX_SIZE))
        data = b""
        while len(data) <= MAX_SIZE:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise KsmError("Cannot read persist_file {0}: {1}; nothing was written.".format(
            path, os_remedy(path, exc.errno) or exc.strerror), exc.errno) from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_a_drop_in(path, "it is not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2 or not TYPE_FIELD.match(fields[0]) or not fields[1].startswith(("/", "%")):
            raise _not_a_drop_in(path, "line {0} is no tmpfiles line".format(number))
    return text


def change(path: str, request: Values, root: str) -> Change:
    """(path, old text, new text) of the persist file for the requested values."""
    old = read_file(path)
    return path, old, persist_text(old, request, root)


def stage_file(path: str, text: str) -> str:
    """Write text to a temporary file next to path (before any KSM write, so a bad path fails early), with the
    mode and owner of the file it replaces (0644 root for a new one). The caller registers it for cleanup."""
    tmp: t.Optional[str] = None
    try:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(prefix=".kvmhost-ksm.", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            info = os.lstat(path)
        except OSError:
            info = None
        if info is not None and stat.S_ISREG(info.st_mode):
            os.chmod(tmp, stat.S_IMODE(info.st_mode))
            if (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
                os.chown(tmp, info.st_uid, info.st_gid)
        else:
            os.chmod(tmp, 0o644)
        return tmp
    except (IOError, OSError) as exc:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        raise KsmError("Cannot write persist_file {0}: {1}; choose a writable path; nothing was written."
                       .format(path, os_remedy(path, exc.errno) or exc.strerror), exc.errno) from None


def replace(tmp: str, path: str) -> None:
    """Move the staged file over path in one rename(2); KsmError when that fails (the caller rolls back)."""
    try:
        os.rename(tmp, path)
    except OSError as exc:
        raise KsmError("Cannot replace persist_file {0} with the staged file: {1}".format(
            path, os_remedy(path, exc.errno) or exc.strerror), exc.errno) from None

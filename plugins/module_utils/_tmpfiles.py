# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The persist file of the ksm module: a systemd-tmpfiles drop-in of 'w' lines that writes KSM knobs at boot.

The text is computed purely (``persist_text``, also in check mode); ``read_file`` and ``stage_file`` do the file
I/O before any KSM write, and the module moves the staged file in place with ``AnsibleModule.atomic_move``.
Format: tmpfiles.d(5). Runs on Python 3.6+.
"""

import os
import tempfile
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils._plan import Values, advisor_owns_pages_to_scan
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KNOBS, TUNABLES, KsmError, format_value

DEFAULT_PATH = "/etc/tmpfiles.d/kvmhost-ksm.conf"
PERSIST_HEADER = ("# KSM settings written by kvmhost.ksm.ksm, applied at boot by systemd-tmpfiles "
                  "(see tmpfiles.d(5)).")

Change = t.Tuple[str, str, str]  # (path, old text, new text)


def parse_entry(line, root):
    # type: (str, str) -> t.Optional[t.Tuple[str, str]]
    """(knob, argument) of a tmpfiles 'w' line for a KSM knob under root, else None."""
    fields = line.split(None, 6)
    if len(fields) < 2 or not fields[0].startswith("w") or os.path.dirname(fields[1]) != root.rstrip("/"):
        return None
    name = os.path.basename(fields[1])
    if name not in KNOBS:
        return None
    return name, fields[6].strip() if len(fields) == 7 else ""


def persist_text(old, request, root):
    # type: (str, Values, str) -> str
    """The tmpfiles.d text that writes the requested values at boot, merged with the entries already in old."""
    entries = {}  # type: t.Dict[str, str]
    kept = []  # type: t.List[str]
    at = None  # type: t.Optional[int]
    for line in old.splitlines():
        entry = parse_entry(line, root)
        if entry is None:
            kept.append(line)
            continue
        at = len(kept) if at is None else at
        entries[entry[0]] = entry[1]
    if not request and not old:
        return old  # nothing to keep: do not create an empty drop-in
    entries.update((n, format_value(n, v)) for n, v in request.items())
    if advisor_owns_pages_to_scan(entries.get("advisor_mode")):
        entries.pop("pages_to_scan", None)  # refused under the advisor, at boot too
    block = ["w {0} - - - - {1}".format(os.path.join(root, k.name), entries[k.name])
             for k in TUNABLES if k.name in entries]  # safe order, run last
    if not kept and at is None:
        kept = [PERSIST_HEADER]
    at = len(kept) if at is None else at
    return "\n".join(kept[:at] + block + kept[at:]) + "\n"


def read_file(path):
    # type: (str) -> str
    """The text of the persist file; '' when it does not exist yet."""
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError) as exc:
        if not os.path.exists(path):
            return ""
        raise KsmError("Cannot read persist_file {0}: {1}; fix its permissions.".format(path, exc.strerror))


def change(path, request, root):
    # type: (str, Values, str) -> Change
    """(path, old text, new text) of the persist file for the requested values."""
    old = read_file(path)
    return path, old, persist_text(old, request, root)


def stage_file(path, text):
    # type: (str, str) -> str
    """Write text to a temporary file next to path (before any KSM write, so a bad path fails early)."""
    try:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(prefix=".kvmhost-ksm.", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        return tmp
    except (IOError, OSError) as exc:
        raise KsmError("Cannot write persist_file {0}: {1}; choose a writable path; nothing was written."
                       .format(path, exc.strerror))

# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The argument spec of the ksm module, generated from the knob table of _sysfs (one option per knob, run as state).

A new knob in ``_sysfs.TUNABLES`` becomes an option here; its DOCUMENTATION entry is checked against this spec by
ansible-test's validate-modules and by the module's unit tests. Runs on Python 3.6+.
"""

import os
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils import _lock, _tmpfiles
from ansible_collections.kvmhost.ksm.plugins.module_utils._plan import option
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import (
    ADVISOR_MODES,
    DEFAULT_ROOT,
    RUN_STATES,
    TUNABLES,
)

Spec = t.Dict[str, t.Dict[str, t.Any]]

TYPE_OF_KIND = {"uint": "int", "int": "int", "ulong": "int", "bool": "bool", "enum": "str", "run": "str"}
CHOICES_OF_KIND = {"enum": ADVISOR_MODES, "run": RUN_STATES}
UNMERGE_TIMEOUT = 120  # seconds (the option's default)


def knob_options() -> Spec:
    """One option per knob: its type from the knob's kind, choices (listed alphabetically, as documented) for the
    enum and the run state; no default, so an option that is not set is not managed."""
    spec: Spec = {}
    for knob in TUNABLES:
        entry: t.Dict[str, t.Any] = {"type": TYPE_OF_KIND[knob.kind]}
        if knob.kind in CHOICES_OF_KIND:
            entry["choices"] = sorted(CHOICES_OF_KIND[knob.kind])
        spec[option(knob.name)] = entry
    return spec


def argument_spec() -> Spec:
    """The ksm module's argument spec: the knob options plus how to apply them (unmerging, persisting, where)."""
    spec = knob_options()
    spec.update(
        allow_unmerge=dict(type="bool", default=False),
        unmerge_timeout=dict(type="int", default=UNMERGE_TIMEOUT),
        persist=dict(type="bool", default=False),
        persist_file=dict(type="path", default=_tmpfiles.DEFAULT_PATH),
        sysfs_path=dict(type="path", default=DEFAULT_ROOT),
        lock_file=dict(type="path", default=_lock.DEFAULT_PATH),
        lock_timeout=dict(type="int", default=_lock.DEFAULT_TIMEOUT),
    )
    return spec


def normalise_path(path: str) -> str:
    """An absolute path without '..', '.', doubled or trailing slashes; other paths as they are (refused later)."""
    if not path or not os.path.isabs(path):
        return path
    return "/" + os.path.normpath(path).lstrip("/")


def lock_problems(params: t.Dict[str, t.Any]) -> t.List[str]:
    """Why the host lock cannot be taken with these options (each one sentence)."""
    found: t.List[str] = []
    if not params["lock_file"] or not os.path.isabs(params["lock_file"]):
        found.append("lock_file must be an absolute path, got {0!r}; leave it at {1} or choose another absolute "
                     "path; nothing was written.".format(params["lock_file"], _lock.DEFAULT_PATH))
    if params["lock_timeout"] < 0:
        found.append("lock_timeout is {0}, but it must be 0 (try once) or more seconds; nothing was written."
                     .format(params["lock_timeout"]))
    return found


def problems(params: t.Dict[str, t.Any]) -> t.List[str]:
    """Every problem of the options that say how to apply (not the knob values): each one sentence."""
    found = lock_problems(params)
    if params["unmerge_timeout"] < 0:
        found.append("unmerge_timeout is {0}, but it must be 0 (check once) or more seconds; nothing was written."
                     .format(params["unmerge_timeout"]))
    return found

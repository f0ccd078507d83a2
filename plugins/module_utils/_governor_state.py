# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The budget governor's name and state file (JSON, rewritten every interval by _governor), apart from the
governor itself so that ksm_facts reads the state without importing the loop. Stdlib only. Runs on Python 3.6+.
"""

import json
import os
import typing as t

NAME = "kvmhost-ksm-governor"
DEFAULT_STATE = "/run/kvmhost-ksm-governor.json"


def read_state(path: str = DEFAULT_STATE) -> t.Optional[t.Dict[str, t.Any]]:
    """The governor's state file as a dict; None when it is absent, unreadable or not a JSON object."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (IOError, OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(path: str, state: t.Dict[str, t.Any]) -> None:
    """Replace path with the JSON of state (a temporary file renamed over it); errors are ignored."""
    tmp = "{0}.{1}.tmp".format(path, os.getpid())
    try:
        with open(tmp, "w") as f:
            json.dump(state, f, sort_keys=True)
        os.rename(tmp, path)
    except (IOError, OSError):
        try:
            os.unlink(tmp)
        except OSError:
            pass

# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only stdout callback: print each host's raw module result (diff and warnings included) as one JSON line.

Used by tests/pytest_ansible/conftest.py (run_module); not part of the collection.
"""

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: kvmhost_result
type: stdout
short_description: raw module results as JSON lines (tests only)
description: Prints one JSON object (host, status, result) per task result, keeping diff and warnings.
"""


def _plain(value):
    """Warnings and deprecations are objects on ansible-core 2.19+; keep their text."""
    if isinstance(value, dict):
        return dict((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    for attr in ("msg", "message"):
        if isinstance(getattr(value, attr, None), str):
            return getattr(value, attr)
    details = getattr(value, "details", None)
    if details:
        return " ".join(str(getattr(d, "msg", d)) for d in details)
    return str(value)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "kvmhost_result"

    def _emit(self, status, result):
        raw = getattr(result, "result", None)
        if not isinstance(raw, dict):
            raw = result._result
        host = result._host.get_name() if hasattr(result, "_host") else result.host.get_name()
        self._display.display(json.dumps({"host": host, "status": status, "result": _plain(dict(raw))}))

    def v2_runner_on_ok(self, result):
        self._emit("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._emit("failed", result)

    def v2_runner_on_unreachable(self, result):
        self._emit("unreachable", result)

    def v2_runner_on_skipped(self, result):
        self._emit("skipped", result)

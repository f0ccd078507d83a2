# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fake KSM sysfs trees shaped like real kernels, for layouts and faults this machine cannot produce.

``ksm_tree(layout="6.8", numa=True, **values)`` builds <tmp>/ksm with the files of that kernel at their defaults
(values override them, as typed or text) and returns its path. Layouts: "4.18" (RHEL 8: the 14 files of 4.13),
"5.14" (RHEL 9, same 14), "6.1" (Debian 12, same 14), "6.8" (all 24; also 6.12 and 6.18).

``ksm_kernel(layout="6.8", numa=True, faults=None, **values)`` builds the same tree and returns a FakeKernel (``fake_kernel``):
a ``Sysfs`` on it that also behaves like mm/ksm.c where a plain file cannot (run=2 unmerges, the EBUSY knobs refuse
a change while pages_shared != 0, pages_to_scan is refused under the advisor, a change of advisor_mode resets
pages_to_scan, advisor_mode reads back bracketed, and a text outside the knob's values is refused with EINVAL, so a
test cannot pass on a write the planner should never make). ``faults`` maps a knob name to an errno, or to a list of errnos
consumed one per write, that its next writes raise as OSError, like the kernel's write(2) would.
"""

import errno

import os

import pytest

BASE = {  # 2.6.32 .. 4.13: the 14 files of RHEL 8/9 and Debian 12 kernels
    "run": "0",
    "pages_to_scan": "100",
    "sleep_millisecs": "20",
    "pages_shared": "0",
    "pages_sharing": "0",
    "pages_unshared": "0",
    "pages_volatile": "0",
    "full_scans": "0",
    "merge_across_nodes": "1",
    "use_zero_pages": "0",
    "max_page_sharing": "256",
    "stable_node_chains_prune_millisecs": "2000",
    "stable_node_chains": "0",
    "stable_node_dups": "0",
}
NEW = {  # 6.4 .. 6.8
    "general_profit": "0",
    "ksm_zero_pages": "0",
    "pages_scanned": "0",
    "smart_scan": "1",
    "pages_skipped": "0",
    "advisor_mode": "[none] scan-time",
    "advisor_max_cpu": "70",
    "advisor_min_pages_to_scan": "500",
    "advisor_max_pages_to_scan": "30000",
    "advisor_target_scan_time": "200",
}
LAYOUTS = {"4.18": BASE, "5.14": BASE, "6.1": BASE, "6.8": dict(BASE, **NEW)}


def _text(name, value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if name == "advisor_mode" and "[" not in str(value):
        return " ".join("[%s]" % m if m == value else m for m in ("none", "scan-time"))
    if name == "run" and not str(value).isdigit():
        return str(("stopped", "running", "unmerged").index(value))
    return str(value)


def make_tree(root, layout="6.8", numa=True, **values):
    files = dict(LAYOUTS[layout])
    if not numa:
        del files["merge_across_nodes"]
    for name, value in values.items():
        files[name] = _text(name, value)
    os.makedirs(str(root))
    for name, text in files.items():
        with open(os.path.join(str(root), name), "w") as f:
            f.write(text + "\n")
    return str(root)


@pytest.fixture
def ksm_tree(tmp_path):
    def build(layout="6.8", numa=True, **values):
        return make_tree(tmp_path / "ksm", layout, numa, **values)
    return build


def _sysfs():
    """The collection's sysfs layer, imported late: the collection loader may be set up after conftest import."""
    from ansible_collections.kvmhost.ksm.plugins.module_utils import _sysfs as layer
    return layer


def _accepted(knob, text):
    """Whether the kernel takes text for knob at all: only the texts format_value makes, within the knob's range."""
    if knob.kind == "enum":
        return text in _sysfs().ADVISOR_MODES
    if not text.isdigit() or text != str(int(text)):
        return False  # no signs, spaces, newlines or leading zeros: the planner writes none of them
    return knob.minimum <= int(text) <= knob.maximum


class KernelBehaviour(object):
    """Mixed into a Sysfs over a fake tree (see fake_kernel): answers writes the way the kernel does."""

    def __init__(self, root, faults=None):
        super(KernelBehaviour, self).__init__(root)
        self.faults = dict(faults or {})
        self.log = []  # every write attempted, as (name, text)

    def _set(self, name, text):
        with open(os.path.join(self.root, name), "w") as f:
            f.write(text + "\n")

    def _fault(self, name):
        fault = self.faults.get(name)
        if isinstance(fault, list):
            return fault.pop(0) if fault else None
        return fault

    def write_text(self, name, text):
        layer = _sysfs()
        self.log.append((name, text))
        err = self._fault(name)
        if err is None:
            err = self._kernel_refuses(name, text)
        if err is not None:
            raise layer.KsmError(layer.explain(self.path(name), text, err, "6.8.0-fake"), err)
        self._kernel_writes(name, text)

    def _kernel_refuses(self, name, text):
        layer = _sysfs()
        if not _accepted(layer.KNOBS[name], text):
            return errno.EINVAL
        if name == "pages_to_scan" and self.has("advisor_mode") and self.read("advisor_mode") != "none":
            return errno.EINVAL
        if layer.KNOBS[name].busy and layer.parse(name, text) != self.read(name) and self.read("pages_shared"):
            return errno.EBUSY
        return None

    def _kernel_writes(self, name, text):
        if name == "advisor_mode":
            if text != self.read("advisor_mode"):
                reset = "100" if text == "none" else self.read_text("advisor_min_pages_to_scan")
                self._set("pages_to_scan", reset)
            text = " ".join("[%s]" % m if m == text else m for m in _sysfs().ADVISOR_MODES)
        if name == "run" and text == "2":
            for stat in ("pages_shared", "pages_sharing", "full_scans"):
                self._set(stat, "0")
        self._set(name, text)

    def written(self):
        """Names written successfully or not, in order."""
        return [name for name, _text in self.log]


def fake_kernel(root, faults=None):
    """A FakeKernel: KernelBehaviour over the collection's Sysfs."""
    cls = type("FakeKernel", (KernelBehaviour, _sysfs().Sysfs), {})
    return cls(root, faults)


@pytest.fixture
def ksm_kernel(tmp_path):
    def build(layout="6.8", numa=True, faults=None, **values):
        return fake_kernel(make_tree(tmp_path / "ksm", layout, numa, **values), faults)
    return build

# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A model of the kernel behind /sys/kernel/mm/ksm, for property-based tests: a fake tree whose writes obey mm/ksm.c.

``KernelModel.build(root, layout="6.8", numa=True, offline=False, **values)`` writes the files of that kernel under
root (values as the module types them: ints, bools, "running", "scan-time") and returns a ``KernelModel``: the
collection's ``Sysfs`` on that tree, with ``write_text`` replaced by the kernel's store functions
(/work/shared/reference/ksm-kernel.md §3-§5, §9):

- parsing as the kernel parses: kstrtouint/kstrtoul/kstrtoint (decimal, an optional sign, one trailing newline,
  nothing else; overflow is ERANGE), kstrtobool (1/0/y/n/on/off), sysfs_streq for advisor_mode;
- ranges the kernel checks: run 0..2, merge_across_nodes 0..1, max_page_sharing >= 2, advisor_target_scan_time >= 1
  (advisor_max_cpu and the advisor page counts take any number; the module must check those);
- EBUSY for a *different* merge_across_nodes or max_page_sharing while pages_shared > 0;
- EINVAL for every pages_to_scan write while advisor_mode is not none (checked before parsing);
- a change of advisor_mode resets pages_to_scan: to 100 for none, to advisor_min_pages_to_scan for scan-time;
- run=2 unmerges at once (pages_shared, pages_sharing and full_scans read 0); with ``offline`` the run file reads
  with bit 4 set (memory offlining in progress), so only ``run & 3`` is the state.

Refusals by those rules are counted in ``refused`` (a correct planner makes none). ``fail_at = (k, errno)`` makes
the k-th write(2) (1-based, counting every write) fail with that errno without changing anything, except that a
failed run=2 leaves run at 0 as the kernel does. ``log`` holds every write as (name, text, errno or None).
Stdlib and the collection's _sysfs only; Python 3.6+.
"""

import errno
import os
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils import _sysfs

Values = t.Dict[str, t.Any]

KERNEL_DEFAULTS = {  # boot values of a 6.18 kernel (ksm-kernel.md §14); statistics start at 0
    "run": "0",
    "pages_to_scan": "100",
    "sleep_millisecs": "20",
    "merge_across_nodes": "1",
    "use_zero_pages": "0",
    "max_page_sharing": "256",
    "stable_node_chains_prune_millisecs": "2000",
    "smart_scan": "1",
    "advisor_mode": "[none] scan-time",
    "advisor_max_cpu": "70",
    "advisor_min_pages_to_scan": "500",
    "advisor_max_pages_to_scan": "30000",
    "advisor_target_scan_time": "200",
}
OLD_STATISTICS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans",
                  "stable_node_chains", "stable_node_dups")  # 2.6.32 .. 4.13
LAYOUTS = ("4.18", "6.1", "6.8")  # 4.18 and 6.1: the 14 files of 4.13; 6.8: all 24
OFFLINE = 4  # KSM_RUN_OFFLINE, shown in run while memory is being offlined
PARSERS = {  # knob -> (kernel parser, lowest, highest accepted value or None, errno for a parse error)
    "run": ("uint", 0, 2, errno.EINVAL),
    "pages_to_scan": ("uint", 0, None, errno.EINVAL),
    "sleep_millisecs": ("uint", 0, None, errno.EINVAL),
    "stable_node_chains_prune_millisecs": ("uint", 0, None, errno.EINVAL),
    "merge_across_nodes": ("ulong", 0, 1, None),  # parse errors returned as they are (EINVAL, ERANGE)
    "max_page_sharing": ("int", 2, None, None),
    "use_zero_pages": ("bool", 0, 1, errno.EINVAL),
    "smart_scan": ("bool", 0, 1, errno.EINVAL),
    "advisor_mode": ("enum", 0, 0, errno.EINVAL),
    "advisor_max_cpu": ("ulong", 0, None, errno.EINVAL),  # stored as unsigned int: truncated, never refused
    "advisor_min_pages_to_scan": ("ulong", 0, None, errno.EINVAL),
    "advisor_max_pages_to_scan": ("ulong", 0, None, errno.EINVAL),
    "advisor_target_scan_time": ("ulong", 1, None, errno.EINVAL),
}
LIMITS = {"uint": (0, _sysfs.UINT_MAX), "ulong": (0, _sysfs.ULONG_MAX), "int": (-_sysfs.INT_MAX - 1, _sysfs.INT_MAX)}


class Refusal(Exception):
    """The kernel's store function returned an error."""

    def __init__(self, err: int) -> None:
        super(Refusal, self).__init__(os.strerror(err))
        self.errno = err


def kstrtox(text: str, kind: str) -> int:
    """lib/kstrtox.c in base 10: an optional sign ('-' for signed kinds only), digits, at most one trailing newline."""
    body = text[:-1] if text.endswith("\n") else text
    sign = 1
    if body[:1] == "+":
        body = body[1:]
    elif body[:1] == "-" and kind == "int":
        sign, body = -1, body[1:]
    if not body or not all("0" <= c <= "9" for c in body):
        raise Refusal(errno.EINVAL)
    value = sign * int(body)
    low, high = LIMITS[kind]
    if not low <= value <= high:
        raise Refusal(errno.ERANGE)
    return value


def kstrtobool(text: str) -> int:
    """lib/kstrtox.c kstrtobool: judged by the first one or two characters."""
    first, second = text[:1].lower(), text[1:2].lower()
    if first in ("y", "1"):
        return 1
    if first in ("n", "0"):
        return 0
    if first == "o" and second == "n":
        return 1
    if first == "o" and second == "f":
        return 0
    raise Refusal(errno.EINVAL)


def sysfs_streq(text: str, word: str) -> bool:
    return (text[:-1] if text.endswith("\n") else text) == word


def mode_text(mode: str) -> str:
    return " ".join("[{0}]".format(m) if m == mode else m for m in _sysfs.ADVISOR_MODES)


def file_text(name: str, value: t.Any) -> str:
    """The text the kernel shows in file name for a typed value (or a text given as it is)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if name == "advisor_mode" and value in _sysfs.ADVISOR_MODES:
        return mode_text(value)
    if name == "run" and value in _sysfs.RUN_STATES:
        return str(_sysfs.RUN_STATES.index(value))
    return str(value)


def layout_files(layout: str, numa: bool) -> t.List[str]:
    """The file names of a kernel of that layout."""
    if layout not in LAYOUTS:
        raise ValueError("unknown layout {0!r}".format(layout))
    new = layout == "6.8"
    names = [k.name for k in _sysfs.TUNABLES if new or k.since in ("2.6.32", "3.9", "4.11", "4.13")]
    names += [n for n in _sysfs.STATISTIC_NAMES if new or n in OLD_STATISTICS]
    if not numa:
        names.remove("merge_across_nodes")
    return names


class KernelModel(_sysfs.Sysfs):
    """The collection's Sysfs over a fake tree, with the kernel's write rules (see the module docstring)."""

    def __init__(self, root: str, offline: bool = False) -> None:
        super(KernelModel, self).__init__(root)
        self.offline = offline
        self.fail_at: t.Optional[t.Tuple[int, int]] = None
        self.writes = 0
        self.log: t.List[t.Tuple[str, str, t.Optional[int]]] = []
        self.refused: t.List[t.Tuple[str, str, int]] = []

    @classmethod
    def build(cls,
              root: str,
              layout: str = "6.8",
              numa: bool = True,
              offline: bool = False,
              **values: t.Any) -> "KernelModel":
        names = layout_files(layout, numa)
        unknown = set(values) - set(names)
        if unknown:
            raise ValueError("layout {0} has no {1}".format(layout, ", ".join(sorted(unknown))))
        model = cls(root, offline)
        if not os.path.isdir(root):
            os.makedirs(root)
        for name in names:
            text = file_text(name, values[name]) if name in values else KERNEL_DEFAULTS.get(name, "0")
            model._store(name, text)
        return model

    # ------------------------------------------------------------------------------------------ the tree

    def _store(self, name: str, text: str) -> None:
        if name == "run" and self.offline:
            text = str(int(text) | OFFLINE)
        with open(os.path.join(self.root, name), "w") as f:
            f.write(text + "\n")

    def _shown(self, name: str) -> str:
        with open(os.path.join(self.root, name)) as f:
            return f.read().strip()

    def value(self, name: str) -> t.Any:
        """The value the kernel holds, typed like the module's options (run as its state name, & 3)."""
        text = self._shown(name)
        if name == "run":
            return _sysfs.RUN_STATES[int(text) & 3]
        if name == "advisor_mode":
            return text[text.index("[") + 1:text.index("]")]
        if name in PARSERS and PARSERS[name][0] == "bool" or name == "merge_across_nodes":
            return text == "1"
        return int(text)

    def state(self) -> Values:
        """Every writable knob of this kernel, typed."""
        return dict((k.name, self.value(k.name)) for k in _sysfs.TUNABLES
                    if os.path.exists(os.path.join(self.root, k.name)))

    def statistic(self, name: str) -> int:
        return int(self._shown(name))

    # ------------------------------------------------------------------------------------------ write(2)

    def write_text(self, name: str, text: str) -> None:
        if name not in _sysfs.KNOBS:
            raise ValueError("not a writable KSM file: {0!r}".format(name))
        path = os.path.join(self.root, name)
        self.writes += 1
        err: t.Optional[int] = None
        if self.fail_at is not None and self.fail_at[0] == self.writes:
            err = self.fail_at[1]
            if name == "run" and text.strip() == "2" and err in (errno.ENOMEM, errno.EINTR):
                self._store("run", "0")  # unmerge failed midway: the kernel forces run to 0
        elif not os.path.exists(path):
            err = errno.ENOENT
        else:
            try:
                self._kernel_store(name, text)
            except Refusal as exc:
                err = exc.errno
                self.refused.append((name, text, err))
        self.log.append((name, text, err))
        if err is not None:
            raise _sysfs.KsmError(_sysfs.explain(path, text, err, "6.8.0-model"), err)

    def _kernel_store(self, name: str, text: str) -> None:
        """The store function of mm/ksm.c for file name: refuse (Refusal) or change the tree."""
        has_mode = os.path.exists(os.path.join(self.root, "advisor_mode"))
        if name == "pages_to_scan" and has_mode and self.value("advisor_mode") != "none":
            raise Refusal(errno.EINVAL)  # checked before the text is parsed
        kind, low, high, parse_errno = PARSERS[name]
        if kind == "enum":
            mode = next((m for m in _sysfs.ADVISOR_MODES if sysfs_streq(text, m)), None)
            if mode is None:
                raise Refusal(errno.EINVAL)
            if mode != self.value("advisor_mode"):
                self._store("pages_to_scan", "100" if mode == "none" else self._shown("advisor_min_pages_to_scan"))
            self._store(name, mode_text(mode))
            return
        try:
            number = kstrtobool(text) if kind == "bool" else kstrtox(text, kind)
        except Refusal as exc:
            raise Refusal(parse_errno or exc.errno) from None
        if number < low or high is not None and number > high:
            raise Refusal(errno.EINVAL)
        if name == "advisor_max_cpu":
            number &= _sysfs.UINT_MAX
        if _sysfs.KNOBS[name].busy and number != int(self._shown(name)) and self.statistic("pages_shared"):
            raise Refusal(errno.EBUSY)
        if name == "run":
            if _sysfs.RUN_STATES[number] == self.value("run"):
                return  # the same value: no-op (no second unmerge)
            if number == 2:
                for stat in ("pages_shared", "pages_sharing", "full_scans"):
                    self._store(stat, "0")
        self._store(name, str(number))

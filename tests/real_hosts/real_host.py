# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One inventory host under test (this machine or a VM lab guest), driven through pytest-ansible.

``RealHost.run(module, check=False, diff=False, **args)`` runs one module on the host with pytest-ansible's host
manager (``ansible_adhoc``) and returns its result as a plain dict (``failed`` always set, warnings as text).
Reads (``read``, ``values``, ``has``) go to sysfs directly on localhost and through ``kvmhost.ksm.ksm_facts`` on
other hosts; which KSM files a kernel has comes from the host's facts (queried with jmespath), never from its version.

Why a small shim (``ModeDispatcher``): pytest-ansible 26.10 cannot switch check or diff mode per call. Its
``--ansible-check`` option is read by nothing, and the ad hoc play it builds has no ``check_mode``/``diff`` keyword.
``ModeDispatcher`` is its own ``ModuleDispatcherV213`` with the play's one task written with those two keywords
(from the host manager's options: ``ansible_adhoc(check=True, diff=True)``) and in the ``{fqcn: args}`` form (the
mapping form it uses is deprecated in ansible-core 2.19). Everything else (inventory, connection, become, results)
is pytest-ansible's.
"""

import typing as t

import jmespath
from pytest_ansible.module_dispatcher.v213 import ModuleDispatcherV213
from support.collection import import_collection

import_collection()

from ansible_collections.kvmhost.ksm.plugins.module_utils import _plan, _sysfs  # noqa: E402

FACTS = "kvmhost.ksm.ksm_facts"
KSM = "kvmhost.ksm.ksm"
Result = dict[str, t.Any]


class ModeDispatcher(ModuleDispatcherV213):
    """pytest-ansible's dispatcher, with check and diff mode taken from the host manager's options."""

    def _build_play_ds(self, complex_args: dict[str, t.Any]) -> dict[str, t.Any]:
        play: dict[str, t.Any] = super()._build_play_ds(complex_args)
        play["tasks"] = [{self.options["module_name"]: complex_args,
                          "check_mode": bool(self.options.get("check")),
                          "diff": bool(self.options.get("diff"))}]
        return play


def plain(value: t.Any) -> t.Any:
    """Result values as JSON types: warnings and deprecations are objects on ansible-core 2.19+; keep their text."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    for attr in ("msg", "message"):
        if isinstance(getattr(value, attr, None), str):
            return getattr(value, attr)
    details = getattr(value, "details", None)
    if details:
        return " ".join(str(getattr(d, "msg", d)) for d in details)
    return str(value)


class RealHost:
    """A host of the inventory with its own (local) or remote KSM."""

    def __init__(self, name: str, adhoc: t.Callable[..., t.Any], local: bool,
                 facts_cache: dict[str, dict[str, t.Any]]) -> None:
        self.name = name
        self.local = local
        self.dirty = False  # a non-check ksm run happened: a remote host needs its KSM put back
        self._adhoc = adhoc
        self._facts_cache = facts_cache
        self._sysfs = _sysfs.Sysfs() if local else None

    def __repr__(self) -> str:
        return f"RealHost({self.name!r})"

    # -- modules

    def run(self, module: str, check: bool = False, diff: bool = False, **args: t.Any) -> Result:
        """Run module (``ksm`` means kvmhost.ksm.ksm; any FQCN works) on this host; its result as a plain dict."""
        fqcn = module if "." in module else f"kvmhost.ksm.{module}"
        manager = self._adhoc(check=check, diff=diff)
        manager._dispatcher = ModeDispatcher  # the shim above; a public hook does not exist
        result = getattr(manager[self.name], fqcn)(**args)
        if fqcn == KSM and not check:
            self.dirty = True
        raw = plain(dict(result[self.name]))
        raw["failed"] = bool(raw.get("failed", False))
        return raw

    def ksm_facts(self, **args: t.Any) -> dict[str, t.Any]:
        result = self.run(FACTS, **dict({"processes": 0}, **args))
        assert not result["failed"], f"{FACTS} failed on {self.name}: {result.get('msg')}"
        facts: dict[str, t.Any] = result["ansible_facts"]["ksm"]
        return facts

    @property
    def facts(self) -> dict[str, t.Any]:
        """The KSM facts of this host at its first use in the session (features, kernel, saved values)."""
        if self.name not in self._facts_cache:
            self._facts_cache[self.name] = self.ksm_facts()
        return self._facts_cache[self.name]

    # -- reads

    @property
    def sysfs(self) -> "_sysfs.Sysfs":
        """This machine's KSM directory (localhost only)."""
        if self._sysfs is None:
            raise AssertionError(f"{self.name} is not this machine; its sysfs is read through {FACTS}")
        return self._sysfs

    def has(self, name: str) -> bool:
        """Whether this host's kernel has the KSM file name (from its facts)."""
        found = jmespath.search(f"contains(features.knobs, '{name}') || contains(features.statistics, '{name}')",
                                self.facts)
        return bool(found)

    def path(self, name: str) -> str:
        return f"{self.name}:{_sysfs.DEFAULT_ROOT}/{name}"

    def read(self, name: str) -> t.Any:
        """The parsed value of one tunable ("run" as its state) or statistic, read now."""
        if self._sysfs is not None:
            return self._sysfs.read(name)
        return jmespath.search(f'merge(tunables, statistics, {{run: state}})."{name}"', self.ksm_facts())

    def values(self) -> dict[str, t.Any]:
        """Every tunable, parsed, read now (the shape of Sysfs.read_tunables)."""
        if self._sysfs is not None:
            return self._sysfs.read_tunables()
        return self.tunables_of(self.ksm_facts())

    @staticmethod
    def tunables_of(facts: dict[str, t.Any]) -> dict[str, t.Any]:
        values: dict[str, t.Any] = jmespath.search("merge(tunables, {run: state})", facts)
        return values

    def unmerge(self, timeout: float = 120.0) -> None:
        """Stop KSM and unmerge every page (run=2), e.g. merged by other processes such as VM guests."""
        if self._sysfs is None:
            result = self.run("ksm", state="unmerged", unmerge_timeout=int(timeout))
            assert not result["failed"], f"could not unmerge the pages of {self.name}: {result.get('msg')}"
            return
        self._sysfs.write("run", "unmerged")
        assert self._sysfs.wait_unmerged(timeout), f"pages of {self.name} still merged after {timeout} s of run=2"

    # -- restore (remote hosts; localhost is restored by support.ksm_guard)

    def restore_args(self) -> dict[str, t.Any]:
        """kvmhost.ksm.ksm arguments that put back the KSM values of the session's first facts."""
        saved = _plan.restorable(self.tunables_of(self.facts))
        return dict(_plan.by_option(saved, saved), allow_unmerge=True)

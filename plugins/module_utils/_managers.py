# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Other programs that write the KSM files on a host: ksmtuned, ksm.service, Ubuntu's qemu-kvm.service, a tuned
profile that sets KSM, KubeVirt's virt-handler, Proxmox VE's ksmtuned.

Read-only detection from the unit states ksm_facts already has, the process names of its /proc pass and a few
configuration files under a root directory (unit tests pass a fake tree). Runs on Python 3.6+.
"""

import os
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils import _procfs

Facts = t.Dict[str, t.Any]
Units = t.Dict[str, t.Dict[str, str]]

# Process names (comm) the /proc pass of ksm_facts records.
WATCHED_COMMS = ("ksmtuned", "numad", "virt-handler", "tuned")
QEMU_KVM_DEFAULT = "etc/default/qemu-kvm"
TUNED_ACTIVE_PROFILE = "etc/tuned/active_profile"
TUNED_PROFILE_DIRS = ("etc/tuned/profiles", "etc/tuned", "usr/lib/tuned/profiles", "usr/lib/tuned")
PVEVERSION = "usr/bin/pveversion"
KSM_SYSFS_PREFIX = "/sys/kernel/mm/ksm/"
RUN_FILES = ["run", "pages_to_scan", "sleep_millisecs"]


def _read(root: str, path: str) -> t.Optional[str]:
    try:
        return _procfs.read_text(os.path.join(root, path))
    except (IOError, OSError):
        return None


def parse_shell_assignment(text: str, name: str) -> t.Optional[str]:
    """The last value a sourced shell file gives name ('KSM_ENABLED=0', 'KSM_ENABLED="AUTO"'), or None."""
    value: t.Optional[str] = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].strip()
        key, sep, rest = line.partition("=")
        if sep and key == name:
            value = rest.split("#", 1)[0].strip().strip("'\"")
    return value


def parse_tuned_profile(text: str) -> t.Tuple[t.List[str], t.List[str]]:
    """A tuned.conf -> (its included profiles, its KSM settings such as 'run=2' from [sysfs] lines)."""
    includes: t.List[str] = []
    settings: t.List[str] = []
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            continue
        if section == "main" and key == "include":
            includes.extend(p.strip() for p in value.replace(",", " ").split() if p.strip())
        elif key.startswith(KSM_SYSFS_PREFIX):
            settings.append("{0}={1}".format(key[len(KSM_SYSFS_PREFIX):], value))
    return includes, settings


def tuned_ksm_settings(root: str, profile: str, seen: t.Optional[t.Set[str]] = None) -> t.List[str]:
    """The KSM settings of a tuned profile and the profiles it includes: '[sysfs]' lines on the KSM files, and
    'disable_ksm' where one of its scripts calls tuned's disable_ksm (masks the units and writes run=2)."""
    seen = set() if seen is None else seen
    if profile in seen:
        return []
    seen.add(profile)
    for base in TUNED_PROFILE_DIRS:
        directory = os.path.join(root, base, profile)
        text = _read(directory, "tuned.conf")
        if text is None:
            continue
        includes, settings = parse_tuned_profile(text)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            names = []
        for name in names:
            if name.endswith(".sh") and "disable_ksm" in (_read(directory, name) or ""):
                settings.append("disable_ksm")
                break
        for include in includes:
            settings.extend(tuned_ksm_settings(root, include, seen))
        return settings
    return []


def _unit(units: Units, name: str) -> t.Optional[t.Dict[str, str]]:
    state = units.get(name)
    if not state or state.get("load_state") in ("not-found", "unknown", "error", None):
        return None
    return state


def _enabled(state: t.Optional[t.Dict[str, str]]) -> t.Optional[bool]:
    if state is None or state.get("unit_file_state") in (None, "unknown"):
        return None
    return state.get("unit_file_state") in ("enabled", "enabled-runtime", "static", "alias")


def _manager(name: str, active: bool, enabled: t.Optional[bool], files: t.List[str], detail: str,
             **extra: t.Any) -> Facts:
    manager: Facts = {"name": name, "active": active, "enabled": enabled, "files": files, "detail": detail}
    manager.update(extra)
    return manager


def detect(units: Units, comm_pids: t.Dict[str, t.List[int]], root: str = "/") -> t.List[Facts]:
    """Every KSM manager found: name, active (runs now), enabled (starts at boot; None: unknown), the KSM files
    it writes and a detail sentence. units: ksm_facts' services.units; comm_pids: pids per WATCHED_COMMS name."""
    found: t.List[Facts] = []
    proxmox = os.path.exists(os.path.join(root, PVEVERSION))
    ksmtuned = _unit(units, "ksmtuned.service")
    ksmtuned_pids = comm_pids.get("ksmtuned", [])
    if ksmtuned or ksmtuned_pids:
        active = bool(ksmtuned_pids) or (ksmtuned or {}).get("active_state") == "active"
        found.append(_manager(
            "proxmox" if proxmox else "ksmtuned", active, _enabled(ksmtuned), list(RUN_FILES),
            "{0}ksmtuned.service {1}, {2}; processes {3}".format(
                "Proxmox VE's ksm-control-daemon: " if proxmox else "",
                (ksmtuned or {}).get("active_state", "not a unit"),
                (ksmtuned or {}).get("unit_file_state", "unknown"),
                ", ".join(map(str, ksmtuned_pids)) or "none")))
    ksm = _unit(units, "ksm.service")
    if ksm:
        found.append(_manager(
            "ksm.service", ksm.get("active_state") == "active", _enabled(ksm), ["run"],
            "ksm.service {0}, {1}: writes run=1 when it starts and run=0 when it stops".format(
                ksm.get("active_state"), ksm.get("unit_file_state"))))
    default = _read(root, QEMU_KVM_DEFAULT)
    qemu_kvm = _unit(units, "qemu-kvm.service")
    if default is not None or qemu_kvm:
        value = parse_shell_assignment(default or "", "KSM_ENABLED") or "AUTO"
        found.append(_manager(
            "qemu-kvm", value != "0" and (qemu_kvm or {}).get("active_state") == "active",
            _enabled(qemu_kvm) if value != "0" else False, ["run", "sleep_millisecs"] if value != "0" else [],
            "qemu-kvm.service with KSM_ENABLED={0} in /{1}{2}".format(
                value, QEMU_KVM_DEFAULT, "" if value == "0" else ": turns KSM on at boot"),
            ksm_enabled=value))
    profiles = (_read(root, TUNED_ACTIVE_PROFILE) or "").split()
    settings = [s for profile in profiles for s in tuned_ksm_settings(root, profile)]
    if settings:
        tuned = _unit(units, "tuned.service")
        found.append(_manager(
            "tuned", bool(comm_pids.get("tuned")) or (tuned or {}).get("active_state") == "active", _enabled(tuned),
            sorted(set("run" if s == "disable_ksm" else s.partition("=")[0] for s in settings)),
            "tuned profile {0} sets KSM: {1}".format(" ".join(profiles), ", ".join(settings)),
            profile=" ".join(profiles), settings=settings))
    if comm_pids.get("virt-handler"):
        found.append(_manager(
            "kubevirt", True, None, list(RUN_FILES),
            "KubeVirt virt-handler runs (processes {0}): on nodes its ksmConfiguration selects it writes run, "
            "pages_to_scan and sleep_millisecs every 3 minutes".format(", ".join(map(str, comm_pids["virt-handler"])))))
    return found

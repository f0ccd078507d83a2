# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Detection of the other KSM managers on fake trees (units as ksm_facts reports them, process names, files).

Real ksmtuned and tuned packages are detected in the molecule scenario managers.
"""

import os

from ansible_collections.kvmhost.ksm.plugins.module_utils import _managers

LOADED = {"load_state": "loaded", "active_state": "active", "unit_file_state": "enabled"}
ABSENT = {"load_state": "not-found", "active_state": "inactive", "unit_file_state": ""}


def write(root, path, text):
    path = os.path.join(str(root), path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def by_name(found):
    return dict((m["name"], m) for m in found)


def test_nothing_found(tmp_path):
    assert _managers.detect({"ksm.service": ABSENT, "ksmtuned.service": ABSENT}, {}, str(tmp_path)) == []


def test_debian_units_and_process(tmp_path):
    found = by_name(_managers.detect({"ksm.service": LOADED, "ksmtuned.service": LOADED}, {"ksmtuned": [812]},
                                     str(tmp_path)))
    assert found["ksmtuned"]["active"] is True and found["ksmtuned"]["enabled"] is True
    assert found["ksmtuned"]["files"] == ["run", "pages_to_scan", "sleep_millisecs"]
    assert "processes 812" in found["ksmtuned"]["detail"]
    assert found["ksm.service"]["files"] == ["run"]


def test_proxmox_names_its_ksmtuned(tmp_path):
    write(tmp_path, "usr/bin/pveversion", "#!/bin/sh\n")
    found = _managers.detect({"ksmtuned.service": LOADED}, {"ksmtuned": [9]}, str(tmp_path))
    assert [m["name"] for m in found] == ["proxmox"] and "ksm-control-daemon" in found[0]["detail"]


def test_ubuntu_qemu_kvm_default(tmp_path):
    write(tmp_path, "etc/default/qemu-kvm", "# comment\nKSM_ENABLED=AUTO\nSLEEP_MILLISECS=200\n")
    found = by_name(_managers.detect({"qemu-kvm.service": LOADED}, {}, str(tmp_path)))
    assert found["qemu-kvm"]["ksm_enabled"] == "AUTO" and found["qemu-kvm"]["active"] is True
    write(tmp_path, "etc/default/qemu-kvm", 'KSM_ENABLED="0"\n')
    found = by_name(_managers.detect({"qemu-kvm.service": LOADED}, {}, str(tmp_path)))
    assert found["qemu-kvm"]["ksm_enabled"] == "0" and found["qemu-kvm"]["active"] is False
    assert found["qemu-kvm"]["files"] == []


def test_tuned_profile_with_include_and_script(tmp_path):
    write(tmp_path, "etc/tuned/active_profile", "my-rt\n")
    write(tmp_path, "etc/tuned/my-rt/tuned.conf", "[main]\ninclude=base-rt\n[sysfs]\n/sys/kernel/mm/ksm/run=2\n")
    write(tmp_path, "usr/lib/tuned/base-rt/tuned.conf", "[main]\nsummary=x\n[script]\nscript=script.sh\n")
    write(tmp_path, "usr/lib/tuned/base-rt/script.sh", "start() { disable_ksm; }\n")
    found = by_name(_managers.detect({"tuned.service": LOADED}, {"tuned": [77]}, str(tmp_path)))
    assert found["tuned"]["settings"] == ["run=2", "disable_ksm"] and found["tuned"]["profile"] == "my-rt"
    assert found["tuned"]["active"] is True and found["tuned"]["files"] == ["run"]


def test_tuned_profile_without_ksm_is_not_a_manager(tmp_path):
    write(tmp_path, "etc/tuned/active_profile", "balanced\n")
    write(tmp_path, "usr/lib/tuned/profiles/balanced/tuned.conf", "[cpu]\ngovernor=conservative\n")
    assert _managers.detect({"tuned.service": LOADED}, {"tuned": [77]}, str(tmp_path)) == []


def test_include_loop_ends(tmp_path):
    write(tmp_path, "etc/tuned/active_profile", "a\n")
    write(tmp_path, "etc/tuned/a/tuned.conf", "[main]\ninclude=b\n")
    write(tmp_path, "etc/tuned/b/tuned.conf", "[main]\ninclude=a\n[sysfs]\n/sys/kernel/mm/ksm/sleep_millisecs=50\n")
    assert by_name(_managers.detect({}, {}, str(tmp_path)))["tuned"]["settings"] == ["sleep_millisecs=50"]


def test_kubevirt(tmp_path):
    found = _managers.detect({}, {"virt-handler": [4000]}, str(tmp_path))
    assert found[0]["name"] == "kubevirt" and found[0]["active"] is True and "4000" in found[0]["detail"]

# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The metrics text of _metrics on facts from _facts.collect over fake trees, the textfile write, the unit label.

The real host is covered by the molecule scenario extensions/molecule/metrics (node_exporter scrapes the file).
"""

import ast
import os
import re
import shutil
import stat
import subprocess

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _facts, _metrics, _procfs

from ansible_collections.kvmhost.ksm.tests.unit.fake_host import ksm_stat_text, make_nodes, make_proc

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
QEMU = {"pid": 4242, "comm": "qemu-system-x86", "cmdline": ["/usr/bin/qemu-system-x86_64", "-name", "guest=web1"],
        "ksm": ksm_stat_text(merging=1000, rmap=3000, zero=0, profit=3904000)}
SHELL = {"pid": 77, "comm": 'we"ird\\name', "ksm": ksm_stat_text(merging=10, rmap=5000, zero=0, profit=-279040)}


def facts_of(tmp_path, ksm_tree, processes=(QEMU, SHELL), **values):
    proc = make_proc(tmp_path / "proc", list(processes))
    nodes = make_nodes(tmp_path / "node", [[10]])
    return _facts.collect(sysfs_root=ksm_tree(**values), processes=10, proc_root=proc, node_root=nodes,
                          systemd_root=str(tmp_path / "no-systemd"), page_size=4096, clock_ticks=100, euid=0,
                          release="6.8.0-test", bits=64)


def parse(text):
    """{(name, frozenset(labels)): value} and {name: (type, help)} of a text exposition (no timestamps allowed)."""
    samples, meta = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _h, _t, name, kind = line.split(" ", 3)
            assert name not in meta, "family %s declared twice" % name
            meta[name] = kind
            continue
        if line.startswith("#"):
            continue
        match = re.match(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$', line)
        assert match, "not a sample line without timestamp: %r" % line
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples, meta


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def test_host_metrics_equal_the_facts(tmp_path, ksm_tree):
    facts = facts_of(tmp_path, ksm_tree, run="running", pages_sharing=300, pages_shared=100, ksm_zero_pages=5,
                     general_profit=-4096, full_scans=7, sleep_millisecs=20, advisor_max_cpu=70)
    samples, meta = parse(_metrics.render(facts, mode="static", interval=60, now=1000.0))
    assert value(samples, "kvmhost_ksm_available") == 1
    assert value(samples, "kvmhost_ksm_run_state") == 1
    assert value(samples, "kvmhost_ksm_saved_bytes") == facts["saved_bytes"] == 305 * 4096
    assert value(samples, "kvmhost_ksm_profit_bytes") == -4096  # signed: the case an operator must see
    assert value(samples, "kvmhost_ksm_general_profit_bytes") == -4096
    assert value(samples, "kvmhost_ksm_full_scans_total") == 7
    assert value(samples, "kvmhost_ksm_sleep_seconds") == 0.02
    assert value(samples, "kvmhost_ksm_advisor_max_cpu_ratio") == 0.7
    assert value(samples, "kvmhost_ksm_collect_interval_seconds") == 60
    assert value(samples, "kvmhost_ksm_collect_timestamp_seconds") == 1000
    assert value(samples, "kvmhost_ksm_info", mode="static", state="running", advisor_mode="none",
                 merge_across_nodes="true", recommended_merge_across_nodes="true", profit_source="general_profit",
                 kernel_release="6.8.0-test") == 1
    assert meta["kvmhost_ksm_full_scans_total"] == "counter"
    assert meta["kvmhost_ksm_scanned_pages_total"] == "counter"
    for name, kind in meta.items():
        assert name.endswith("_total") == (kind == "counter"), name


def test_every_statistic_and_tunable_of_the_kernel_is_exported(tmp_path, ksm_tree):
    facts = facts_of(tmp_path, ksm_tree)
    _samples, meta = parse(_metrics.render(facts))
    for name in facts["statistics"]:
        assert _metrics.PREFIX + _metrics.STATISTICS[name].name in meta
    for name in facts["tunables"]:
        if name != "advisor_mode":  # a label of the info metric, and advisor_active
            assert _metrics.PREFIX + _metrics.TUNABLES[name][0].name in meta
    assert set(_metrics.STATISTICS) == set(_facts.STATISTIC_NAMES)
    assert set(_metrics.TUNABLES) | {"advisor_mode", "run"} == set(_facts.KNOBS)


def test_old_kernel_exports_only_what_it_has(tmp_path, ksm_tree):
    facts = facts_of(tmp_path, ksm_tree, layout="4.18", numa=False)
    samples, meta = parse(_metrics.render(facts))
    assert "kvmhost_ksm_general_profit_bytes" not in meta
    assert "kvmhost_ksm_advisor_active" not in meta
    assert "kvmhost_ksm_merge_across_nodes" not in meta
    assert "kvmhost_ksm_recommended_merge_across_nodes" not in meta
    assert value(samples, "kvmhost_ksm_profit_bytes") == facts["profit_bytes"]


def test_process_metrics_have_pid_comm_guest_and_unit(tmp_path, ksm_tree):
    facts = facts_of(tmp_path, ksm_tree)
    facts["processes"][0]["unit"] = "machine-qemu\\x2d1\\x2dweb1.scope"
    text = _metrics.render(facts)
    samples, _meta = parse(text)
    assert value(samples, "kvmhost_ksm_process_merged_bytes", pid="4242", comm="qemu-system-x86", guest="web1",
                 unit="machine-qemu\\\\x2d1\\\\x2dweb1.scope") == 1000 * 4096
    assert value(samples, "kvmhost_ksm_process_profit_bytes", pid="77", comm='we\\"ird\\\\name') == -279040
    assert value(samples, "kvmhost_ksm_process_rmap_items", pid="77", comm='we\\"ird\\\\name') == 5000


def test_no_processes_no_process_families(tmp_path, ksm_tree):
    _samples, meta = parse(_metrics.render(facts_of(tmp_path, ksm_tree, processes=())))
    assert not [name for name in meta if name.startswith("kvmhost_ksm_process_")]


def test_host_without_ksm_exports_available_0(tmp_path):
    facts = _facts.collect(sysfs_root=str(tmp_path / "none"), processes=0, proc_root=str(tmp_path),
                           page_size=4096, clock_ticks=100, release="6.8.0-test")
    samples, meta = parse(_metrics.render(facts, multi_tenant=True))
    assert value(samples, "kvmhost_ksm_available") == 0
    assert value(samples, "kvmhost_ksm_multi_tenant") == 1
    assert "kvmhost_ksm_run_state" not in meta and "kvmhost_ksm_saved_bytes" not in meta


@pytest.mark.skipif(not shutil.which("promtool"), reason="no promtool here (Debian package prometheus)")
def test_promtool_accepts_the_text(tmp_path, ksm_tree):
    text = _metrics.render(facts_of(tmp_path, ksm_tree, general_profit=-1), mode="static", interval=60)
    proc = subprocess.Popen(["promtool", "check", "metrics"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.communicate(text.encode())[0]
    assert proc.returncode == 0, out


def test_write_textfile_renames_a_temporary_file(tmp_path, ksm_tree, monkeypatch):
    renames = []
    real_rename = os.rename

    def rename(src, dst):
        renames.append((os.path.basename(src), os.path.basename(dst)))
        assert os.path.dirname(src) == os.path.dirname(dst)  # same directory: an atomic rename
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    path = _metrics.write_textfile(str(tmp_path), "kvmhost_ksm_available 1\n")
    assert path == str(tmp_path / "kvmhost_ksm.prom")
    assert not renames[0][0].endswith(".prom")  # the textfile collector never reads the half-written file
    assert os.listdir(str(tmp_path)) == ["kvmhost_ksm.prom"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_main_writes_the_file_and_explains_a_missing_directory(tmp_path, ksm_tree, capsys):
    root = ksm_tree()
    assert _metrics.main(["--sysfs-path", root, "--textfile-dir", str(tmp_path), "--processes", "0"]) == 0
    assert "kvmhost_ksm_available 1" in (tmp_path / "kvmhost_ksm.prom").read_text()
    assert _metrics.main(["--sysfs-path", root, "--textfile-dir", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "create the directory" in err and "Traceback" not in err


@pytest.mark.parametrize("text, unit", [
    ("0::/system.slice/libvirtd.service\n", "libvirtd.service"),
    ("0::/machine.slice/machine-qemu\\x2d1\\x2dweb1.scope/libvirt/emulator\n", "machine-qemu\\x2d1\\x2dweb1.scope"),
    ("12:memory:/x\n1:name=systemd:/system.slice/pve-guests.service/qemu.slice\n0::/\n", "pve-guests.service"),
    ("0::/user.slice/user-0.slice/session-3.scope\n", "session-3.scope"),
    ("0::/\n", None),
    ("", None),
])
def test_parse_cgroup_unit(text, unit):
    assert _procfs.parse_cgroup_unit(text) == unit


def test_units_from_proc_cgroup(tmp_path, ksm_tree):
    """The collector the metrics command calls reports each process's unit from /proc/<pid>/cgroup."""
    proc = make_proc(tmp_path / "proc", [QEMU, SHELL])
    with open(str(tmp_path / "proc" / "4242" / "cgroup"), "w") as f:
        f.write("0::/machine.slice/machine-qemu\\x2d1\\x2dweb1.scope/libvirt/emulator\n")
    facts = _facts.collect(sysfs_root=ksm_tree(), processes=10, proc_root=proc,
                           node_root=make_nodes(tmp_path / "node", [[10]]), systemd_root=str(tmp_path / "no-systemd"),
                           page_size=4096, clock_ticks=100, euid=0, release="6.8.0-test", bits=64)
    assert facts["processes"][0]["unit"] == "machine-qemu\\x2d1\\x2dweb1.scope"
    assert "unit" not in facts["processes"][1]  # no cgroup file: no unit label


@pytest.mark.parametrize("entry, listed_as", [("_metrics", "__ksm_metrics_module_utils"),
                                              ("_governor", "__ksm_governor_module_utils")])
def test_the_role_copies_the_import_closure_of_metrics(entry, listed_as):
    """roles/ksm/vars/main.yml lists every module_utils file _metrics (and the budget governor) needs."""
    utils = os.path.join(REPO, "plugins", "module_utils")
    if not os.path.exists(os.path.join(utils, entry + ".py")):
        pytest.skip("plugins/module_utils/{0}.py is not in this tree yet".format(entry))
    needed, todo = set(), [entry]
    while todo:
        name = todo.pop()
        needed.add(name + ".py")
        with open(os.path.join(utils, name + ".py")) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "kvmhost.ksm.plugins.module_utils" in node.module:
                mods = [node.module.rsplit(".", 1)[1]] if node.module.split(".")[-1].startswith("_") else \
                    [alias.name for alias in node.names]
                todo.extend(m for m in mods if m + ".py" not in needed)
    with open(os.path.join(REPO, "roles", "ksm", "vars", "main.yml")) as f:
        listed = re.search(r"^{0}: \[(.*)\]$".format(listed_as), f.read(), re.M)
    assert listed, "roles/ksm/vars/main.yml has no one-line {0} list".format(listed_as)
    assert sorted(x.strip() for x in listed.group(1).split(",")) == sorted(needed)

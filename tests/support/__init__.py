# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Support shared by the tests, scripts and benchmarks of kvmhost.ksm (controller side, Python 3.11).

Put ``<repo>/tests`` on ``sys.path`` and ``import support.<name>``; every module also runs as a script
(``python3 tests/support/<name>.py``). One module for each job:

- ``collection``: the collection environment (collections path, interpreter, ANSIBLE_* settings);
- ``tools``: finding ``ansible``, ``ansible-playbook``, ``molecule`` ...;
- ``venvs``: scratch venvs built from requirements/;
- ``host_packages``: installing the Debian packages a test host needs (stdlib only, system python3);
- ``ksm_guard``: the machine-wide lock and the save/restore of the real KSM;
- ``merge_workload``: processes holding identical mergeable pages;
- ``machine``: what the benchmarks print about the machine (CPU model, cores, RAM, kernel, load);
- ``plots``: a benchmark's plot script run in the bench venv (matplotlib).
"""

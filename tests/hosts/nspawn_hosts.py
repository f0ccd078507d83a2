# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot, reach and stop systemd-nspawn test containers for kvmhost.ksm.

    nspawn-hosts up NAME... [--rootfs DIR]   boot containers (systemd as PID 1) on overlay copies of the rootfs
    nspawn-hosts down [NAME...]              stop the named containers (all known ones without names), by pid
    nspawn-hosts list                        NAME LEADER-PID for the running containers
    nspawn-hosts proxy NAME                  ssh ProxyCommand: stdio <-> 127.0.0.1:22 inside NAME's network
    nspawn-hosts key                         path of the ssh private key authorised in every container

Each container: `systemd-nspawn -b --register=no --keep-unit --private-network` (the host's PID 1 is not systemd)
run detached in its own private mount namespace (`unshare --mount`), where an overlayfs joins the read-only
cached rootfs and a per-container upper directory; nothing is mounted in the host's namespace. The host's
/sys/kernel/mm/ksm is bound to /mnt/host-ksm and the image's sys-kernel-mm-ksm.mount puts it over the container's
read-only /sys/kernel/mm/ksm: containers drive the HOST's KSM (run under tests/support/ksm_guard.py guard).
No network: the only way in is ssh through the container's own loopback (nsenter + socat).

State lives in $KSM_HOSTS_STATE (default <repo>/.cache/hosts/run): <name>/{upper,work,merged,pid,log}, id_ed25519.
The rootfs defaults to $KSM_HOSTS_ROOTFS, else the cached image printed by tests/hosts/rootfs.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STATE = os.environ.get("KSM_HOSTS_STATE", os.path.join(REPO, ".cache", "hosts", "run"))
BOOT_TIMEOUT = float(os.environ.get("KSM_HOSTS_BOOT_TIMEOUT", "90"))
STOP_TIMEOUT = 30.0
MASKED_UNITS = ("systemd-ask-password-console.path", "systemd-ask-password-wall.path")


def fail(msg: str) -> "t.NoReturn":
    print(f"nspawn-hosts: {msg}", file=sys.stderr)
    sys.exit(1)


def cdir(name: str) -> str:
    return os.path.join(STATE, name)


def read_pid(name: str) -> int | None:
    """The nspawn pid of a container, or None when it is not running (stale pid files are ignored)."""
    try:
        with open(os.path.join(cdir(name), "pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if any(part.endswith(b"systemd-nspawn") for part in cmd) else None


def leader(pid: int) -> int | None:
    """The container's PID 1 as seen from the host: the child of nspawn that is pid 1 in its own pid namespace
    (nspawn forks short-lived helpers first; they are not it)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    for kid in kids:
        try:
            with open(f"/proc/{kid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) > 1 and ids[-1] == "1":
                            return int(kid)
        except OSError:
            continue
    return None


def ensure_key() -> str:
    key = os.path.join(STATE, "id_ed25519")
    if not os.path.exists(key):
        os.makedirs(STATE, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvmhost-ksm-tests", "-f", key],
                       check=True)
    return key


def default_rootfs() -> str:
    if os.environ.get("KSM_HOSTS_ROOTFS"):
        return os.environ["KSM_HOSTS_ROOTFS"]
    out = subprocess.run([os.path.join(HERE, "rootfs")], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


def start(name: str, rootfs: str, pubkey: str) -> int:
    d = cdir(name)
    if read_pid(name):
        fail(f"container {name} is already running (pid file {d}/pid); run 'nspawn-hosts down {name}' first.")
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("upper", "work", "merged"):
        os.makedirs(os.path.join(d, sub))
    # The ssh key goes into the overlay's upper layer: the cached rootfs stays key-free.
    ssh = os.path.join(d, "upper", "root", ".ssh")
    os.makedirs(ssh, mode=0o700)
    os.chmod(os.path.join(d, "upper", "root"), 0o700)
    shutil.copyfile(pubkey, os.path.join(ssh, "authorized_keys"))
    os.chmod(os.path.join(ssh, "authorized_keys"), 0o600)
    # Every container's systemd counts against root's fs.inotify.max_user_instances (128 by default), 7 instances
    # each; the two password-agent path units need none in a test host and masking them makes it 5: 25 containers.
    units = os.path.join(d, "upper", "etc", "systemd", "system")
    os.makedirs(units)
    for unit in MASKED_UNITS:
        os.symlink("/dev/null", os.path.join(units, unit))
    script = (
        'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$2/merged" && '
        'exec systemd-nspawn --boot --directory="$2/merged" --machine="$3" --register=no --keep-unit '
        '--private-network --console=passive --bind=/sys/kernel/mm/ksm:/mnt/host-ksm'
    )
    log = open(os.path.join(d, "log"), "wb")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", rootfs, d, name],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(d, "pid"), "w") as f:
        f.write(f"{proc.pid}\n")
    return proc.pid


def wait_booted(name: str, pid: int, deadline: float) -> None:
    lead = None
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            break
        # Until unshare and sh have exec'd into systemd-nspawn, the pid's children are not the container.
        lead = leader(pid) if read_pid(name) else None
        if lead:
            break
        time.sleep(0.1)
    if not lead:
        with open(os.path.join(cdir(name), "log"), errors="replace") as f:
            tail = f.read()[-2000:]
        fail(f"container {name} did not start (see {cdir(name)}/log):\n{tail}")
    state = "timeout"
    while time.monotonic() < deadline:
        # Right after the start the container's systemd has no bus socket yet ("offline"; systemctl 252 says "Failed
        # to connect to bus", 257 "Failed to connect to system scope bus"): retry until it answers.
        try:
            res = subprocess.run(["nsenter", "-t", str(lead), "-a", "systemctl", "is-system-running", "--wait"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
                                 timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
        state = res.stdout.strip()
        if "Failed to connect to" not in state and state not in ("offline", "unknown", ""):
            break
        time.sleep(0.2)
    if state != "running":
        failed = subprocess.run(["nsenter", "-t", str(lead), "-a", "systemctl", "--failed", "--no-legend"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False).stdout
        fail(f"container {name} booted into state '{state}' instead of 'running' within {BOOT_TIMEOUT:.0f} s; "
             f"failed units:\n{failed}")


def stop(name: str) -> None:
    pid = read_pid(name)
    if pid:
        lead = leader(pid)
        os.kill(pid, signal.SIGTERM)  # nspawn forwards an orderly poweroff (SIGRTMIN+3) to the container's systemd
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and read_pid(name):
            time.sleep(0.1)
        if read_pid(name):
            print(f"nspawn-hosts: {name} did not power off within {STOP_TIMEOUT:.0f} s; killing pid {pid}",
                  file=sys.stderr)
            for p in (lead, pid):
                if p:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.5)
    shutil.rmtree(cdir(name), ignore_errors=True)


def known() -> list[str]:
    if not os.path.isdir(STATE):
        return []
    return sorted(n for n in os.listdir(STATE) if os.path.isfile(os.path.join(STATE, n, "pid")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("names", nargs="+")
    up.add_argument("--rootfs")
    down = sub.add_parser("down")
    down.add_argument("names", nargs="*")
    sub.add_parser("list")
    px = sub.add_parser("proxy")
    px.add_argument("name")
    sub.add_parser("key")
    a = ap.parse_args()

    if a.cmd == "key":
        print(ensure_key())
    elif a.cmd == "list":
        for name in known():
            pid = read_pid(name)
            if pid:
                print(name, leader(pid) or "-")
    elif a.cmd == "proxy":
        pid = read_pid(a.name)
        lead = leader(pid) if pid else None
        if not lead:
            fail(f"container {a.name} is not running (no live pid in {cdir(a.name)}/pid).")
        os.execvp("nsenter", ["nsenter", "-t", str(lead), "-n", "socat", "STDIO", "TCP:127.0.0.1:22"])
    elif a.cmd == "down":
        for name in a.names or known():
            stop(name)
    elif a.cmd == "up":
        for cmd in ("systemd-nspawn", "socat", "nsenter", "unshare", "ssh-keygen"):
            if not shutil.which(cmd):
                fail(f"{cmd} is missing on this host; run tests/hosts/setup-host (apt-get install systemd-container "
                     "socat openssh-client debootstrap apt-utils).")
        if not os.path.isfile("/sys/kernel/mm/ksm/run"):
            fail("/sys/kernel/mm/ksm/run does not exist: this kernel has no KSM for the containers to share.")
        rootfs = os.path.abspath(a.rootfs) if a.rootfs else default_rootfs()
        key = ensure_key()
        t0 = time.monotonic()
        started = []
        try:
            for name in a.names:
                started.append(name)
                pid = start(name, rootfs, key + ".pub")
                wait_booted(name, pid, time.monotonic() + BOOT_TIMEOUT)
        except BaseException:
            for name in started:
                stop(name)
            raise
        print(f"nspawn-hosts: {' '.join(a.names)} running after {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""VM lab: Debian guests under qemu, cloned from a booted snapshot in seconds.

    tests/vmlab/vmlab image [--release R]           build (or reuse) the guest image of a release
    tests/vmlab/vmlab template [--release R] [FLAVOR...]   boot the image once per flavor and save a snapshot (cached)
    tests/vmlab/vmlab clone --flavor F [--release R] NAME...   start guests from the snapshot; prints their
                                                    connection data (JSON)
    tests/vmlab/vmlab stop NAME... | stop-all       stop guests started by this lab (by pid, never anything else)
    tests/vmlab/vmlab ssh NAME [COMMAND...]         ssh into a running guest
    tests/vmlab/vmlab status | accel                list running guests | print the accelerator the lab uses

Releases: `debian12` (bookworm, kernel 6.1; the default) and `debian13` (trixie, kernel 6.12), each its own image.
Flavors: `uni` (1 vCPU, 768 MiB, one NUMA node) and `numa` (2 vCPUs, 2 x 512 MiB, two NUMA nodes).

Caching: everything lives in <repo>/.cache/vmlab (gitignored). An image is keyed by its release and a hash of
build-image and the rootfs builder it layers on, a template by the image key, this file, the accelerator and the
flavor: editing any of them rebuilds what depends on it on the next run, and stale entries are removed. Each image
and template has its own lock: the two releases build in parallel.

Accelerator: KVM when /dev/kvm exists *and* a probe boot of the guest kernel (to its "no root file system" panic)
finishes with it within seconds; otherwise TCG (software emulation). Machines whose /dev/kvm cannot boot a stock
kernel (nested PVM) fail the probe in well under a second. VMLAB_ACCEL=kvm|tcg overrides the probe.

Guests have no network except ssh forwarded on 127.0.0.1 (user-mode networking with restrict=on). Running guests are
recorded in the state directory (VMLAB_STATE_DIR, default .cache/vmlab/guests); `stop` signals a pid only after
checking that its command line names that guest's own pidfile, so it never touches a process it did not start.
"""

import argparse
import concurrent.futures
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("VMLAB_CACHE_DIR", REPO / ".cache" / "vmlab"))
STATE = Path(os.environ.get("VMLAB_STATE_DIR", CACHE / "guests"))
BUILD_IMAGE = HERE / "build-image"
ROOTFS_BUILDER = REPO / "tests" / "hosts" / "build-rootfs"
SNAPSHOT = "ready"
RELEASES = {"debian12": "bookworm", "debian13": "trixie"}
DEFAULT_RELEASE = "debian12"

FLAVORS = {
    "uni": ["-smp", "1", "-m", "768"],
    "numa": ["-smp", "2", "-m", "1024",
             "-object", "memory-backend-ram,id=m0,size=512M",
             "-object", "memory-backend-ram,id=m1,size=512M",
             "-numa", "node,nodeid=0,cpus=0,memdev=m0",
             "-numa", "node,nodeid=1,cpus=1,memdev=m1"],
}
ACCELS = {
    "kvm": ["-accel", "kvm", "-cpu", "host"],
    "tcg": ["-accel", "tcg,thread=multi", "-cpu", "max"],
}
BOOT_TIMEOUT = int(os.environ.get("VMLAB_BOOT_TIMEOUT", "600"))     # cold boot under TCG on a busy host
CLONE_TIMEOUT = int(os.environ.get("VMLAB_CLONE_TIMEOUT", "120"))
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "IdentitiesOnly=yes"]


class LabError(Exception):
    """An expected failure of the lab; main() prints it as one line."""


def log(msg: str) -> None:
    print(f"[vmlab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha(*parts: t.Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b"<missing>"


class CacheLock:
    """One builder at a time per cache entry (flock on .lock-NAME; released when the process ends)."""

    fd: int

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> "CacheLock":
        CACHE.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(CACHE / f".lock-{self.name}", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: t.Any) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------------------- image

def check_release(release: str) -> str:
    if release not in RELEASES:
        raise LabError(f"unknown release {release}; releases: {', '.join(RELEASES)}")
    return release


def image_key(release: str) -> str:
    src = os.environ.get("VMLAB_ROOTFS_SRC", "")
    return sha(file_bytes(BUILD_IMAGE), file_bytes(ROOTFS_BUILDER), src, RELEASES[release])


def image_dir(release: str) -> Path:
    return CACHE / f"image-{release}-{image_key(release)}"


def prune(pattern: str, keep: Path) -> None:
    for old in CACHE.glob(pattern):
        if old != keep:
            log(f"removing stale cache entry {old.name}")
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()


def ensure_image(release: str = DEFAULT_RELEASE) -> Path:
    out = image_dir(release)
    if (out / "image.json").exists():
        return out
    with CacheLock(f"image-{release}"):
        if (out / "image.json").exists():
            return out
        log(f"building the {release} guest image {out.name} (cache miss)")
        start = time.monotonic()
        tmp = CACHE / f"{out.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run([str(BUILD_IMAGE), "--suite", RELEASES[release], str(tmp)], check=False)
        if proc.returncode:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LabError(f"tests/vmlab/build-image --suite {RELEASES[release]} failed (exit {proc.returncode}); "
                           "its log is above.")
        tmp.rename(out)
        prune(f"image-{release}-*", out)
        log(f"{release} image built in {time.monotonic() - start:.0f} s")
        record_timing(f"image_{release}_build_s", time.monotonic() - start)
    return out


def record_timing(key: str, seconds: float) -> None:
    path = CACHE / "timings.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = round(seconds, 1)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------- accel

def probe_accel(img: Path) -> str:
    forced = os.environ.get("VMLAB_ACCEL")
    if forced:
        if forced not in ACCELS:
            raise LabError(f"VMLAB_ACCEL={forced} is not one of {', '.join(ACCELS)}.")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    kernel = img / "vmlinuz"
    cache = CACHE / "accel.json"
    ident = sha(file_bytes(kernel), os.uname().release, qemu_version())
    try:  # one probe per guest kernel (each release has its own), qemu and host kernel
        known = json.loads(cache.read_text()).get("probes", {})
    except (OSError, ValueError, AttributeError):
        known = {}
    if ident in known:
        return str(known[ident])
    # Boot the guest kernel without a root file system: a working KVM reaches the panic in ~1 s and qemu exits
    # (-no-reboot); a /dev/kvm that cannot run stock kernels aborts at once or hangs (killed after the timeout).
    logfile = CACHE / f"accel-probe-{ident}.log"
    logfile.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen(["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
                             "-m", "256", "-no-reboot", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
                             "-serial", f"file:{logfile}"] + ACCELS["kvm"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    text = logfile.read_text(errors="replace") if logfile.exists() else ""
    accel = "kvm" if "Kernel panic" in text else "tcg"
    reason = (err or b"").decode(errors="replace").strip().splitlines()[:1] or ["no panic within 20 s"]
    outcome = "booted" if accel == "kvm" else "failed"
    log(f"KVM probe: {outcome} after {time.monotonic() - start:.1f} s ({reason[0]}) -> using {accel}")
    known[ident] = accel
    cache.write_text(json.dumps({"probes": known}))
    return accel


def qemu_version() -> str:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "?"


# ---------------------------------------------------------------------------------------------------------- qemu

class Guest:
    def __init__(self, name: str, flavor: str, gdir: str | Path) -> None:
        self.name, self.flavor, self.dir = name, flavor, Path(gdir)
        self.release = DEFAULT_RELEASE
        self.disk = self.dir / "disk.qcow2"
        self.pidfile = self.dir / "qemu.pid"
        self.monitor = self.dir / "mon"
        self.serial = self.dir / "serial.log"
        self.port: int | None = None
        self.key: Path | None = None

    # -- process

    def pid(self) -> int | None:
        """The qemu pid of this guest, or None. Only a live process whose command line names our pidfile counts."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if str(self.pidfile).encode() not in cmdline:
            return None
        return pid

    def start(self, img: Path, accel: str, loadvm: bool = False, retries: int = 3) -> None:
        self.port = port = free_port()
        self.key = img / "id_ed25519"
        if len(str(self.monitor)) > 100:
            raise LabError(f"the monitor socket path {self.monitor} is too long for a unix socket; set "
                           "VMLAB_STATE_DIR to a shorter directory.")
        for f in (self.pidfile, self.monitor, self.serial):
            f.unlink(missing_ok=True)
        cmd = ["qemu-system-x86_64", "-name", f"vmlab-{self.name}", "-nodefaults", "-no-user-config",
               "-machine", "pc"] + ACCELS[accel] + FLAVORS[self.flavor] + [
            "-kernel", str(img / "vmlinuz"), "-initrd", str(img / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0",
            "-drive", f"file={self.disk},if=virtio,format=qcow2,discard=unmap",
            "-nic", f"user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-rng-pci",
            "-rtc", "base=utc",
            "-display", "none", "-serial", f"file:{self.serial}",
            "-monitor", f"unix:{self.monitor},server,nowait",
            "-pidfile", str(self.pidfile), "-daemonize"]
        if loadvm:
            cmd += ["-loadvm", SNAPSHOT]
        (self.dir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode and "forwarding" in proc.stderr and retries > 0:
            # The free port was taken between free_port() and qemu's bind: try another one.
            return self.start(img, accel, loadvm, retries - 1)
        if proc.returncode:
            raise LabError(f"qemu did not start guest {self.name}: {proc.stderr.strip()}")
        self.save()

    def save(self) -> dict[str, t.Any]:
        info = {"name": self.name, "flavor": self.flavor, "release": self.release, "address": "127.0.0.1",
                "port": self.port,
                "user": "root", "identity_file": str(self.key), "pid": self.pid(), "dir": str(self.dir)}
        (self.dir / "guest.json").write_text(json.dumps(info, indent=1) + "\n")
        return info

    @classmethod
    def load(cls, gdir: str | Path) -> "Guest":
        info = json.loads((Path(gdir) / "guest.json").read_text())
        guest = cls(info["name"], info["flavor"], gdir)
        guest.port, guest.key = info["port"], Path(info["identity_file"])
        guest.release = info.get("release", DEFAULT_RELEASE)
        return guest

    def hmp(self, command: str, timeout: float = 120) -> str:
        """Run one human-monitor command, return its output."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.monitor))
            buf = b""
            while b"(qemu) " not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise LabError(f"the monitor of {self.name} closed")
                buf += chunk
            s.sendall(command.encode() + b"\n")
            buf = b""
            while b"(qemu) " not in buf:
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    raise LabError(f"monitor command {command!r} on {self.name} took over {timeout:.0f} s") from None
                if not chunk:          # quit closes the connection
                    break
                buf += chunk
        text = buf.decode(errors="replace").replace("\r", "")
        lines = [line for line in text.split("\n") if line and "(qemu)" not in line and "\x1b" not in line]
        return "\n".join(lines)

    def stop(self, timeout: float = 15) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            self.hmp("quit", timeout=5)
        except (OSError, LabError):
            pass
        deadline = time.monotonic() + timeout
        sig: signal.Signals | None = None
        while self.pid() == pid:
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    raise LabError(f"guest {self.name} (pid {pid}) does not stop")
                sig = signal.SIGKILL if sig == signal.SIGTERM else signal.SIGTERM
                if self.pid() == pid:      # checked again right before signalling
                    os.kill(pid, sig)
                deadline = time.monotonic() + 5
            time.sleep(0.2)
        return True

    # -- ssh

    def ssh_cmd(self, *command: str) -> list[str]:
        return (["ssh"] + SSH_OPTIONS + ["-i", str(self.key), "-p", str(self.port), "root@127.0.0.1", "--"]
                + list(command))

    def ssh(self, command: str, timeout: float = 60, check: bool = True) -> "subprocess.CompletedProcess[str]":
        proc = subprocess.run(self.ssh_cmd(command), check=False, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode:
            output = (proc.stderr or proc.stdout).strip()[-500:]
            raise LabError(f"ssh {self.name} {command!r} failed (exit {proc.returncode}): {output}")
        return proc

    def wait_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.pid() is None:
                raise LabError(f"guest {self.name} died while booting; last serial lines:\n{self.tail()}")
            try:
                if self.ssh("true", timeout=20, check=False).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"guest {self.name}: no ssh on 127.0.0.1:{self.port} after {timeout:.0f} s; last serial "
                               f"lines:\n{self.tail()}")
            time.sleep(1)

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.serial.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no serial log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------------- template

def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def template_path(flavor: str, accel: str, release: str) -> Path:
    # A KVM snapshot holds the host CPU's model (-cpu host): it only restores on the same kind of CPU.
    key = sha(image_key(release), file_bytes(Path(__file__)), accel, flavor, cpu_model() if accel == "kvm" else "")
    return CACHE / f"template-{release}-{flavor}-{key}.qcow2"


# Warm the guest's page cache with what Ansible modules import, so every clone starts with it in RAM.
WARMUP = ("python3 -c 'import json, os, sys, subprocess, shlex, tempfile, zipfile, base64, locale, platform, "
          "selectors, select, pwd, grp, glob, re, syslog, datetime, hashlib, ast, traceback, typing, errno, stat' "
          "&& systemctl is-active ksm.service ksmtuned.service >/dev/null && sync")


def build_template(flavor: str, img: Path, accel: str, release: str) -> Path:
    out = template_path(flavor, accel, release)
    if out.exists():
        return out
    log(f"building the {release} {flavor} template (cold boot, {accel})")
    start = time.monotonic()
    # The template guest is recorded in this run's state directory like any guest: stop-all stops it too.
    gdir = STATE / f"template-{release}-{flavor}"
    shutil.rmtree(gdir, ignore_errors=True)
    gdir.mkdir(parents=True)
    guest = Guest(gdir.name, flavor, gdir)
    guest.release = release
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(img / "disk.raw"),
                    str(guest.disk)], check=True)
    try:
        guest.start(img, accel)
        guest.wait_ssh(BOOT_TIMEOUT)
        booted = time.monotonic() - start
        state = guest.ssh("systemctl is-system-running --wait", timeout=300, check=False).stdout.strip()
        if state != "running":
            failed = guest.ssh("systemctl --failed --no-legend", check=False).stdout.strip()
            raise LabError(f"template {flavor} booted {state}, not running; failed units: {failed}")
        guest.ssh(WARMUP, timeout=300)
        settled = time.monotonic() - start
        result = guest.hmp(f"savevm {SNAPSHOT}", timeout=300)
        if "rror" in result:
            raise LabError(f"savevm on {flavor} failed: {result}")
        guest.stop()
    except BaseException:
        guest.stop()
        raise
    tmp = out.with_suffix(".tmp")
    shutil.move(str(guest.disk), str(tmp))
    tmp.rename(out)
    shutil.rmtree(gdir, ignore_errors=True)
    total = time.monotonic() - start
    log(f"{release} {flavor} template ready: ssh after {booted:.0f} s, settled {settled:.0f} s, snapshot saved, "
        f"{total:.0f} s in all")
    record_timing(f"template_{release}_{flavor}_boot_to_ssh_s", booted)
    record_timing(f"template_{release}_{flavor}_total_s", total)
    return out


def ensure_templates(flavors: list[str], release: str = DEFAULT_RELEASE) -> tuple[Path, str, dict[str, Path]]:
    img = ensure_image(release)
    accel = probe_accel(img)
    wanted = {f: template_path(f, accel, release) for f in flavors}
    if all(p.exists() for p in wanted.values()):
        return img, accel, wanted
    with CacheLock(f"templates-{release}"):
        todo = [f for f, p in wanted.items() if not p.exists()]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            futures = [pool.submit(build_template, f, img, accel, release) for f in todo]
            for fut in futures:
                fut.result()
        keep = set(wanted.values())
        for flavor in wanted:
            for old in CACHE.glob(f"template-{release}-{flavor}-*.qcow2"):
                if old not in keep:
                    log(f"removing stale template {old.name}")
                    old.unlink()
    return img, accel, wanted


# ---------------------------------------------------------------------------------------------------------- clones

def clone_one(name: str, flavor: str, release: str, img: Path, accel: str, template: Path) -> dict[str, t.Any]:
    start = time.monotonic()
    gdir = STATE / name
    old = Guest(name, flavor, gdir)
    running = old.pid()
    if running is not None:
        raise LabError(f"guest {name} is already running (pid {running}); stop it first.")
    shutil.rmtree(gdir, ignore_errors=True)
    gdir.mkdir(parents=True)
    guest = Guest(name, flavor, gdir)
    guest.release = release
    subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(template), str(guest.disk)], check=True)
    try:
        guest.start(img, accel, loadvm=True)
        guest.wait_ssh(CLONE_TIMEOUT)
        up = time.monotonic() - start
        # A restored guest still has the template's clock and hostname.
        guest.ssh(f"date -s @{int(time.time())} >/dev/null && echo {name} >/etc/hostname && hostname {name} && "
                  f'sed -i "s/^127.0.1.1.*/127.0.1.1\\t{name}/" /etc/hosts')
    except BaseException:
        guest.stop()
        raise
    info = guest.save()
    info["seconds"] = round(time.monotonic() - start, 1)
    log(f"guest {name} ({release} {flavor}) up: ssh after {up:.1f} s, ready after {info['seconds']:.1f} s, "
        f"port {guest.port}, pid {info['pid']}")
    return info


def cmd_clone(args: argparse.Namespace) -> None:
    release = check_release(args.release)
    img, accel, templates = ensure_templates([args.flavor], release)
    STATE.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(args.names)) as pool:
        futures = [pool.submit(clone_one, n, args.flavor, release, img, accel, templates[args.flavor])
                   for n in args.names]
        infos: list[dict[str, t.Any]] = []
        errors: list[str] = []
        for fut in futures:
            try:
                infos.append(fut.result())
            except Exception as exc:         # stop the others too: no half-started set is left behind
                errors.append(str(exc))
    if errors:
        for info in infos:
            Guest.load(info["dir"]).stop()
        raise LabError("; ".join(errors))
    print(json.dumps(infos, indent=1))


def running_guests() -> list[Guest]:
    if not STATE.is_dir():
        return []
    guests = []
    for gjson in sorted(STATE.glob("*/guest.json")):   # written by Guest.start() right after qemu started
        try:
            guests.append(Guest.load(gjson.parent))
        except (OSError, ValueError, KeyError):
            continue
    return guests


def cmd_stop(args: argparse.Namespace) -> None:
    for name in args.names:
        gdir = STATE / name
        if not (gdir / "guest.json").exists():
            log(f"no guest {name} in {STATE}")
            continue
        guest = Guest.load(gdir)
        if guest.stop():
            log(f"stopped {name}")
        if not args.keep:
            shutil.rmtree(gdir, ignore_errors=True)


def cmd_stop_all(args: argparse.Namespace) -> None:
    # Every guest of this state directory (clones and template builds), and nothing else.
    for guest in running_guests():
        gdir = guest.dir
        if guest.stop():
            log(f"stopped {gdir.name}")
        if not args.keep:
            shutil.rmtree(gdir, ignore_errors=True)


def cmd_status(args: argparse.Namespace) -> None:
    for guest in running_guests():
        pid = guest.pid()
        state = f"pid {pid}" if pid else "not running"
        print(f"{guest.name:<20} {guest.release:<8} {guest.flavor:<5} port {guest.port!s:<6} {state}")


def cmd_ssh(args: argparse.Namespace) -> None:
    guest = Guest.load(STATE / args.name)
    os.execvp("ssh", guest.ssh_cmd(*args.command) if args.command else guest.ssh_cmd()[:-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("image")
    p.add_argument("--release", default=DEFAULT_RELEASE, choices=list(RELEASES))
    p = sub.add_parser("template")
    p.add_argument("--release", default=DEFAULT_RELEASE, choices=list(RELEASES))
    p.add_argument("flavors", nargs="*", help=f"{' '.join(FLAVORS)} (default: all)")
    p = sub.add_parser("clone")
    p.add_argument("--flavor", default="uni", choices=list(FLAVORS))
    p.add_argument("--release", default=DEFAULT_RELEASE, choices=list(RELEASES))
    p.add_argument("names", nargs="+")
    p = sub.add_parser("stop")
    p.add_argument("--keep", action="store_true", help="keep the guest directory (disk, serial log)")
    p.add_argument("names", nargs="+")
    p = sub.add_parser("stop-all")
    p.add_argument("--keep", action="store_true")
    sub.add_parser("status")
    sub.add_parser("accel")
    p = sub.add_parser("ssh")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    try:
        if args.cmd == "image":
            print(ensure_image(args.release))
        elif args.cmd == "template":
            unknown = set(args.flavors) - set(FLAVORS)
            if unknown:
                raise LabError(f"unknown flavor {', '.join(sorted(unknown))}; flavors: {', '.join(FLAVORS)}")
            _key, accel, paths = ensure_templates(args.flavors or list(FLAVORS), args.release)
            for flavor, path in paths.items():
                print(f"{args.release} {flavor} {accel} {path}")
        elif args.cmd == "accel":
            print(probe_accel(ensure_image()))
        else:
            commands: dict[str, t.Callable[[argparse.Namespace], None]] = {
                "clone": cmd_clone, "stop": cmd_stop, "stop-all": cmd_stop_all, "status": cmd_status, "ssh": cmd_ssh}
            commands[args.cmd](args)
    except LabError as exc:
        log(f"ERROR: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""VM lab: Debian 12 guests under qemu, cloned from a booted snapshot in seconds.

    tests/vmlab/vmlab image                         build (or reuse) the guest image
    tests/vmlab/vmlab template [FLAVOR...]          boot the image once per flavor and save a snapshot (cached)
    tests/vmlab/vmlab clone --flavor F NAME...      start guests from the snapshot; prints their connection data (JSON)
    tests/vmlab/vmlab stop NAME... | stop-all       stop guests started by this lab (by pid, never anything else)
    tests/vmlab/vmlab ssh NAME [COMMAND...]         ssh into a running guest
    tests/vmlab/vmlab status | accel                list running guests | print the accelerator the lab uses

Flavors: `uni` (1 vCPU, 768 MiB, one NUMA node) and `numa` (2 vCPUs, 2 x 512 MiB, two NUMA nodes).

Caching: everything lives in <repo>/.cache/vmlab (gitignored). The image is keyed by a hash of build-image and the
rootfs builder it layers on, a template by the image key, this file, the accelerator and the flavor: editing any of
them rebuilds what depends on it on the next run, and stale entries are removed.

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
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get('VMLAB_CACHE_DIR', REPO / '.cache' / 'vmlab'))
STATE = Path(os.environ.get('VMLAB_STATE_DIR', CACHE / 'guests'))
BUILD_IMAGE = HERE / 'build-image'
ROOTFS_BUILDER = REPO / 'tests' / 'hosts' / 'build-rootfs'
SNAPSHOT = 'ready'

FLAVORS = {
    'uni': ['-smp', '1', '-m', '768'],
    'numa': ['-smp', '2', '-m', '1024',
             '-object', 'memory-backend-ram,id=m0,size=512M',
             '-object', 'memory-backend-ram,id=m1,size=512M',
             '-numa', 'node,nodeid=0,cpus=0,memdev=m0',
             '-numa', 'node,nodeid=1,cpus=1,memdev=m1'],
}
ACCELS = {
    'kvm': ['-accel', 'kvm', '-cpu', 'host'],
    'tcg': ['-accel', 'tcg,thread=multi', '-cpu', 'max'],
}
BOOT_TIMEOUT = int(os.environ.get('VMLAB_BOOT_TIMEOUT', '600'))     # cold boot under TCG on a busy host
CLONE_TIMEOUT = int(os.environ.get('VMLAB_CLONE_TIMEOUT', '120'))
SSH_OPTIONS = ['-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
               '-o', 'LogLevel=ERROR', '-o', 'ConnectTimeout=10', '-o', 'IdentitiesOnly=yes']


class LabError(Exception):
    pass


def log(msg):
    print('[vmlab %s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def sha(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b'\0')
    return h.hexdigest()[:16]


def file_bytes(path):
    return path.read_bytes() if path.exists() else b'<missing>'


class CacheLock:
    """One builder at a time per cache directory (flock; released when the process ends)."""

    def __enter__(self):
        CACHE.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(CACHE / '.lock', os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------------------- image

def image_key():
    src = os.environ.get('VMLAB_ROOTFS_SRC', '')
    return sha(file_bytes(BUILD_IMAGE), file_bytes(ROOTFS_BUILDER), src)


def image_dir():
    return CACHE / ('image-' + image_key())


def prune(pattern, keep):
    for old in CACHE.glob(pattern):
        if old != keep:
            log('removing stale cache entry %s' % old.name)
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def ensure_image():
    out = image_dir()
    if (out / 'image.json').exists():
        return out
    with CacheLock():
        if (out / 'image.json').exists():
            return out
        log('building the guest image %s (cache miss)' % out.name)
        start = time.monotonic()
        tmp = CACHE / (out.name + '.tmp')
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run([str(BUILD_IMAGE), str(tmp)], check=False)
        if proc.returncode:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LabError('tests/vmlab/build-image failed (exit %d); its log is above.' % proc.returncode)
        tmp.rename(out)
        prune('image-*', out)
        log('image built in %.0f s' % (time.monotonic() - start))
        record_timing('image_build_s', time.monotonic() - start)
    return out


def record_timing(key, seconds):
    path = CACHE / 'timings.json'
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = round(seconds, 1)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + '\n')


# ---------------------------------------------------------------------------------------------------------- accel

def probe_accel(img):
    forced = os.environ.get('VMLAB_ACCEL')
    if forced:
        if forced not in ACCELS:
            raise LabError('VMLAB_ACCEL=%s is not one of %s.' % (forced, ', '.join(ACCELS)))
        return forced
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return 'tcg'
    kernel = img / 'vmlinuz'
    cache = CACHE / 'accel.json'
    ident = sha(file_bytes(kernel), os.uname().release, qemu_version())
    try:
        data = json.loads(cache.read_text())
        if data.get('ident') == ident:
            return data['accel']
    except (OSError, ValueError, KeyError):
        pass
    # Boot the guest kernel without a root file system: a working KVM reaches the panic in ~1 s and qemu exits
    # (-no-reboot); a /dev/kvm that cannot run stock kernels aborts at once or hangs (killed after the timeout).
    logfile = CACHE / 'accel-probe.log'
    logfile.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen(['qemu-system-x86_64', '-nodefaults', '-no-user-config', '-display', 'none',
                             '-m', '256', '-no-reboot', '-kernel', str(kernel), '-append', 'console=ttyS0 panic=-1',
                             '-serial', 'file:%s' % logfile] + ACCELS['kvm'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    text = logfile.read_text(errors='replace') if logfile.exists() else ''
    accel = 'kvm' if 'Kernel panic' in text else 'tcg'
    reason = (err or b'').decode(errors='replace').strip().splitlines()[:1] or ['no panic within 20 s']
    log('KVM probe: %s after %.1f s (%s) -> using %s' % ('booted' if accel == 'kvm' else 'failed',
                                                         time.monotonic() - start, reason[0], accel))
    cache.write_text(json.dumps({'ident': ident, 'accel': accel}))
    return accel


def qemu_version():
    out = subprocess.run(['qemu-system-x86_64', '--version'], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else '?'


# ---------------------------------------------------------------------------------------------------------- qemu

class Guest:
    def __init__(self, name, flavor, gdir):
        self.name, self.flavor, self.dir = name, flavor, Path(gdir)
        self.disk = self.dir / 'disk.qcow2'
        self.pidfile = self.dir / 'qemu.pid'
        self.monitor = self.dir / 'mon'
        self.serial = self.dir / 'serial.log'
        self.port = None
        self.key = None

    # -- process

    def pid(self):
        """The qemu pid of this guest, or None. Only a live process whose command line names our pidfile counts."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path('/proc/%d/cmdline' % pid).read_bytes().split(b'\0')
        except (OSError, ValueError):
            return None
        if str(self.pidfile).encode() not in cmdline:
            return None
        return pid

    def start(self, img, accel, loadvm=False, retries=3):
        self.port = free_port()
        self.key = img / 'id_ed25519'
        if len(str(self.monitor)) > 100:
            raise LabError('the monitor socket path %s is too long for a unix socket; set VMLAB_STATE_DIR to a '
                           'shorter directory.' % self.monitor)
        for f in (self.pidfile, self.monitor, self.serial):
            f.unlink(missing_ok=True)
        cmd = ['qemu-system-x86_64', '-name', 'vmlab-%s' % self.name, '-nodefaults', '-no-user-config',
               '-machine', 'pc'] + ACCELS[accel] + FLAVORS[self.flavor] + [
            '-kernel', str(img / 'vmlinuz'), '-initrd', str(img / 'initrd.img'),
            '-append', 'root=/dev/vda rw console=ttyS0 net.ifnames=0',
            '-drive', 'file=%s,if=virtio,format=qcow2,discard=unmap' % self.disk,
            '-nic', 'user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22' % self.port,
            '-device', 'virtio-rng-pci',
            '-rtc', 'base=utc',
            '-display', 'none', '-serial', 'file:%s' % self.serial,
            '-monitor', 'unix:%s,server,nowait' % self.monitor,
            '-pidfile', str(self.pidfile), '-daemonize']
        if loadvm:
            cmd += ['-loadvm', SNAPSHOT]
        (self.dir / 'qemu.cmd').write_text(' '.join(cmd) + '\n')
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode and 'forwarding' in proc.stderr and retries > 0:
            # The free port was taken between free_port() and qemu's bind: try another one.
            return self.start(img, accel, loadvm, retries - 1)
        if proc.returncode:
            raise LabError('qemu did not start guest %s: %s' % (self.name, proc.stderr.strip()))
        self.save()

    def save(self):
        info = {'name': self.name, 'flavor': self.flavor, 'address': '127.0.0.1', 'port': self.port,
                'user': 'root', 'identity_file': str(self.key), 'pid': self.pid(), 'dir': str(self.dir)}
        (self.dir / 'guest.json').write_text(json.dumps(info, indent=1) + '\n')
        return info

    @classmethod
    def load(cls, gdir):
        info = json.loads((Path(gdir) / 'guest.json').read_text())
        guest = cls(info['name'], info['flavor'], gdir)
        guest.port, guest.key = info['port'], Path(info['identity_file'])
        return guest

    def hmp(self, command, timeout=120):
        """Run one human-monitor command, return its output."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.monitor))
            buf = b''
            while b'(qemu) ' not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise LabError('the monitor of %s closed' % self.name)
                buf += chunk
            s.sendall(command.encode() + b'\n')
            buf = b''
            while b'(qemu) ' not in buf:
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    raise LabError('monitor command %r on %s took over %d s' % (command, self.name, timeout))
                if not chunk:          # quit closes the connection
                    break
                buf += chunk
        text = buf.decode(errors='replace').replace('\r', '')
        lines = [l for l in text.split('\n') if l and '(qemu)' not in l and '\x1b' not in l]
        return '\n'.join(lines)

    def stop(self, timeout=15):
        pid = self.pid()
        if pid is None:
            return False
        try:
            self.hmp('quit', timeout=5)
        except (OSError, LabError):
            pass
        deadline = time.monotonic() + timeout
        sig = None
        while self.pid() == pid:
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    raise LabError('guest %s (pid %d) does not stop' % (self.name, pid))
                sig = signal.SIGKILL if sig == signal.SIGTERM else signal.SIGTERM
                if self.pid() == pid:      # checked again right before signalling
                    os.kill(pid, sig)
                deadline = time.monotonic() + 5
            time.sleep(0.2)
        return True

    # -- ssh

    def ssh_cmd(self, *command):
        return (['ssh'] + SSH_OPTIONS + ['-i', str(self.key), '-p', str(self.port), 'root@127.0.0.1', '--']
                + list(command))

    def ssh(self, command, timeout=60, check=True):
        proc = subprocess.run(self.ssh_cmd(command), check=False, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode:
            raise LabError('ssh %s %r failed (exit %d): %s' % (self.name, command, proc.returncode,
                                                               (proc.stderr or proc.stdout).strip()[-500:]))
        return proc

    def wait_ssh(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.pid() is None:
                raise LabError('guest %s died while booting; last serial lines:\n%s' % (self.name, self.tail()))
            try:
                if self.ssh('true', timeout=20, check=False).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise LabError('guest %s: no ssh on 127.0.0.1:%d after %d s; last serial lines:\n%s'
                               % (self.name, self.port, timeout, self.tail()))
            time.sleep(1)

    def tail(self, n=15):
        try:
            return '\n'.join(self.serial.read_text(errors='replace').splitlines()[-n:])
        except OSError:
            return '(no serial log)'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------- template

def cpu_model():
    for line in Path('/proc/cpuinfo').read_text(errors='replace').splitlines():
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return '?'


def template_path(flavor, accel):
    # A KVM snapshot holds the host CPU's model (-cpu host): it only restores on the same kind of CPU.
    key = sha(image_key(), file_bytes(Path(__file__)), accel, flavor, cpu_model() if accel == 'kvm' else '')
    return CACHE / ('template-%s-%s.qcow2' % (flavor, key))


# Warm the guest's page cache with what Ansible modules import, so every clone starts with it in RAM.
WARMUP = ("python3 -c 'import json, os, sys, subprocess, shlex, tempfile, zipfile, base64, locale, platform, "
          "selectors, select, pwd, grp, glob, re, syslog, datetime, hashlib, ast, traceback, typing, errno, stat' "
          "&& systemctl is-active ksm.service ksmtuned.service >/dev/null && sync")


def build_template(flavor, img, accel):
    out = template_path(flavor, accel)
    if out.exists():
        return out
    log('building the %s template (cold boot, %s)' % (flavor, accel))
    start = time.monotonic()
    # The template guest is recorded in this run's state directory like any guest: stop-all stops it too.
    gdir = STATE / ('template-' + flavor)
    shutil.rmtree(gdir, ignore_errors=True)
    gdir.mkdir(parents=True)
    guest = Guest(gdir.name, flavor, gdir)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', str(img / 'disk.raw'),
                    str(guest.disk)], check=True)
    try:
        guest.start(img, accel)
        guest.wait_ssh(BOOT_TIMEOUT)
        booted = time.monotonic() - start
        state = guest.ssh('systemctl is-system-running --wait', timeout=300, check=False).stdout.strip()
        if state != 'running':
            failed = guest.ssh('systemctl --failed --no-legend', check=False).stdout.strip()
            raise LabError('template %s booted %s, not running; failed units: %s' % (flavor, state, failed))
        guest.ssh(WARMUP, timeout=300)
        settled = time.monotonic() - start
        result = guest.hmp('savevm %s' % SNAPSHOT, timeout=300)
        if 'rror' in result:
            raise LabError('savevm on %s failed: %s' % (flavor, result))
        guest.stop()
    except BaseException:
        guest.stop()
        raise
    tmp = out.with_suffix('.tmp')
    shutil.move(str(guest.disk), str(tmp))
    tmp.rename(out)
    shutil.rmtree(gdir, ignore_errors=True)
    total = time.monotonic() - start
    log('%s template ready: ssh after %.0f s, settled %.0f s, snapshot saved, %.0f s in all'
        % (flavor, booted, settled, total))
    record_timing('template_%s_boot_to_ssh_s' % flavor, booted)
    record_timing('template_%s_total_s' % flavor, total)
    return out


def ensure_templates(flavors):
    img = ensure_image()
    accel = probe_accel(img)
    wanted = {f: template_path(f, accel) for f in flavors}
    if all(p.exists() for p in wanted.values()):
        return img, accel, wanted
    with CacheLock():
        todo = [f for f, p in wanted.items() if not p.exists()]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(todo)) as pool:
            futures = [pool.submit(build_template, f, img, accel) for f in todo]
            for fut in futures:
                fut.result()
        keep = set(wanted.values())
        for old in CACHE.glob('template-*.qcow2'):
            if old not in keep and old.name.split('-')[1] in wanted:
                log('removing stale template %s' % old.name)
                old.unlink()
    return img, accel, wanted


# ---------------------------------------------------------------------------------------------------------- clones

def clone_one(name, flavor, img, accel, template):
    start = time.monotonic()
    gdir = STATE / name
    old = Guest(name, flavor, gdir)
    if old.pid() is not None:
        raise LabError('guest %s is already running (pid %d); stop it first.' % (name, old.pid()))
    shutil.rmtree(gdir, ignore_errors=True)
    gdir.mkdir(parents=True)
    guest = Guest(name, flavor, gdir)
    subprocess.run(['cp', '--reflink=auto', '--sparse=always', str(template), str(guest.disk)], check=True)
    try:
        guest.start(img, accel, loadvm=True)
        guest.wait_ssh(CLONE_TIMEOUT)
        up = time.monotonic() - start
        # A restored guest still has the template's clock and hostname.
        guest.ssh('date -s @%d >/dev/null && echo %s >/etc/hostname && hostname %s && '
                  'sed -i "s/^127.0.1.1.*/127.0.1.1\\t%s/" /etc/hosts'
                  % (time.time(), name, name, name))
    except BaseException:
        guest.stop()
        raise
    info = guest.save()
    info['seconds'] = round(time.monotonic() - start, 1)
    log('guest %s (%s) up: ssh after %.1f s, ready after %.1f s, port %d, pid %s'
        % (name, flavor, up, info['seconds'], guest.port, info['pid']))
    return info


def cmd_clone(args):
    img, accel, templates = ensure_templates([args.flavor])
    STATE.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(args.names)) as pool:
        futures = {n: pool.submit(clone_one, n, args.flavor, img, accel, templates[args.flavor])
                   for n in args.names}
        infos, errors = [], []
        for name, fut in futures.items():
            try:
                infos.append(fut.result())
            except Exception as exc:         # stop the others too: no half-started set is left behind
                errors.append(str(exc))
    if errors:
        for info in infos:
            Guest.load(info['dir']).stop()
        raise LabError('; '.join(errors))
    print(json.dumps(infos, indent=1))


def running_guests():
    if not STATE.is_dir():
        return []
    guests = []
    for gjson in sorted(STATE.glob('*/guest.json')):   # written by Guest.start() right after qemu started
        try:
            guests.append(Guest.load(gjson.parent))
        except (OSError, ValueError, KeyError):
            continue
    return guests


def cmd_stop(args):
    for name in args.names:
        gdir = STATE / name
        if not (gdir / 'guest.json').exists():
            log('no guest %s in %s' % (name, STATE))
            continue
        guest = Guest.load(gdir)
        if guest.stop():
            log('stopped %s' % name)
        if not args.keep:
            shutil.rmtree(gdir, ignore_errors=True)


def cmd_stop_all(args):
    # Every guest of this state directory (clones and template builds), and nothing else.
    for guest in running_guests():
        gdir = guest.dir
        if guest.stop():
            log('stopped %s' % gdir.name)
        if not args.keep:
            shutil.rmtree(gdir, ignore_errors=True)


def cmd_status(args):
    for guest in running_guests():
        pid = guest.pid()
        print('%-20s %-5s port %-6s %s' % (guest.name, guest.flavor, guest.port,
                                           'pid %d' % pid if pid else 'not running'))


def cmd_ssh(args):
    guest = Guest.load(STATE / args.name)
    os.execvp('ssh', guest.ssh_cmd(*args.command) if args.command else guest.ssh_cmd()[:-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='cmd', required=True)
    sub.add_parser('image')
    p = sub.add_parser('template')
    p.add_argument('flavors', nargs='*', help='%s (default: all)' % ' '.join(FLAVORS))
    p = sub.add_parser('clone')
    p.add_argument('--flavor', default='uni', choices=list(FLAVORS))
    p.add_argument('names', nargs='+')
    p = sub.add_parser('stop')
    p.add_argument('--keep', action='store_true', help='keep the guest directory (disk, serial log)')
    p.add_argument('names', nargs='+')
    p = sub.add_parser('stop-all')
    p.add_argument('--keep', action='store_true')
    sub.add_parser('status')
    sub.add_parser('accel')
    p = sub.add_parser('ssh')
    p.add_argument('name')
    p.add_argument('command', nargs=argparse.REMAINDER)
    args = parser.parse_args()
    try:
        if args.cmd == 'image':
            print(ensure_image())
        elif args.cmd == 'template':
            unknown = set(args.flavors) - set(FLAVORS)
            if unknown:
                raise LabError('unknown flavor %s; flavors: %s' % (', '.join(sorted(unknown)), ', '.join(FLAVORS)))
            _key, accel, paths = ensure_templates(args.flavors or list(FLAVORS))
            for flavor, path in paths.items():
                print('%s %s %s' % (flavor, accel, path))
        elif args.cmd == 'accel':
            print(probe_accel(ensure_image()))
        else:
            {'clone': cmd_clone, 'stop': cmd_stop, 'stop-all': cmd_stop_all, 'status': cmd_status,
             'ssh': cmd_ssh}[args.cmd](args)
    except LabError as exc:
        log('ERROR: %s' % exc)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

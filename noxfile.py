"""The checks of kvmhost.ksm as nox sessions, one per step; `./scripts/test` builds the venvs and runs them.

    ./scripts/test [STEP ...]          # README's command: bootstrap, then nox, then "N passed, N failed, N skipped"
    .venv/bin/nox -s lint build        # the same sessions without bootstrap and summary (venvs must exist)
    .venv/bin/nox -l                   # the sessions with their descriptions

Every session runs in the project's own venvs (venv_backend "none"): scripts/bootstrap builds them from the lock
files in requirements/, so a session downloads nothing. ansible-test runs from a fresh copy of the work tree
outside any git work tree (under ~/.cache/kvmhost-ksm/), and "All targets skipped" counts as a failure. A
session that cannot run on this machine is skipped with its reason; so is an entry script that exits 77.
"""

import atexit
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import nox
import yaml  # PyYAML comes with ansible-core in the main venv, which runs nox

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))

from support import collection  # noqa: E402  (after the path set-up above)

MAIN = REPO / ".venv"
IMPORTER = REPO / ".venv-importer"
PYBIN = REPO / ".cache" / "pybin"  # pythonX.Y links to real interpreters, written by scripts/bootstrap
BUILD = REPO / "build"
GUARD = [str(MAIN / "bin" / "python"), str(REPO / "tests" / "support" / "ksm_guard.py"), "guard", "--"]

# ansible-core controller -> (venv, its Python). Units run on the listed Pythons that exist here: together they
# cover every module target from 3.6 to 3.14, each on the newest controller that still supports it.
CONTROLLERS = {
    "2.19": (MAIN, "3.11"),
    "2.16": (REPO / ".venv-2.16", "3.12"),
    "2.21": (REPO / ".venv-2.21", "3.13"),
}
UNITS_PYTHONS = {
    "2.16": os.environ.get("KVMHOST_UNITS_PYTHONS_2_16", "3.6 3.7 3.12").split(),
    "2.19": os.environ.get("KVMHOST_UNITS_PYTHONS_2_19", "3.8 3.9 3.10 3.11").split(),
    "2.21": os.environ.get("KVMHOST_UNITS_PYTHONS_2_21", "3.13 3.14").split(),
}

# The order of a full run. molecule runs before pytest: it builds the cached container rootfs that a
# real-systemd test uses.
nox.options.sessions = [
    "changelog", "docs", "lint", "ruff", "mypy", "build", "importer", "builder",
    "sanity-2.19", "sanity-2.16", "sanity-2.21", "units-2.19", "units-2.16", "units-2.21", "prometheus",
    "molecule", "pytest", "playbook", "report", "vmlab",
]
nox.options.default_venv_backend = "none"
nox.options.error_on_missing_interpreters = False


# ------------------------------------------------------------------------------------------------ helpers


def venv_env(venv: Path) -> dict[str, str]:
    """os.environ with venv/bin, then the pythonX.Y links, first on PATH; pyenv shims dropped (ansible-test
    cleans the environment, and a shim for another version then exits 127)."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not p.rstrip("/").endswith("/shims")]
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=os.pathsep.join([str(venv / "bin"), str(PYBIN)] + path))
    env.pop("PYTHONHOME", None)
    return env


def ansible_env(venv: Path, **extra: str) -> dict[str, str]:
    """venv_env plus the collection environment (support.collection): this work tree as kvmhost.ksm."""
    return collection.ansible_env(str(venv), dict(venv_env(venv), **extra))


def need(session: nox.Session, venv: Path, tool: str, why: str) -> None:
    """Skip the session when venv has no bin/tool (scripts/bootstrap could not build that venv here)."""
    if not (venv / "bin" / tool).exists():
        session.skip(f"{venv.name} has no {tool}: {why}")


def run(session: nox.Session, *args: str, env: dict[str, str], cwd: Path = REPO) -> None:
    """Run a command (looked up on env's PATH) in cwd; a non-zero exit fails the session."""
    program = shutil.which(args[0], path=env.get("PATH")) or args[0]
    with session.chdir(cwd):
        session.run(program, *args[1:], env=env, external=True)


def stream(session: nox.Session, args: Sequence[str], env: dict[str, str], cwd: Path = REPO) -> tuple[int, str]:
    """Run a command, printing its output as it comes; return its exit status and output."""
    session.log(" ".join(args))
    lines = []
    with subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    return proc.returncode, "".join(lines)


def stage_home() -> Path:
    """Where the ansible-test stages live between runs: outside the work tree, one folder per clone."""
    home = Path(os.environ.get("KVMHOST_STAGE_HOME") or Path.home() / ".cache" / "kvmhost-ksm")
    return home / hashlib.sha256(str(REPO).encode()).hexdigest()[:12]


def stage_collection(parent: Path) -> Path:
    """A fresh copy of the work tree (tracked and untracked-not-ignored files) at
    parent/ansible_collections/kvmhost/ksm, outside any git work tree. The venvs that `ansible-test units --venv`
    made in an earlier stage (tests/output/.tmp/delegation) are kept when their Python still runs."""
    dest = parent / "ansible_collections" / "kvmhost" / "ksm"
    delegation = Path("tests") / "output" / ".tmp" / "delegation"
    keep = parent / "delegation.keep"
    shutil.rmtree(keep, ignore_errors=True)
    if (dest / delegation).is_dir():
        (dest / delegation).rename(keep)
        for venv in keep.iterdir():
            if subprocess.run([str(venv / "bin" / "python"), "-c", ""], capture_output=True, check=False).returncode:
                shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if keep.is_dir():
        (dest / delegation).parent.mkdir(parents=True)
        keep.rename(dest / delegation)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout
    archive = subprocess.run(["tar", "--null", "--ignore-failed-read", "-T", "-", "-cf", "-"], cwd=REPO,
                             input=files, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-xf", "-", "-C", str(dest)], input=archive, check=True)
    return dest


def ansible_test(session: nox.Session, core: str, args: Sequence[str]) -> None:
    """ansible-test ARGS from a fresh stage with controller CORE; fails on "All targets skipped"."""
    venv, minor = CONTROLLERS[core]
    need(session, venv, "ansible-test", f"this machine has no Python {minor} (pyenv or system)")
    stage = stage_collection(stage_home() / core)
    rc, out = stream(session, [str(venv / "bin" / "ansible-test"), *args, "--color", "no"], venv_env(venv), stage)
    if rc:
        session.error(f"ansible-test {args[0]} failed (exit {rc})")
    if "All targets skipped" in out:
        session.error("ansible-test skipped every target (a false green; is the staged copy empty?)")


def guarded(session: nox.Session, script: str) -> None:
    """Run an entry script of another part of the project under the KSM guard; its exit 77 is a skip."""
    path = REPO / script
    if not path.exists():
        session.skip(f"{script} does not exist")
    if not os.access(path, os.X_OK):
        session.error(f"{script} is not executable")
    rc = stream(session, [*GUARD, str(path)], ansible_env(MAIN))[0]
    if rc == 77:
        session.skip(f"{script} exited 77 (skipped; see its output above)")
    if rc:
        session.error(f"{script} failed (exit {rc})")


_built: dict[str, Path] = {}


def built(session: nox.Session) -> tuple[Path, Path]:
    """The collection tarball and its installed tree (ansible_collections/ inside), made once per nox run from a
    fresh stage of the work tree, in a directory of this run (another run in the same tree cannot replace them
    under it); the build session also copies the tarball to build/dist."""
    if not _built:
        top = Path(tempfile.mkdtemp(prefix="kvmhost-build."))
        atexit.register(shutil.rmtree, top, True)
        stage = stage_collection(top / "stage")
        dist, installed = top / "dist", top / "installed"
        run(session, "ansible-galaxy", "collection", "build", "--output-path", str(dist), ".",
            env=ansible_env(MAIN), cwd=stage)
        tarball = next(dist.glob("kvmhost-ksm-*.tar.gz"))
        run(session, "ansible-galaxy", "collection", "install", "--force", "-p", str(installed), str(tarball),
            env=ansible_env(MAIN, ANSIBLE_COLLECTIONS_PATH=str(installed)))
        _built.update(tarball=tarball, installed=installed)
    return _built["tarball"], _built["installed"]


def step(name: str, description: str) -> Callable[[Callable[[nox.Session], None]], object]:
    """@step(name, description): a session named like a ./scripts/test step, run in the project's venvs."""
    def register(func: Callable[[nox.Session], None]) -> object:
        func.__doc__ = description
        return nox.session(name=name, python=False)(func)
    return register


# ----------------------------------------------------------------------------------------------- sessions


@step("changelog", "antsibull-changelog lint")
def changelog(session: nox.Session) -> None:
    run(session, "antsibull-changelog", "lint", env=venv_env(MAIN))


@step("docs", "antsibull-docs lint-collection-docs --plugin-docs")
def docs(session: nox.Session) -> None:
    run(session, "antsibull-docs", "lint-collection-docs", "--plugin-docs", ".", env=venv_env(MAIN))


@step("lint", "ansible-lint (production profile, offline; .ansible-lint)")
def lint(session: nox.Session) -> None:
    run(session, "ansible-lint", env=ansible_env(MAIN))


@step("ruff", "ruff check of the controller-side Python (tests, bench, scripts, noxfile; ruff.toml)")
def ruff(session: nox.Session) -> None:
    run(session, "ruff", "check", "--output-format", "concise", env=venv_env(MAIN))


@step("mypy", "mypy: plugins/ as ansible_collections.kvmhost.ksm (Python 3.10 rules); tests/support, bench, noxfile")
def mypy(session: nox.Session) -> None:
    env = venv_env(MAIN)
    env["MYPYPATH"] = os.pathsep.join([collection.collections_dir(), str(REPO / "tests")])
    run(session, "mypy", "--python-version", "3.10", "-p", "ansible_collections.kvmhost.ksm.plugins", env=env)
    run(session, "mypy", "tests/support", "bench", "noxfile.py", env=env)


@step("build", "ansible-galaxy collection build (to build/dist) and install, ansible-doc of every module and role")
def build(session: nox.Session) -> None:
    tarball, installed = built(session)
    (BUILD / "dist").mkdir(parents=True, exist_ok=True)
    shutil.copy2(tarball, BUILD / "dist" / tarball.name)
    with tarfile.open(tarball) as archive:
        session.log(f"tarball: build/dist/{tarball.name} ({len(archive.getnames())} files)")
    env = ansible_env(MAIN, ANSIBLE_COLLECTIONS_PATH=str(installed))
    run(session, "ansible-doc", "-l", "kvmhost.ksm", env=env)
    failed = []
    targets = [("module", p.stem) for p in sorted((REPO / "plugins" / "modules").glob("*.py")) if p.stem != "__init__"]
    targets += [("role", p.name) for p in sorted((REPO / "roles").iterdir()) if p.is_dir()]
    for kind, name in targets:
        proc = subprocess.run(["ansible-doc", "-t", kind, f"kvmhost.ksm.{name}"], env=env, capture_output=True,
                              text=True, check=False)
        text = proc.stdout.strip()
        if proc.returncode or not text:
            failed.append(f"{kind} {name}")
            print(f"ansible-doc -t {kind} kvmhost.ksm.{name} printed nothing (exit {proc.returncode}):\n{proc.stderr}")
            continue
        print(f"== ansible-doc -t {kind} kvmhost.ksm.{name}: {len(text.splitlines())} lines")
        print("\n".join(text.splitlines()[:3]))
    if failed:
        session.error(f"ansible-doc failed for {', '.join(failed)} (role: is meta/argument_specs.yml missing?)")


IMPORTER_CONFIG = """\
[galaxy-importer]
# What Galaxy runs on an upload, minus ansible-test (it needs a container engine).
RUN_ANSIBLE_TEST = False
RUN_ANSIBLE_DOC = True
RUN_ANSIBLE_LINT = True
OFFLINE_ANSIBLE_LINT = True
CHECK_CHANGELOG = True
"""


@step("importer", "galaxy-importer on the built tarball (its ansible-test off); any WARNING or ERROR fails")
def importer(session: nox.Session) -> None:
    need(session, IMPORTER, "python", "scripts/bootstrap builds it from requirements/importer.txt")
    tarball = built(session)[0]
    with tempfile.TemporaryDirectory(prefix="kvmhost-importer.") as tmp:
        config = Path(tmp) / "galaxy-importer.cfg"
        config.write_text(IMPORTER_CONFIG)
        env = venv_env(IMPORTER)
        env["GALAXY_IMPORTER_CONFIG"] = str(config)
        rc, out = stream(session, [str(IMPORTER / "bin" / "python"), "-m", "galaxy_importer.main", str(tarball)],
                         env, Path(tmp))
    problems = [line for line in out.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    if rc or problems or "Importer processing completed successfully" not in out:
        session.error(f"galaxy-importer: exit {rc}, {len(problems)} WARNING/ERROR lines (above)")


@step("builder", "ansible-builder introspect over the installed collection: the EE dependencies it reads")
def builder(session: nox.Session) -> None:
    need(session, IMPORTER, "ansible-builder", "scripts/bootstrap builds it from requirements/importer.txt")
    installed = built(session)[1]
    rc, out = stream(session, [str(IMPORTER / "bin" / "ansible-builder"), "introspect", "--sanitize",
                               str(installed)], venv_env(IMPORTER))
    if rc:
        session.error(f"ansible-builder introspect failed (exit {rc}): is meta/execution-environment.yml in the "
                      "collection format (dependencies: python/system files)?")
    read = introspected(out, "kvmhost.ksm")
    meta = yaml.safe_load((REPO / "meta" / "execution-environment.yml").read_text())
    for kind, name in meta.get("dependencies", {}).items():
        declared = [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()]
        declared = [line for line in declared if line]
        if sorted(read.get(kind, [])) != sorted(declared):
            session.error(f"ansible-builder read {kind} {read.get(kind, [])} for kvmhost.ksm, but {name} declares "
                          f"{declared}")
        session.log(f"{kind}: {name} declares {', '.join(declared) or 'nothing'}; ansible-builder read the same")


def introspected(out: str, name: str) -> dict[str, list[str]]:
    """The requirements `ansible-builder introspect` printed for collection NAME, by kind (python, system)."""
    printed = yaml.safe_load(out.split("---", 1)[-1]) or {}
    suffix = f"# from collection {name}"
    return {kind: [line[: -len(suffix)].strip() for line in lines if line.endswith(suffix)]
            for kind, lines in printed.items() if isinstance(lines, list)}


def sanity(core: str) -> None:
    @step(f"sanity-{core}", f"ansible-test sanity, ansible-core {core} on Python {CONTROLLERS[core][1]}")
    def _sanity(session: nox.Session) -> None:
        venv = CONTROLLERS[core][0]
        need(session, venv, "python", f"this machine has no Python {CONTROLLERS[core][1]} (pyenv or system)")
        version = subprocess.run([str(venv / "bin" / "python"), "-c", "import ansible.release as r; "
                                  "print(r.__version__)"], capture_output=True, text=True, check=False).stdout.strip()
        session.log(f"ansible-core {version}")
        ansible_test(session, core, ["sanity"])


def units(core: str) -> None:
    pythons = UNITS_PYTHONS[core]

    @step(f"units-{core}", f"ansible-test units --venv, ansible-core {core}, Pythons {' '.join(pythons)}")
    def _units(session: nox.Session) -> None:
        if not any((REPO / "tests" / "unit").rglob("test_*.py")):
            session.skip("tests/unit has no test_*.py files yet")
        present = [py for py in pythons if py == CONTROLLERS[core][1] or (PYBIN / f"python{py}").exists()]
        for py in sorted(set(pythons) - set(present), key=pythons.index):
            session.warn(f"no Python {py} on this machine: units not run on it")
        if not present:
            session.skip(f"none of the Pythons {' '.join(pythons)} is on this machine")
        for py in present:
            ansible_test(session, core, ["units", "--venv", "--python", py])


for _core in CONTROLLERS:
    sanity(_core)
for _core in CONTROLLERS:
    units(_core)


def host_tools(session: nox.Session, *packages: str) -> None:
    """Install Debian packages this session needs on the test machine (support.host_packages); skip without."""
    rc = subprocess.run([sys.executable, str(REPO / "tests" / "support" / "host_packages.py"), *packages],
                        check=False).returncode
    if rc == 77:
        session.skip(f"the host packages {' '.join(packages)} are missing and cannot be installed here")
    if rc:
        session.error(f"installing the host packages {' '.join(packages)} failed (exit {rc})")


PROMETHEUS = REPO / "extensions" / "prometheus"


@step("prometheus", "promtool check rules, promtool test rules (extensions/prometheus), promtool check metrics on "
                    "this host's KSM metrics")
def prometheus(session: nox.Session) -> None:
    host_tools(session, "prometheus")
    env = venv_env(MAIN)
    run(session, "promtool", "check", "rules", str(PROMETHEUS / "kvmhost-ksm.rules.yml"), env=env)
    run(session, "promtool", "test", "rules", str(PROMETHEUS / "tests" / "kvmhost-ksm.test.yml"), env=env)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from ansible_collections.kvmhost.ksm.plugins.module_utils "
            "import _metrics; sys.exit(_metrics.main(['--stdout', '--mode=static', '--interval=60']))")
    text = subprocess.run([str(MAIN / "bin" / "python"), "-c", code, collection.collections_dir()], check=True,
                          capture_output=True, text=True).stdout
    session.log(f"the collector wrote {len(text.splitlines())} lines on this host")
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    if proc.returncode or not text.strip():
        session.error(f"promtool check metrics refused this host's KSM metrics: {proc.stdout}{proc.stderr}")


@step("molecule", "tests/hosts/run-molecule under the KSM guard")
def molecule(session: nox.Session) -> None:
    guarded(session, "tests/hosts/run-molecule")


@step("pytest", "tests/real_hosts/run (the module tests on real hosts; localhost) under the KSM guard")
def pytest(session: nox.Session) -> None:
    guarded(session, "tests/real_hosts/run")


PLAYBOOK_TWICE = r"""
set -o pipefail
echo "== ansible-core $KVMHOST_CONTROLLER: first run"; ./scripts/run | tee "$1/run1.out" || exit 1
echo "== ansible-core $KVMHOST_CONTROLLER: second run"; ./scripts/run | tee "$1/run2.out" || exit 1
"""


@step("playbook", "./scripts/run twice under the KSM guard on each controller: the second reports changed=0")
def playbook(session: nox.Session) -> None:
    if os.geteuid() != 0:
        session.skip("./scripts/run needs root")
    failed = []
    for core, (venv, _python) in CONTROLLERS.items():
        if not (venv / "bin" / "ansible-playbook").exists():
            session.warn(f"controller {core}: no venv on this machine (no Python for it), not run")
            continue
        with tempfile.TemporaryDirectory(prefix="kvmhost-playbook.") as tmp:
            env = dict(os.environ, KVMHOST_CONTROLLER=core)
            rc = stream(session, [*GUARD, "bash", "-c", PLAYBOOK_TWICE, "playbook", tmp], env)[0]
            recap = (Path(tmp) / "run2.out").read_text() if (Path(tmp) / "run2.out").exists() else ""
        if rc:
            failed.append(f"{core} (exit {rc})")
        elif re.search(r"localhost +: ok=\d+ +changed=0 +unreachable=0 +failed=0", recap):
            session.log(f"ansible-core {core}: second run made no change (idempotent)")
        else:
            failed.append(f"{core} (the second run reported a change or a failure)")
    if failed:
        session.error(f"./scripts/run failed on ansible-core {', '.join(failed)}")


@step("report", "the fleet report playbook on localhost, a host without KSM and an unreachable one; the page in "
                "headless Chromium (tests/report/check_report.py)")
def report(session: nox.Session) -> None:
    rc = stream(session, [str(MAIN / "bin" / "python"), str(REPO / "tests" / "report" / "check_report.py")],
                venv_env(MAIN))[0]
    if rc == 77:
        session.skip("tests/report/check_report.py cannot run here (see its output above)")
    if rc:
        session.error(f"tests/report/check_report.py failed (exit {rc})")


@step("vmlab", "tests/vmlab/run under the KSM guard")
def vmlab(session: nox.Session) -> None:
    guarded(session, "tests/vmlab/run")

# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the fleet report playbook and check its three files, the HTML page in headless Chromium.

    python3 tests/report/check_report.py [--inventory INV] [--expect HOST=STATUS ...] [--expect-guest NAME ...]
                                         [--out DIR] [--screenshot PNG]

Without --inventory it reports on this machine (localhost), a host whose KSM directory does not exist (no-ksm) and
a host nobody listens for (gone, ssh to 127.0.0.1 port 9), and expects ok, unavailable and unreachable rows.
Checks: ansible-playbook kvmhost.ksm.report -i INV writes ksm-report.json, .md and .html; every inventory host has a
row with the expected status and a reason unless ok; Chromium (Debian's chromium, installed through
support.host_packages) loads the page from disk with no console message (a page with a script error is loaded
first to prove the check sees one), the page loads nothing from the network, takes a screenshot, and every number
the page shows (data-value, and its text) equals the JSON. Exit 0 passed, 1 failed, 77 cannot run here.
"""

import argparse
import html.parser
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import collection, host_packages  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]
DEFAULT_INVENTORY = """\
all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: {python}
    no-ksm:
      ansible_connection: local
      ansible_python_interpreter: {python}
      ksm_report_sysfs_path: /nonexistent/kernel/mm/ksm
    gone:
      ansible_connection: ssh
      ansible_host: 127.0.0.1
      ansible_port: 9
      ansible_user: root
"""
DEFAULT_EXPECT = {"localhost": "ok", "no-ksm": "unavailable", "gone": "unreachable"}


class Failed(Exception):
    """A check failed; the message says which and why."""


def mib(value: float | None) -> str:
    return "—" if value is None else f"{value / 1048576:.1f} MiB"


# data-field -> how the page prints the value (the templates' formats)
FORMATS = {
    "saved_bytes": mib, "profit_bytes": mib, "merged_bytes": mib,
    "ksmd_cpu_seconds": lambda v: "—" if v is None else f"{v:.2f} s",
    "ksmd_share": lambda v: f"{v * 100:.1f} %",
}


class Page(html.parser.HTMLParser):
    """The elements of the report page that carry data-field, with their attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, str]] = []
        self.urls: list[str] = []
        self._open: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if key in found:
                self.urls.append(found[key])
        if "data-field" in found:
            item = dict(found, tag=tag, text="")
            self.items.append(item)
            if tag not in ("rect",):
                self._open.append(item)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1]["tag"] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for item in self._open:
            item["text"] += data


def chromium(page: Path, profile: Path, *extra: str) -> tuple[str, str]:
    """Load page in headless Chromium with a fresh profile; return (stdout, stderr)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        raise Failed("no chromium on PATH after installing the package")
    proc = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode:
        raise Failed(f"chromium exited {proc.returncode} on {page.name}: {proc.stderr[-2000:]}")
    return proc.stdout, proc.stderr


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def check_page(page: Path, report: dict, work: Path, screenshot: Path) -> list[str]:
    """The browser checks; returns what was checked, raises Failed."""
    done = []
    broken = work / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>console.error('x'); undefinedFunction();</script>"
                      "</body></html>")
    if not console_lines(chromium(broken, work / "profile-broken", "--dump-dom")[1]):
        raise Failed("the console check saw no message on a page with a script error: it cannot be trusted here")
    dom, stderr = chromium(page, work / "profile-dom", "--dump-dom")
    if console_lines(stderr):
        raise Failed("console messages on the report page:\n" + "\n".join(console_lines(stderr)))
    done.append("no console message (and the check sees one on a broken page)")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    chromium(page, work / "profile-shot", "--window-size=1360,1300", "--hide-scrollbars",
             f"--screenshot={screenshot}")
    if not screenshot.exists() or screenshot.stat().st_size < 10000:
        raise Failed(f"chromium wrote no screenshot to {screenshot}")
    done.append(f"screenshot {screenshot} ({screenshot.stat().st_size} bytes)")
    parsed = Page()
    parsed.feed(dom)
    external = [u for u in parsed.urls if re.match(r"(https?:)?//", u)]
    if external or "<script" in dom:
        raise Failed(f"the page is not self-contained: scripts or external URLs {external}")
    rows = {row["host"]: row for row in report["hosts"]}
    compared = 0
    for item in parsed.items:
        field = item["data-field"]
        if field.startswith("totals."):
            expected = report["totals"][field.split(".", 1)[1]]
        elif "data-host" in item:
            expected = rows[item["data-host"]].get(field)
        elif "data-guest" in item:
            expected = report["top_guests"][int(item["data-guest"])].get(field)
        else:
            raise Failed(f"an element with data-field={field} belongs to no host, guest or total")
        shown = item.get("data-value", item["text"].strip())
        if field in ("status", "reason"):
            if item["text"].strip() != str(expected).strip():
                raise Failed(f"{field} of {item.get('data-host')}: page {item['text']!r}, JSON {expected!r}")
        elif str(expected if expected is not None else "") != shown and not (
                expected is not None and shown and float(shown) == float(expected)):
            raise Failed(f"{field} of {item.get('data-host', item.get('data-guest', 'totals'))}: page data-value "
                         f"{shown!r}, JSON {expected!r}")
        text, kind = item["text"].strip(), field.rsplit(".", 1)[-1]
        if text and kind in FORMATS and text != FORMATS[kind](expected):
            raise Failed(f"{field}: the page prints {text!r} for {expected!r}, expected {FORMATS[kind](expected)!r}")
        compared += 1
    expected_count = sum(1 for row in report["hosts"] if row["status"] == "ok") * 6  # 4 cells + 2 bars
    if compared < expected_count:
        raise Failed(f"only {compared} numbers found on the page, expected at least {expected_count}")
    done.append(f"{compared} values on the page equal the JSON")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", help="an inventory (default: localhost, no-ksm, gone)")
    parser.add_argument("--expect", action="append", default=[], metavar="HOST=STATUS",
                        help="the status a host's row must have (ok, unavailable, unreachable, failed)")
    parser.add_argument("--expect-guest", action="append", default=[], metavar="GUEST",
                        help="a QEMU guest name that must be among the top guests")
    parser.add_argument("--out", help="where the report goes (default: a temporary directory)")
    parser.add_argument("--screenshot", default=str(REPO / "build" / "report" / "ksm-report.png"))
    parser.add_argument("--top", type=int, default=10, help="ksm_report_top: how many guests the report lists")
    parser.add_argument("--venv", default=str(REPO / ".venv"))
    args = parser.parse_args(argv)
    try:
        host_packages.install(["chromium"])
    except host_packages.CannotInstall as exc:
        print(f"check_report: SKIPPED: {exc}", file=sys.stderr)
        return 77
    except host_packages.InstallFailed as exc:
        print(f"check_report: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="kvmhost-report.") as tmp:
        work = Path(tmp)
        out = Path(args.out) if args.out else work / "report"
        inventory = Path(args.inventory) if args.inventory else work / "inventory.yml"
        expect = dict(item.split("=", 1) for item in args.expect)
        if not args.inventory:
            inventory.write_text(DEFAULT_INVENTORY.format(python=Path(args.venv) / "bin" / "python"))
            expect = {**DEFAULT_EXPECT, **expect}
        env = collection.ansible_env(args.venv)
        cmd = [str(Path(args.venv) / "bin" / "ansible-playbook"), "kvmhost.ksm.report", "-i", str(inventory),
               "-e", f"ksm_report_dir={out}", "-e", f"ksm_report_top={args.top}"]
        print("check_report: " + " ".join(cmd), flush=True)
        if subprocess.run(cmd, env=env, cwd=work, check=False).returncode:
            print("check_report: FAILED: the report playbook failed (output above)", file=sys.stderr)
            return 1
        try:
            missing = [name for name in ("ksm-report.json", "ksm-report.md", "ksm-report.html")
                       if not (out / name).is_file()]
            if missing:
                raise Failed(f"the playbook did not write {', '.join(missing)} in {out}")
            report = json.loads((out / "ksm-report.json").read_text())
            rows = {row["host"]: row for row in report["hosts"]}
            for host, status in expect.items():
                row = rows.get(host)
                if row is None or row["status"] != status:
                    raise Failed(f"host {host}: expected a row with status {status}, got {row}")
                if status != "ok" and not row["reason"]:
                    raise Failed(f"host {host} ({status}) has no reason in the report")
            listed = [g["guest"] for g in report["top_guests"]]
            for name in args.expect_guest:
                if name not in listed:
                    raise Failed(f"guest {name} is not among the top guests {listed}")
            markdown = (out / "ksm-report.md").read_text()
            for host in rows:
                if f"| {host} |" not in markdown:
                    raise Failed(f"ksm-report.md has no row for {host}")
            for line in check_page(out / "ksm-report.html", report, work, Path(args.screenshot)):
                print(f"check_report: {line}")
        except Failed as exc:
            print(f"check_report: FAILED: {exc}", file=sys.stderr)
            return 1
        statuses = ", ".join(f"{row['host']} {row['status']}" for row in report["hosts"])
        print(f"check_report: PASSED: {len(rows)} hosts ({statuses}); saved {mib(report['totals']['saved_bytes'])}, "
              f"{len(report['top_guests'])} top guests")
    return 0


if __name__ == "__main__":
    sys.exit(main())

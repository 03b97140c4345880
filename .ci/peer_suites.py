"""Peers' suites as a referee: joblib's own tests, plain and under warn mode.

    python .ci/peer_suites.py --python VENV/bin/python [--work DIR]
        [--expected .ci/peer_suites_expected.toml] [--module test_parallel.py ...]

Warn mode allows every load, so turning it on must not change what a program
does. joblib's wheel ships its test suite; the modules that load pickles
(``MODULES``) run twice in the ``--python`` environment, plain and with warn
mode on from interpreter start, and each test's outcome (passed, failed, error,
skipped; from ``--junitxml``) is compared. A test whose outcome differs is run
again, alone, in both modes; a difference that persists fails the step unless
``--expected`` lists it with its reason. A test that fails or times out in both
modes is not a difference. Then ``import dill.__diff``, which runs dill's
pickler patching at import time, must end the same way in both modes.

The guarded run activates warn mode the way a deployment does, through the
``.pth`` file (python/pickleguard/_boot.py, docs/deployment.md):
``PICKLEGUARD_MODE=warn`` with ``PICKLEGUARD_MANIFEST`` naming a manifest that
lists nothing, so every load is one the policy would refuse and is reported;
``PICKLEGUARD_WARN_STDERR=off`` keeps stderr as it is plain. The reports go to
``PICKLEGUARD_LOG`` files in the work directory. Before the suites run, a child
interpreter must show the warn layer and report a load; and each guarded run
must report at least one load. Otherwise the step would compare plain with
plain, and it stops instead.

cloudpickle is left out. Its PyPI sdists are built with flit and ship no tests
(3.1.3, the pinned version, holds only the package; 3.0.0 is 21 kB and does not
build with a current flit_core). The newest sdist with a tests/ folder, 2.2.1,
does not run against cloudpickle 3.1.3: both of its test modules import
``cloudpickle.compat``, removed in 3.0, and fail to collect. joblib vendors no
cloudpickle tests either.

Exit status: 0 the same outcomes (or only listed differences), 1 an unlisted
difference, 2 the step could not judge (bad arguments or expected file, the
guard not active, a module that does not collect, a run that hangs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

EXIT_OK = 0
EXIT_DIFFERENCE = 1
EXIT_ERROR = 2

# joblib's test modules that load pickles: persistence, the process backends'
# task and result transport, and memmapped arguments. The others do not load
# pickles, or only through these code paths.
MODULES = ("test_numpy_pickle.py", "test_parallel.py", "test_memmapping.py")
OUTCOMES = ("passed", "failed", "error", "skipped")
ABSENT = "absent"  # the test is in one run's report and not in the other's
WORKERS = 2
TEST_TIMEOUT = 90  # seconds, per test (pytest-timeout)
RUN_TIMEOUT = 1800  # seconds, per pytest run: a hang that pytest-timeout does not catch
HERE = Path(__file__).resolve().parent

# Run in a child interpreter: the layers it starts with, after loading a pickle
# that any manifest-based layer would report (a global, so no "safe" shortcut).
GUARD_CHECK = """\
import collections, json, pickle
try:
    from pickleguard import _core
except ImportError:
    layers = None
else:
    layers = _core.process_layers()
pickle.loads(pickle.dumps(collections.OrderedDict(a=1)))
print(json.dumps(layers))
"""


class StepError(Exception):
    """The step cannot judge: say what failed and what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Result:
    outcome: str
    message: str = ""


@dataclass(frozen=True)
class Listed:
    test: str
    plain: str
    guarded: str
    reason: str
    where: str  # "FILE:LINE" of the entry


@dataclass
class Difference:
    test: str
    plain: Result
    guarded: Result
    persists: bool = True
    first: Tuple[str, str] = ("", "")  # the outcomes of the first runs


# --- the expected file --------------------------------------------------------------


def read_expected(path: Path) -> Dict[str, Listed]:
    """The listed differences: ``[[difference]]`` tables of four strings each."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        raise StepError(
            "reading the expected file needs Python 3.11 or later (tomllib)",
            "run this script with the tools interpreter, as .ci/run does",
        ) from None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise StepError(f"could not read {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise StepError(f"{path}: not valid TOML: {e}", "fix the file's syntax") from e
    unknown = sorted(set(document) - {"difference"})
    if unknown:
        raise StepError(f"{path}: unknown top-level key {unknown[0]!r}; only [[difference]]")
    entries = document.get("difference", [])
    if not isinstance(entries, list):
        raise StepError(f"{path}: 'difference' must be an array of tables: [[difference]]")
    fields = {"test", "plain", "guarded", "reason"}
    listed: Dict[str, Listed] = {}
    for number, entry in enumerate(entries, 1):
        where = f"{path}: [[difference]] #{number}"
        unknown = sorted(set(entry) - fields)
        if unknown:
            raise StepError(
                f"{where}: unknown key {unknown[0]!r}; an entry has {', '.join(sorted(fields))}"
            )
        missing = sorted(fields - set(entry))
        if missing:
            raise StepError(f"{where}: the entry has no {', '.join(missing)}")
        if not all(isinstance(entry[key], str) for key in fields):
            raise StepError(f"{where}: every value is a string")
        test = entry["test"]
        for key in ("plain", "guarded"):
            if entry[key] not in OUTCOMES + (ABSENT,):
                raise StepError(
                    f"{where}: {key} = {entry[key]!r} for {test}; "
                    f"one of {', '.join(OUTCOMES + (ABSENT,))}"
                )
        if entry["plain"] == entry["guarded"]:
            raise StepError(f"{where}: {test} has the same outcome in both modes: no difference")
        if not entry["reason"].strip():
            raise StepError(f"{where}: {test} has an empty reason")
        if "::" not in test:
            raise StepError(f"{where}: {test!r} is not a pytest node id (FILE::TEST)")
        if test in listed:
            raise StepError(f"{where}: {test} is listed twice (first at {listed[test].where})")
        listed[test] = Listed(test, entry["plain"], entry["guarded"], entry["reason"], where)
    return listed


# --- running pytest ------------------------------------------------------------------


def read_junit(path: Path) -> Dict[str, Result]:
    """Each test's outcome and message, keyed by node id (FILE::[CLASS::]NAME), from a
    junit report written with ``junit_family = xunit1`` (which records the file)."""
    results: Dict[str, Result] = {}
    rank = {outcome: i for i, outcome in enumerate(("passed", "skipped", "failed", "error"))}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        file = case.get("file")
        if file:
            module = file[: -len(".py")].replace("/", ".")
            classname = case.get("classname", "")
            inner = classname[len(module) + 1 :] if classname.startswith(module + ".") else ""
            test = "::".join([file, *filter(None, inner.split(".")), name])
        else:  # a collection error is reported under the module's name only
            test = name
        result = Result("passed")
        for tag in ("error", "failure", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = element.get("message") or (element.text or "").strip()
                result = Result(outcome, " ".join(message.split())[:500])
                break
        # A failed test with an error at teardown appears twice: keep the worse.
        if test not in results or rank[result.outcome] > rank[results[test].outcome]:
            results[test] = result
    return results


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _count(results: Dict[str, Result]) -> str:
    counts = {outcome: 0 for outcome in OUTCOMES}
    for result in results.values():
        counts[result.outcome] += 1
    return ", ".join(f"{counts[o]} {o}" for o in OUTCOMES)


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


class Suites:
    """The pytest runs, in a work directory: reports, logs and the empty manifest."""

    def __init__(self, python: str, work: Path) -> None:
        self.python = python
        self.work = work
        self.manifest = work / "empty.toml"
        self.manifest.write_text("version = 1\n")  # lists nothing: warn mode reports every load
        # An ini file of our own: no pytest configuration from above the work
        # directory, and xunit1 reports, which name each test's file.
        self.ini = work / "pytest.ini"
        self.ini.write_text("[pytest]\njunit_family = xunit1\n")
        base = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
        base.update(PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        self.plain_env = base
        self.guarded_env = dict(
            base,
            PICKLEGUARD_MODE="warn",
            PICKLEGUARD_MANIFEST=str(self.manifest),
            PICKLEGUARD_WARN_STDERR="off",
        )
        # pytest's rootdir: the directory that holds joblib, so node ids start "joblib/test/".
        where = "import joblib, os; print(os.path.dirname(os.path.dirname(joblib.__file__)))"
        self.root = Path(self.output(["-c", where]))

    def env(self, mode: str, log: Optional[Path] = None) -> Dict[str, str]:
        env = dict(self.plain_env if mode == "plain" else self.guarded_env)
        if log is not None and mode == "guarded":
            env["PICKLEGUARD_LOG"] = str(log)
        return env

    def output(self, args: Sequence[str], mode: str = "plain") -> str:
        try:
            done = subprocess.run(
                [self.python, *args],
                env=self.env(mode),
                cwd=self.work,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except OSError as e:
            raise StepError(f"could not run {self.python}: {e.strerror or e}") from e
        if done.returncode != 0:
            raise StepError(
                f"{self.python} {' '.join(args)} exited {done.returncode}: "
                f"{done.stderr.strip()[-1500:]}",
                "install joblib, numpy, dill, pytest, pytest-xdist and pytest-timeout (pinned in "
                "tests/integration/constraints.txt) and the pickleguard wheel into that "
                "environment",
            )
        return done.stdout.strip()

    def check_guard(self) -> None:
        """Stop unless the guarded environment really starts in warn mode and the plain
        one does not: otherwise the comparison would compare plain with plain."""
        self.output(["-c", "import dill, numpy, xdist, pytest_timeout"])
        plain = json.loads(self.output(["-c", GUARD_CHECK]))
        if plain:
            raise StepError(f"the plain environment starts with pickleguard layers: {plain}")
        log = self.work / "guard-check.jsonl"
        if log.exists():
            log.unlink()
        done = subprocess.run(
            [self.python, "-c", GUARD_CHECK],
            env=self.env("guarded", log),
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        layers = json.loads(done.stdout or "null") if done.returncode == 0 else None
        warn = [layer for layer in layers or [] if layer[:2] == ["warn", str(self.manifest)]]
        reports = _reports(log)
        if done.returncode != 0 or not warn or reports == 0:
            raise StepError(
                "warn mode is not active in the guarded environment "
                f"(exit {done.returncode}, layers {layers}, {reports} loads reported): "
                f"{done.stderr.strip()[-1500:]}",
                "install the pickleguard wheel, with its .pth file, into the --python environment",
            )
        print(
            f"guard: the guarded environment starts with the layer {warn[0][:2]}; "
            "a load there is reported"
        )

    def pytest(
        self, mode: str, tag: str, targets: Sequence[str]
    ) -> Tuple[Dict[str, Result], float, int]:
        """Run pytest on ``targets``; return the outcomes, the time taken and the
        number of loads warn mode reported."""
        xml = self.work / f"{tag}-{mode}.xml"
        log = self.work / f"{tag}-{mode}.log"
        audit = self.work / f"{tag}-{mode}.jsonl"
        for path in (xml, audit):
            if path.exists():
                path.unlink()
        command = [
            self.python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            str(WORKERS),
            f"--timeout={TEST_TIMEOUT}",
            "-c",
            str(self.ini),
            f"--rootdir={self.root}",
            f"--junitxml={xml}",
            *targets,
        ]
        start = time.monotonic()
        with open(log, "w") as out:
            process = subprocess.Popen(
                command,
                env=self.env(mode, audit),
                cwd=self.work,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                status = process.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise StepError(
                    f"{tag} ({mode}) did not finish in {RUN_TIMEOUT} s; its output: {log}"
                ) from None
        took = time.monotonic() - start
        if status not in (0, 1) or not xml.exists():
            what = {
                2: "was interrupted (a collection error?)",
                5: "collected no tests",
            }.get(status, f"exited {status}")
            raise StepError(
                f"pytest on {tag} ({mode}) {what}; the end of {log}:\n{_tail(log)}",
                "a module that does not collect is an error of the step, never a pass",
            )
        results = read_junit(xml)
        if not results:
            raise StepError(f"pytest on {tag} ({mode}) reported no tests; see {log}")
        return results, took, _reports(audit)


def _reports(log: Path) -> int:
    try:
        with open(log, encoding="utf-8") as lines:
            return sum(1 for line in lines if '"event":"warn"' in line)
    except OSError:
        return 0


def compare(plain: Dict[str, Result], guarded: Dict[str, Result]) -> List[Difference]:
    differences = []
    for test in sorted(set(plain) | set(guarded)):
        a, b = plain.get(test, Result(ABSENT)), guarded.get(test, Result(ABSENT))
        if a.outcome != b.outcome:
            differences.append(Difference(test, a, b, first=(a.outcome, b.outcome)))
    return differences


# --- the step --------------------------------------------------------------------------


def check_dill(suites: Suites) -> Optional[str]:
    """``import dill.__diff`` must end the same way in both modes: None if it does."""
    seen = []
    for mode in ("plain", "guarded"):
        done = subprocess.run(
            [suites.python, "-c", "import dill.__diff"],
            env=suites.env(mode),
            cwd=suites.work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        last = (done.stderr.strip().splitlines() or [""])[-1]
        seen.append((done.returncode, last))
    print(f"dill: import dill.__diff: plain exit {seen[0][0]}, guarded exit {seen[1][0]}")
    if seen[0] == seen[1]:
        return None
    return f"import dill.__diff: plain {seen[0]}, guarded {seen[1]}"


def run(args: argparse.Namespace) -> int:
    listed = read_expected(args.expected)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    suites = Suites(args.python, work)
    suites.check_guard()
    start = time.monotonic()
    differences: List[Difference] = []
    for module in args.module or MODULES:
        path = suites.root / "joblib" / "test" / module
        if not path.is_file():
            raise StepError(f"{path} does not exist", "is joblib installed from its wheel?")
        tag = module[: -len(".py")]
        plain, t_plain, _ = suites.pytest("plain", tag, [str(path)])
        guarded, t_guarded, reports = suites.pytest("guarded", tag, [str(path)])
        print(f"{module}:")
        print(f"    plain   {len(plain):4} tests: {_count(plain)} ({_minutes(t_plain)})")
        print(
            f"    guarded {len(guarded):4} tests: {_count(guarded)} ({_minutes(t_guarded)}; "
            f"{reports} loads reported by warn mode)"
        )
        if reports == 0:
            raise StepError(
                f"the guarded run of {module} reported no load: warn mode did not reach "
                "pytest's processes, so it was a plain run",
                f"see {work / (tag + '-guarded.log')}",
            )
        found = compare(plain, guarded)
        if found:
            # Once more, only these tests, in both modes: a flaky test is no difference.
            targets = [str(suites.root / d.test) for d in found]
            again_plain, _, _ = suites.pytest("plain", tag + "-rerun", targets)
            again_guarded, _, _ = suites.pytest("guarded", tag + "-rerun", targets)
            for d in found:
                d.plain = again_plain.get(d.test, Result(ABSENT))
                d.guarded = again_guarded.get(d.test, Result(ABSENT))
                d.persists = (d.plain.outcome, d.guarded.outcome) == d.first
            print(f"    {len(found)} differed; {sum(d.persists for d in found)} again on re-run")
        differences += found
    print(f"the suites took {_minutes(time.monotonic() - start)}")
    return report(differences, listed, check_dill(suites), args.expected)


def report(
    differences: List[Difference], listed: Dict[str, Listed], dill: Optional[str], expected: Path
) -> int:
    seen = {d.test for d in differences}
    expected_seen, unlisted, flaky = [], [], []
    for d in differences:
        entry = listed.get(d.test)
        if not d.persists:
            flaky.append(d)
        elif entry and (entry.plain, entry.guarded) == (d.plain.outcome, d.guarded.outcome):
            expected_seen.append((d, entry))
        else:
            unlisted.append((d, entry))
    if expected_seen:
        print(f"\nlisted differences seen ({len(expected_seen)}):")
        for d, entry in expected_seen:
            print(f"  {d.test}: {d.plain.outcome} -> {d.guarded.outcome}: {entry.reason}")
    if flaky:
        print(f"\nflaky, not a difference (differed once, not on re-run) ({len(flaky)}):")
        for d in flaky:
            print(
                f"  {d.test}: first {d.first[0]} -> {d.first[1]}, "
                f"re-run {d.plain.outcome} -> {d.guarded.outcome}"
            )
    stale = [entry for test, entry in listed.items() if test not in seen]
    if stale:
        print(f"\nnotice: listed but not seen ({len(stale)}); remove them from {expected}:")
        for entry in stale:
            print(f"  {entry.where}: {entry.test}")
    if unlisted:
        print(f"\nUNLISTED differences ({len(unlisted)}):")
        for d, entry in unlisted:
            print(f"  {d.test}: plain {d.plain.outcome}, guarded {d.guarded.outcome}")
            if entry:
                print(f"      listed at {entry.where} as {entry.plain} -> {entry.guarded}")
            failing = d.guarded if d.guarded.outcome in ("failed", "error") else d.plain
            if failing.message:
                print(f"      {failing.outcome}: {failing.message}")
    if dill:
        print(f"\nerror: {dill}")
    if unlisted or dill:
        print(
            f"\nerror: {len(unlisted) + bool(dill)} difference(s) between plain and warn mode",
            file=sys.stderr,
        )
        print(
            f"hint: fix the cause; or, for a test that checks neither a loaded value nor a "
            f"raised exception, list it in {expected} with its reason",
            file=sys.stderr,
        )
        return EXIT_DIFFERENCE
    print(f"\npeer suites: same outcomes plain and under warn mode ({len(expected_seen)} listed)")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True, help="the interpreter of the venv to test")
    parser.add_argument(
        "--work", type=Path, default=Path("target/peer-suites"), help="scratch directory"
    )
    parser.add_argument(
        "--expected",
        type=Path,
        default=HERE / "peer_suites_expected.toml",
        help="the listed differences",
    )
    parser.add_argument(
        "--module", action="append", choices=MODULES, help="only this module (repeatable)"
    )
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # in step with pytest's output in CI logs
    args.work = args.work.resolve()
    try:
        return run(args)
    except StepError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""The ``pickleguard`` command line.

Exit codes: 0 ok, 1 a finding (an invalid manifest, a pickle that cannot be
delimited), 2 a usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import _core
from . import _record as recording
from ._cli_common import (
    EXIT_FINDING,
    EXIT_OK,
    EXIT_USAGE,
    is_zip,
    pickle_members,
    pickles_in,
    plural,
)
from ._pin import pin as _pin
from ._record import shown as _shown
from .errors import ManifestError


class _Report:
    """Collects results; prints humans' lines or one JSON document at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.items: List[Dict[str, Any]] = []
        # Raised by callers that hit an I/O error while producing the report.
        self.floor = EXIT_OK

    def add(self, item: Dict[str, Any], human: str) -> None:
        self.items.append(item)
        if not self.as_json:
            print(human)

    def error(self, item: Dict[str, Any], message: str, hint: str) -> None:
        self.items.append(item)
        if not self.as_json:
            print(f"error: {message}", file=sys.stderr)
            print(f"hint: {hint}", file=sys.stderr)

    def finish(self, status: int) -> int:
        status = max(status, self.floor)
        if self.as_json:
            json.dump({"status": status, "results": self.items}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        return status


def _check(args: argparse.Namespace) -> int:
    report = _Report(args.json)
    status = EXIT_OK
    for path in args.manifests:
        try:
            with open(path, "rb") as f:
                f.read()
        except OSError as e:
            reason = e.strerror or str(e)
            report.error(
                {"manifest": path, "ok": False, "error": reason},
                f"could not read {path}: {reason}",
                "give the path of a readable manifest TOML file",
            )
            status = max(status, EXIT_USAGE)
            continue
        try:
            entries = _core.check_manifest(path)
        except ManifestError as e:
            message, _, hint = str(e).partition("\nhint: ")
            report.error(
                {"manifest": path, "ok": False, "error": message, "hint": hint}, message, hint
            )
            status = max(status, EXIT_FINDING)
        else:
            warnings = _unnarrowed_channels(path)
            report.add(
                {"manifest": path, "ok": True, "rules": entries, "warnings": warnings},
                f"ok: {path} ({entries} {'rule' if entries == 1 else 'rules'})",
            )
            if not args.json:
                for warning in warnings:
                    print(f"warning: {path}: {warning}", file=sys.stderr)
    return report.finish(status)


def _unnarrowed_channels(path: str) -> List[str]:
    """Channel rules of a known transport without `called_from` that admit callers
    which the rule record writes admits only when the transport's own code calls
    them (written by a record from before that, or by hand): they admit every call
    of those callers, a task's or the program's own included."""
    warnings = []
    _, channels = _core.manifest_summary(path)
    for name, callers, called_from in channels:
        if called_from is not None:
            continue
        for known, known_from in recording.known_rules(name):
            wide = [c for c in known if any(_core.pattern_matches(p, c) for p in callers)]
            if not known_from or not wide:
                continue
            listed = ", ".join(f'"{p}"' for p in known_from)
            if set(callers) <= set(known):
                warnings.append(
                    f"the {name!r} channel rule has no called_from, so it also admits a "
                    f"task's own calls of its callers; add called_from = [{listed}] as "
                    "record writes it"
                )
            else:
                example = (
                    " (its recv() on any connection: a Listener's peer, a file)"
                    if name == "multiprocessing"
                    else ""
                )
                warnings.append(
                    f"the {name!r} channel rule has no called_from, so it admits "
                    f"{', '.join(wide)} whoever calls them, the program's own code "
                    f"included{example}; move them to a [[channel]] rule of their own "
                    f"with called_from = [{listed}] as record now writes it, or record "
                    "into a fresh manifest"
                )
    return warnings


def _read(path: str, report: _Report) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        report.floor = EXIT_USAGE
        report.error(
            {"file": path, "error": str(e)},
            f"could not read {path}: {e.strerror}",
            "check the path",
        )
        return None


def _readable(paths: Sequence[str], report: _Report) -> Iterator[Tuple[str, bytes]]:
    """Each file's path and contents; an unreadable one is reported and skipped."""
    for path in paths:
        data = _read(path, report)
        if data is not None:
            yield path, data


def _hash(args: argparse.Namespace) -> int:
    report = _Report(args.json)
    status = EXIT_OK
    algorithm = args.identity
    for path, data in _readable(args.files, report):
        whole = _core.hexdigest(data, algorithm)
        item: Dict[str, Any] = {"file": path, algorithm: whole, "size": len(data)}
        lines = [f"{path}: file {algorithm}:{whole} ({len(data)} bytes)"]
        members, problem = pickle_members(path, data)
        if is_zip(data):
            item["members"] = []
            for name, member in members:
                pickles, problem = pickles_in(member, algorithm)
                item["members"].append({"name": name, "pickles": pickles})
                lines += [
                    f"  {name}: {algorithm}:{p[algorithm]} ({p['size']} bytes)" for p in pickles
                ]
                if problem:
                    problem = f"{name}: {problem}"
                    break
        else:
            pickles, problem = pickles_in(data, algorithm)
            item["pickles"] = pickles
            lines += [
                f"  pickle at {p['offset']}: {algorithm}:{p[algorithm]} ({p['size']} bytes)"
                for p in pickles
            ]
        if problem:
            item["error"] = problem
        report.add(item, "\n".join(lines))
        if problem:
            if not args.json:
                print(f"error: {path}: {problem}", file=sys.stderr)
                print("hint: the file is not a pickle, or it is damaged", file=sys.stderr)
            status = max(status, EXIT_FINDING)
    return report.finish(status)


def _inspect(args: argparse.Namespace) -> int:
    report = _Report(args.json)
    status = EXIT_OK
    for path, data in _readable(args.files, report):
        members, damaged = pickle_members(path, data)
        if damaged:
            report.error(
                {"file": path, "error": damaged}, f"{path}: {damaged}", "the file is damaged"
            )
            status = max(status, EXIT_FINDING)
        for name, blob in members:
            pickles, problem = pickles_in(blob)
            label = f"{path}:{name}" if name else path
            for p in pickles:
                offset = p["offset"]
                found = _core.imports(blob[offset : offset + p["size"]])
                classes = _core.classify_imports([g for g, _ in found])
                risky = [g for g, c in classes if c == "risky"]
                item = {
                    "file": path,
                    "member": name or None,
                    "offset": offset,
                    "sha256": p["sha256"],
                    "imports": [g for g, _ in found],
                    "risky": risky,
                    "review": [g for g, c in classes if c == "review"],
                    "classes": dict(classes),
                }
                lines = [f"{label} pickle at {offset} (sha256:{p['sha256']}):"]
                marks = {"risky": "RISKY ", "review": "REVIEW "}
                lines += [f"  {marks.get(c, '')}{g}" for g, c in classes] or ["  (no imports)"]
                report.add(item, "\n".join(lines))
                if risky:
                    status = max(status, EXIT_FINDING)
            if problem:
                report.error(
                    {"file": path, "member": name or None, "error": problem},
                    f"{label}: {problem}",
                    "the file is not a pickle, or it is damaged",
                )
                status = max(status, EXIT_FINDING)
    return report.finish(status)


def _inherited_layers() -> List[List[Optional[str]]]:
    """The layers this process runs under, as PICKLEGUARD_LAYERS entries, so that a
    command started from here keeps them: layers only add up down a process tree."""
    layers: List[List[Optional[str]]] = []
    manifest = os.environ.get("PICKLEGUARD_MANIFEST")
    if manifest is not None or "PICKLEGUARD_MODE" in os.environ:
        mode = os.environ.get("PICKLEGUARD_MODE") or "enforce"
        layers.append([mode, os.path.abspath(manifest) if manifest else None])
    try:
        layers += json.loads(os.environ.get("PICKLEGUARD_LAYERS") or "[]")
    except ValueError:
        pass
    return layers


def _child_env(**settings: Optional[str]) -> Dict[str, str]:
    """This environment with its PICKLEGUARD_ variables replaced by ``settings``, and
    the layers it ran under carried over in PICKLEGUARD_LAYERS."""
    inherited = _inherited_layers()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env.update({k: v for k, v in settings.items() if v is not None})
    if inherited:
        env["PICKLEGUARD_LAYERS"] = json.dumps(inherited)
    return env


def _command(args: argparse.Namespace) -> Optional[List[str]]:
    command = list(args.command_line)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("error: no command to run", file=sys.stderr)
        print(f"hint: pickleguard {args.command} [options] -- python app.py", file=sys.stderr)
        return None
    return command


def _record(args: argparse.Namespace) -> int:
    command = _command(args)
    if command is None:
        return EXIT_USAGE
    output = Path(args.output)
    existing: Optional[str] = None
    if output.exists():
        try:
            existing = output.read_text(encoding="utf-8")
            _core.check_manifest(str(output))
        except (OSError, UnicodeDecodeError, ManifestError) as e:
            print(f"error: cannot merge into {output}: {e}", file=sys.stderr)
            print("hint: fix the manifest or choose another with -o", file=sys.stderr)
            return EXIT_FINDING if isinstance(e, ManifestError) else EXIT_USAGE
    if _inherited_layers():
        print(
            "error: record allows every load, and this environment enforces a policy",
            file=sys.stderr,
        )
        print("hint: record in a trusted setting without PICKLEGUARD_ variables", file=sys.stderr)
        return EXIT_USAGE
    keep = args.journal is not None
    journal_dir = Path(args.journal) if keep else Path(tempfile.mkdtemp(prefix="pickleguard-"))
    journal_dir.mkdir(parents=True, exist_ok=True)
    env = _child_env(
        PICKLEGUARD_RECORD=str(journal_dir.resolve()),
        PICKLEGUARD_RECORD_IDENTITY=args.identity,
    )
    try:
        returncode = subprocess.call(command, env=env)
    except KeyboardInterrupt:
        returncode = 130
    except OSError as e:
        if not keep:
            shutil.rmtree(journal_dir, ignore_errors=True)
        print(f"error: could not run {command[0]}: {e.strerror}", file=sys.stderr)
        print("hint: check the command after --", file=sys.stderr)
        return EXIT_USAGE
    journal = recording.read_journals(journal_dir)
    for problem in journal.problems:
        print(f"warning: {problem}", file=sys.stderr)
    try:
        merged = recording.merge(existing, str(output), journal)
        recording.write_atomically(output, merged.text)
    except (OSError, ManifestError) as e:
        print(f"error: could not write {output}: {e}", file=sys.stderr)
        print(f"hint: the journal is kept in {journal_dir}", file=sys.stderr)
        return EXIT_USAGE
    if not keep:
        shutil.rmtree(journal_dir, ignore_errors=True)
    risky = [r for r in merged.added if r.risky]
    summary = {
        "manifest": str(output),
        "command_exit": returncode,
        "loads": journal.loads,
        "processes": len(journal.processes),
        "added": [
            {
                "kind": r.kind,
                "identity": r.identity,
                "sha256": r.sha256,
                "caller": r.caller,
                "source": r.source,
                "loader": r.loader,
            }
            for r in merged.added
        ],
        "channels_added": merged.channels_added,
        "risky": [{"identity": r.identity, "caller": r.caller, "imports": r.risky} for r in risky],
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(
            f"recorded {plural(journal.loads, 'load')} in "
            f"{plural(len(journal.processes), 'process')}: "
            f"{plural(len(merged.added), 'new entry')}, "
            f"{plural(sum(map(len, merged.channels_added.values())), 'new channel caller')}, "
            f"written to {output}"
        )
        for r in risky:
            print(
                f"warning: {r.identity[:23]}... (loaded by {_shown(r.caller)}) imports "
                f"{', '.join(map(_shown, r.risky))}",
                file=sys.stderr,
            )
        if risky:
            print("hint: review the entries marked RISKY before you trust them", file=sys.stderr)
    if returncode < 0:  # killed by a signal: report it as a shell would
        returncode = 128 - returncode
    if returncode != 0:
        print(
            f"warning: the command exited with {returncode}; "
            "the manifest holds what it loaded until then",
            file=sys.stderr,
        )
    return returncode


def _run(args: argparse.Namespace) -> int:
    command = _command(args)
    if command is None:
        return EXIT_USAGE
    manifest = args.manifest or os.environ.get("PICKLEGUARD_MANIFEST") or "pickleguard.toml"
    try:
        with open(manifest, "rb"):
            pass
    except OSError as e:
        print(f"error: could not read the manifest {manifest}: {e.strerror}", file=sys.stderr)
        print("hint: pass --manifest, or record one with `pickleguard record`", file=sys.stderr)
        return EXIT_USAGE
    try:
        _core.check_manifest(manifest)
    except ManifestError as e:
        message, _, hint = str(e).partition("\nhint: ")
        print(f"error: {message}", file=sys.stderr)
        print(f"hint: {hint}", file=sys.stderr)
        return EXIT_FINDING
    env = _child_env(
        PICKLEGUARD_MANIFEST=os.path.abspath(manifest),
        PICKLEGUARD_MODE=args.mode,
        PICKLEGUARD_LOG=os.path.abspath(args.log)
        if args.log
        else os.environ.get("PICKLEGUARD_LOG"),
    )
    executable = shutil.which(command[0], path=env.get("PATH"))
    if executable is None:
        print(f"error: command not found: {command[0]}", file=sys.stderr)
        print("hint: check the command after --", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, command, env)
    return EXIT_USAGE  # not reached


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pickleguard",
        description="Allow only the pickles an explicit manifest lists.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check", help="validate manifests")
    check.add_argument("manifests", nargs="+", metavar="MANIFEST")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(run=_check)
    hash_ = commands.add_parser("hash", help="print the identities pickleguard sees in files")
    hash_.add_argument("files", nargs="+", metavar="FILE")
    hash_.add_argument("--json", action="store_true", help="machine-readable output")
    hash_.add_argument(
        "--identity",
        choices=("sha256", "blake3"),
        default="sha256",
        help="print SHA-256 (default) or BLAKE3 digests",
    )
    hash_.set_defaults(run=_hash)
    inspect = commands.add_parser(
        "inspect", help="list the globals a pickle would import, without loading it"
    )
    inspect.add_argument("files", nargs="+", metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(run=_inspect)
    record = commands.add_parser(
        "record", help="run a trusted command, allow and journal every load, freeze a manifest"
    )
    record.add_argument("-o", "--output", default="pickleguard.toml", metavar="MANIFEST")
    record.add_argument("--journal", metavar="DIR", help="keep the raw journal in DIR")
    record.add_argument(
        "--identity",
        choices=("sha256", "blake3"),
        default="sha256",
        help="hash new entries with SHA-256 (default) or BLAKE3 (faster on large payloads)",
    )
    record.add_argument("--json", action="store_true", help="machine-readable summary")
    record.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    record.set_defaults(run=_record)
    run = commands.add_parser("run", help="run a command with the manifest enforced")
    run.add_argument(
        "--manifest", metavar="MANIFEST", help="default: $PICKLEGUARD_MANIFEST or pickleguard.toml"
    )
    run.add_argument("--mode", choices=("enforce", "warn"), default="enforce")
    run.add_argument(
        "--log", metavar="FILE", help="append warn reports and denials here as JSON lines"
    )
    run.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    run.set_defaults(run=_run)
    pin = commands.add_parser(
        "pin", help="add entries for files, sha256sum lines or bare hashes to a manifest"
    )
    pin.add_argument("manifest", metavar="MANIFEST", help="created if it does not exist")
    pin.add_argument("files", nargs="*", metavar="FILE", help="pin the whole file (default)")
    pin.add_argument(
        "--sha256sum",
        dest="sums",
        action="append",
        default=[],
        metavar="SUMS",
        help="pin each file a sha256sum listing names, without reading it ('-': standard input)",
    )
    pin.add_argument(
        "--hash",
        dest="hashes",
        action="append",
        default=[],
        metavar="HEX",
        help="pin a bare hash: 64 hex digits, optionally prefixed sha256: or blake3:",
    )
    pin.add_argument(
        "--pickle",
        action="store_true",
        help="pin each pickle in FILE (as `pickleguard hash` shows them) as a [[pickle]] entry, "
        "instead of the whole file as an [[artifact]]",
    )
    pin.add_argument(
        "--identity",
        choices=("sha256", "blake3"),
        help="hash FILE with SHA-256 (default) or BLAKE3; bare --hash values are taken as this",
    )
    pin.add_argument(
        "--stack",
        action="append",
        default=[],
        metavar="PATTERN",
        help="allow only callers matching PATTERN (repeat for several, outermost first)",
    )
    pin.add_argument("--note", metavar="TEXT", help="a note for reviewers in every new entry")
    pin.add_argument(
        "--source",
        metavar="NAME",
        help="the source of every new entry (default: the path, or the name in the sums line)",
    )
    pin.add_argument("--json", action="store_true", help="machine-readable summary")
    pin.set_defaults(run=_pin)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse cannot take `pin` FILEs after an option (`pin M --note x a.pt`); they
        # come back unrecognized. Anything else unrecognized is the usual usage error.
        if extra and args.command == "pin" and not any(a.startswith("-") for a in extra):
            args.files += extra
        elif extra:
            parser.error("unrecognized arguments: " + " ".join(extra))
    except SystemExit as exit:
        return EXIT_USAGE if exit.code not in (0, None) else EXIT_OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("error: a command is required\nhint: pickleguard --help", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except BrokenPipeError:
        # A closed pipe (`| head`) is not an error; keep the interpreter quiet on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""The manifests ``record`` and ``pin`` write: read the journals a recorded run
left, merge them into a manifest without losing anything already there, and the
TOML text and reviewers' comments both commands write (``_writes`` writes it).

Journals are JSON lines, one file per process (see ``_core.start_journal``). A
process killed mid-write can leave a partial last line; it is reported and skipped,
and every complete line before it still counts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from .. import _core


@dataclass
class Recorded:
    """One distinct load seen by the recorded run: a payload and where it loaded."""

    kind: str  # "pickle" or "artifact": the table its entry goes in
    identity: str  # "sha256:<hex>" or "blake3:<hex>"
    size: int
    caller: str
    # Each frame that called `caller` in the loads of this pickle (None: none), with
    # the known channel (multiprocessing, dask) those loads were part of, if any.
    called_from: Dict[Optional[str], Optional[str]]
    source: Optional[str]
    imports: List[str]
    risky: List[str]
    loader: Optional[str] = None
    count: int = 1

    @property
    def sha256(self) -> str:
        """The hex SHA-256, for entries recorded with SHA-256 (else empty)."""
        algorithm, _, digest = self.identity.partition(":")
        return digest if algorithm == "sha256" else ""


@dataclass
class Journal:
    """Everything the recorded run journaled, deduplicated."""

    pickles: Dict[Tuple[str, str, str], Recorded] = field(default_factory=dict)
    channels: Dict[str, Set[str]] = field(default_factory=dict)
    channel_loads: int = 0
    loads: int = 0
    processes: Set[int] = field(default_factory=set)
    problems: List[str] = field(default_factory=list)


def read_journals(directory: Path) -> Journal:
    journal = Journal()
    for path in sorted(directory.glob("journal-*.jsonl")):
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    entry = json.loads(raw)
                    identity = str(entry["id"])
                    kind = str(entry.get("kind", "pickle"))
                    if kind not in ("pickle", "artifact"):
                        raise ValueError(f"unknown kind {kind!r}")
                    caller = str(entry["caller"])
                    journal.processes.add(int(entry["pid"]))
                except (ValueError, KeyError, TypeError) as e:
                    journal.problems.append(
                        f"{path}:{number}: skipped a damaged journal line ({e})"
                    )
                    continue
                journal.loads += 1
                # Transports the pickle shows in use, whose messages this run may
                # never have loaded (torch's spawn error reports).
                for used in entry.get("uses", []):
                    journal.channels.setdefault(str(used), set())
                channel = entry.get("channel")
                if channel:
                    journal.channels.setdefault(str(channel), set()).add(caller)
                    journal.channel_loads += 1
                called_from = entry.get("called_from")
                in_channel = str(channel) if channel else None
                key = (kind, identity, caller)
                if key in journal.pickles:
                    journal.pickles[key].count += 1
                    journal.pickles[key].called_from[called_from] = in_channel
                else:
                    journal.pickles[key] = Recorded(
                        kind=kind,
                        identity=identity,
                        loader=entry.get("loader"),
                        size=int(entry.get("size", 0)),
                        caller=caller,
                        called_from={called_from: in_channel},
                        source=entry.get("source"),
                        imports=[str(i) for i in entry.get("imports", [])],
                        risky=[str(i) for i in entry.get("risky", [])],
                    )
    return journal


def known_rules(name: str) -> List[Tuple[List[str], List[str]]]:
    """The rules ``record`` writes for the known channel ``name``, as (callers,
    called_from: empty for any); none for a name it does not know. A transport
    whose callers need different ``called_from`` has several rules, with the same
    name."""
    return [
        (list(callers), list(called_from)) for callers, called_from in _core.channel_rules(name)
    ]


def toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string: same quotes, same escapes. Except
    # for DEL, which JSON leaves raw and TOML requires escaped, and lone surrogates
    # (undecodable bytes of a file name), which neither TOML nor UTF-8 can hold:
    # they are written as text, "\\udcff".
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def clean_text(text: str) -> str:
    """``text`` as valid Unicode: undecodable bytes of a file name become ``\\xff``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def quoted(text: str) -> str:
    """``text`` quoted, with control characters escaped: safe in a TOML comment."""
    return toml_string(clean_text(text))


def shown(text: str) -> str:
    """Text for a comment or a message: as it is, or quoted if it holds control
    characters. File names, and the globals a recorded pickle names, come from
    untrusted input: a newline in one must not end a comment and start an entry."""
    clean = clean_text(text)
    return clean if clean.isprintable() else quoted(clean)


def review_comments(kind: str, imports: List[str], risky: List[str]) -> List[str]:
    """The comment lines above a new entry that tell its reviewer what it covers
    and what its pickles import. The globals' names come from the pickles
    themselves, so each is shown safely."""
    lines = []
    if kind == "artifact":
        lines.append("# the whole file is pinned: its pickles and its tensor or array data")
    if imports:
        lines.append("# imports: " + ", ".join(map(shown, imports)))
    if risky:
        lines.append("# RISKY imports, review before trusting: " + ", ".join(map(shown, risky)))
    review = [g for g, c in _core.classify_imports(imports) if c == "review"]
    if review:
        lines.append("# REVIEW imports, not known to be safe: " + ", ".join(map(shown, review)))
    return lines


def toml_list(items: List[str]) -> str:
    if len(items) <= 2:
        return "[" + ", ".join(toml_string(i) for i in items) + "]"
    # One item a line, so a reviewer reads (and diffs) them one by one.
    return "[\n" + "".join(f"    {toml_string(i)},\n" for i in items) + "]"


@dataclass
class Merge:
    text: str
    added: List[Recorded]
    channels_added: Dict[str, List[str]]


# A manifest's channel rule: (callers, called_from or None for any).
_Rule = Tuple[List[str], Optional[List[str]]]


@dataclass
class _Existing:
    """What the manifest being merged into already allows."""

    pins: Set[Tuple[str, str, Optional[Tuple[str, ...]]]] = field(default_factory=set)
    callers: Dict[str, Set[str]] = field(default_factory=dict)
    rules: List[_Rule] = field(default_factory=list)

    @classmethod
    def read(cls, path: str) -> _Existing:
        existing = cls()
        entries, channels = _core.manifest_summary(path)
        for table, identities, stack in entries:
            for identity in identities:
                existing.pins.add((table, identity, None if stack is None else tuple(stack)))
        for name, callers, called_from in channels:
            existing.callers.setdefault(name, set()).update(callers)
            existing.rules.append((callers, called_from))
        return existing


def merge(existing_text: Optional[str], existing_path: str, journal: Journal) -> Merge:
    """The manifest text with the journal's new entries appended to it.

    Existing text, entries and comments are kept byte for byte; new entries go at
    the end. A payload already allowed for that caller (or for every caller) is
    not added again.
    """
    existing = _Existing() if existing_text is None else _Existing.read(existing_path)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    channels_added, blocks = _channel_blocks(journal, existing, stamp)
    added: List[Recorded] = []
    for rec in sorted(journal.pickles.values(), key=lambda r: (r.kind, r.caller, r.identity)):
        if _channel_allows(rec, existing, channels_added):
            continue
        if (rec.kind, rec.identity, None) in existing.pins or (
            rec.kind,
            rec.identity,
            (rec.caller,),
        ) in existing.pins:
            continue
        added.append(rec)
        blocks.append(_recorded_block(rec, stamp))
    if existing_text is None:
        text = (
            "# Pickles this program may load. Written by `pickleguard record`; review it.\n"
            "version = 1\n"
        )
    else:
        text = existing_text
    if blocks:
        if not text.endswith("\n"):
            text += "\n"
        text += "\n" + "\n".join(blocks)
    return Merge(text=text, added=added, channels_added=channels_added)


def _channel_blocks(
    journal: Journal, existing: _Existing, stamp: str
) -> Tuple[Dict[str, List[str]], List[str]]:
    """The callers added to each channel the run used, and the [[channel]] rules
    that add them."""
    blocks: List[str] = []
    channels_added: Dict[str, List[str]] = {}
    for name in sorted(journal.channels):
        # Every rule of the channel, and every function each loads through, not
        # only those this run used: another start method (spawn, forkserver) or
        # kind of worker uses others.
        for callers, called_from in known_rules(name):
            new = sorted(set(callers) - existing.callers.get(name, set()))
            if not new:
                continue
            channels_added.setdefault(name, []).extend(new)
            block = (
                f"# recorded {stamp}: {name}'s own messages carry pickles that change on\n"
                "# every run; they are allowed only when loaded directly by these callers"
            )
            block += (
                ",\n# and only when a function matching called_from calls them.\n"
                if called_from
                else ".\n"
            )
            block += f"[[channel]]\nname = {toml_string(name)}\ncallers = {toml_list(new)}\n"
            if called_from:
                block += f"called_from = {toml_list(called_from)}\n"
            blocks.append(block)
    return channels_added, blocks


def _rule_admits(rule: _Rule, caller: str, outer: Optional[str]) -> bool:
    callers, called_from = rule
    return any(_core.pattern_matches(p, caller) for p in callers) and (
        called_from is None or any(_core.pattern_matches(p, outer or "") for p in called_from)
    )


def _channel_allows(
    rec: Recorded, existing: _Existing, channels_added: Dict[str, List[str]]
) -> bool:
    """Whether every load of it is allowed by a channel rule: one the manifest
    had (written by hand, or by an earlier record) or one written now. Channel
    rules cover an artifact only when it was read from memory, and the journal
    names a known channel for those loads alone: a file is always pinned."""
    if rec.kind != "pickle" and None in rec.called_from.values():
        return False
    return all(
        (channel is not None and rec.caller in channels_added.get(channel, ()))
        or any(_rule_admits(rule, rec.caller, outer) for rule in existing.rules)
        for outer, channel in rec.called_from.items()
    )


def _recorded_block(rec: Recorded, stamp: str) -> str:
    """The entry for one recorded load, with the comments its reviewer reads."""
    where = f" from {shown(rec.source)}" if rec.source else ""
    if rec.loader:
        where += f", read by {shown(rec.loader)}"
    lines = [f"# recorded {stamp}: {rec.size} bytes{where}, loaded by {shown(rec.caller)}"]
    lines += review_comments(rec.kind, rec.imports, rec.risky)
    algorithm, _, digest = rec.identity.partition(":")
    lines.append(f"[[{rec.kind}]]")
    lines.append(f"{algorithm} = {toml_string(digest)}")
    if rec.caller:
        lines.append(f"stack = {toml_list([rec.caller])}")
    if rec.source:
        lines.append(f"source = {toml_string(rec.source)}")
    return "\n".join(lines) + "\n"


__all__ = [
    "Journal",
    "Merge",
    "Recorded",
    "clean_text",
    "known_rules",
    "merge",
    "quoted",
    "read_journals",
    "review_comments",
    "shown",
    "toml_list",
    "toml_string",
]

"""`record`'s merge of artifacts loaded through a channel: one read from memory
(torch.distributed's weights_only decoder) is the channel's; a file is pinned."""

from __future__ import annotations

import json
from pathlib import Path

from pickleguard.cli._manifest import merge, read_journals


def journal_line(kind: str, identity: str, channel: str | None) -> str:
    return json.dumps(
        {
            "v": 1,
            "pid": 1,
            "kind": kind,
            "id": identity,
            "size": 4,
            "caller": "multiprocessing.queues:Queue.get",
            "called_from": "app:consume",
            "channel": channel,
        }
    )


def test_an_artifact_read_from_memory_by_a_channel_is_not_pinned(tmp_path: Path) -> None:
    in_memory = "sha256:" + "11" * 32
    from_file = "sha256:" + "22" * 32
    (tmp_path / "journal-1.jsonl").write_text(
        journal_line("artifact", in_memory, "multiprocessing")
        + "\n"
        # The core names no channel for a file, whoever reads it.
        + journal_line("artifact", from_file, None)
        + "\n"
    )
    result = merge(None, str(tmp_path / "m.toml"), read_journals(tmp_path))
    assert [rec.identity for rec in result.added] == [from_file]
    assert "multiprocessing" in result.channels_added
    assert "22" * 32 in result.text and "11" * 32 not in result.text

"""fileio: files appear complete under their final name, or not at all; and the landing writers built on it."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from freshrec import landing
from freshrec.fileio import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, json_line, temp_name


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_the_temporary_name_is_a_hidden_sibling(tmp_path):
    final = tmp_path / "events.jsonl"
    a, b = temp_name(final), temp_name(final)
    assert a.parent == b.parent == tmp_path
    assert a.name.startswith(".events.jsonl.") and a.name.endswith(".tmp")
    assert a != b  # two writers of the same file never share a temporary


@pytest.mark.parametrize("mode, gz, payload", [("w", False, "ü\n"), ("wb", False, b"\x00\x01"), ("w", True, "ü\n")])
def test_only_a_hidden_name_exists_until_the_file_is_complete(tmp_path, mode, gz, payload):
    final = tmp_path / "sub" / "out"
    with atomic_open(final, mode, gz=gz) as fh:
        fh.write(payload)
        during = _names(final.parent)
        assert len(during) == 1 and during[0].startswith(".out.")
        assert not final.exists()
    assert _names(final.parent) == ["out"]
    data = final.read_bytes()
    data = gzip.decompress(data) if gz else data
    assert data == (payload.encode("utf-8") if mode == "w" else payload)


def test_text_is_written_without_newline_translation(tmp_path):
    assert atomic_write_text(tmp_path / "t", "a\r\nb\n").read_bytes() == b"a\r\nb\n"


def test_an_existing_file_is_replaced(tmp_path):
    final = atomic_write_bytes(tmp_path / "f", b"old")
    atomic_write_bytes(final, b"new")
    assert final.read_bytes() == b"new" and _names(tmp_path) == ["f"]


@pytest.mark.parametrize("mode, gz", [("w", False), ("wb", False), ("w", True), ("wb", True)])
def test_an_error_while_writing_leaves_the_old_file_and_no_temporary(tmp_path, mode, gz):
    final = atomic_write_bytes(tmp_path / "f", b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(final, mode, gz=gz) as fh:
            fh.write("new" if mode == "w" else b"new")
            raise RuntimeError("disk on fire")
    assert _names(tmp_path) == ["f"] and final.read_bytes() == b"old"


def test_an_error_in_a_directory_writer_leaves_no_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "table") as tmp:
            tmp.mkdir()
            (tmp / "part-0.parquet").write_bytes(b"x")
            raise RuntimeError("executor lost")
    assert _names(tmp_path) == []


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    final = tmp_path / "table"
    final.mkdir()
    (final / "part-old.parquet").write_bytes(b"old")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "part-0.parquet").write_bytes(b"new")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "part-1.parquet").write_bytes(b"new")
        assert _names(final) == ["part-old.parquet"]  # readers see the old table until the rename
    assert _names(tmp_path) == ["table"]
    assert _names(final) == ["nested", "part-0.parquet"] and (final / "nested" / "part-1.parquet").read_bytes() == b"new"


def test_gzip_bytes_depend_on_the_content_only(tmp_path):
    with atomic_open(tmp_path / "a.jsonl.gz", "w", gz=True) as fh:
        fh.write("same\n" * 1000)
    with atomic_open(tmp_path / "other-name.gz", "w", gz=True) as fh:
        for _ in range(1000):  # written in other pieces, under another name
            fh.write("same\n")
    a, b = (tmp_path / "a.jsonl.gz").read_bytes(), (tmp_path / "other-name.gz").read_bytes()
    assert a == b
    assert a[4:8] == b"\x00\x00\x00\x00"  # no modification time in the header
    assert gzip.decompress(a) == b"same\n" * 1000


def test_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="writes only"):
        with atomic_open(tmp_path / "f", "a"):
            pass
    assert _names(tmp_path) == []


def test_json_line_is_compact_and_drops_none():
    assert json_line({"a": 1, "b": None, "c": "ü", "p": float("nan"), "q": [1, None]}) == '{"a":1,"c":"\\u00fc","p":NaN,"q":[1,null]}'


# -- landing files ----------------------------------------------------------------------------

def test_every_handle_is_closed_before_the_rename_with_reference_counting_defeated(tmp_path, monkeypatch):
    """The gzip landing writer used to wrap a file handle it never closed: its buffered bytes
    reached the disk only when reference counting dropped the handle, after the rename. Here
    every handle stays referenced, as under PyPy or in a reference cycle."""
    opened: list = []
    real_open, real_replace = Path.open, os.replace

    def keep_open(self, *args, **kwargs):
        fh = real_open(self, *args, **kwargs)
        opened.append(fh)
        return fh

    def replace_checked(src, dst):
        assert opened and all(fh.closed for fh in opened), "a handle on the temporary is still open at the rename"
        real_replace(src, dst)

    monkeypatch.setattr(Path, "open", keep_open)
    monkeypatch.setattr(os, "replace", replace_checked)
    rows = [{"event_id": f"e{i}", "user_id": "u1", "event_type": "view", "item_id": "i1"} for i in range(50)]
    path, n = landing.atomic_write_jsonl(tmp_path, "mb.jsonl", rows, gz=True)
    assert (path.name, n) == ("mb.jsonl.gz", 50)
    assert [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()] == rows
    assert opened  # still referenced here, so nothing was flushed by being collected


def test_landing_parts_split_rows_and_take_ready_lines(tmp_path):
    rows = [{"a": 1, "b": None}, '{"ready":true}', {"a": 2}]
    files = list(landing.write_parts(tmp_path, "src-", rows, rows_per_file=2))
    assert [(p.name, n) for p, n in files] == [("src-00000.jsonl", 2), ("src-00001.jsonl", 1)]
    assert [p.read_text() for p, _ in files] == ['{"a":1}\n{"ready":true}\n', '{"a":2}\n']
    assert list(landing.write_parts(tmp_path / "none", "src-", [], rows_per_file=2)) == []
    assert not (tmp_path / "none").exists()

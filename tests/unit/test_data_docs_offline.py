"""The Data Docs point at freshrec's vendored copies of what GX loads from CDNs
(freshrec.quality.localize_data_docs), without Spark: on pages made of GX's own templates."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import great_expectations

from freshrec.quality import _ASSET_TAG, _ASSET_URL, VENDORED, localize_data_docs

TEMPLATES = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
MANIFEST = json.loads((VENDORED / "manifest.json").read_text())
LOGO = '<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=20261203T074858.5Z">'


def cdn_urls(text: str) -> set[str]:
    """The network URLs the <script> and <link> tags of ``text`` load."""
    return {m.group(1) for tag in _ASSET_TAG.finditer(text) for m in [_ASSET_URL.search(tag.group(0))] if m}


def test_the_vendored_files_are_the_ones_recorded():
    for entry in MANIFEST:
        assert hashlib.sha256((VENDORED / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]


def test_every_cdn_file_of_the_gx_templates_is_vendored():
    linked = set().union(*(cdn_urls(t.read_text()) for t in TEMPLATES.glob("*.j2")))
    assert len(linked) >= 14  # GX 1.24: bootstrap, bootstrap-table, datepicker, dark theme, Font Awesome, jQuery, popper, vega
    assert linked <= {url for entry in MANIFEST for url in entry["replaces"]}


def site(root: Path) -> list[Path]:
    """Two pages at the depths GX writes them, each with every CDN tag of GX's templates."""
    head = "\n".join((TEMPLATES / name).read_text() for name in ("js_script_imports.j2", "index_page.j2"))
    pages = [root / "index.html", root / "validations" / "events" / "run" / "20261203T0748Z" / "batch.html"]
    for page in pages:
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f"<html><head>{head}</head><body>{LOGO}</body></html>")
    (root / "static" / "images").mkdir(parents=True)
    (root / "static" / "images" / "logo-long.png").write_bytes(b"png")
    return pages


def test_pages_load_only_local_files_and_a_rerun_changes_nothing(tmp_path, caplog):
    pages = site(tmp_path)
    assert localize_data_docs(tmp_path) == 2
    for page in pages:
        text = page.read_text()
        assert cdn_urls(text) == set() and "amazonaws" not in text
        assert "integrity=" not in text and "crossorigin=" not in text  # a page opened from file:// cannot check them
        refs = re.findall(r'(?:src|href)="([^"#{]+)"', text)
        local = [r for r in refs if "/vendor/" in r or r.endswith("logo-long.png")]
        assert len(local) >= 15
        for ref in local:
            assert (page.parent / ref).resolve().is_file(), (page, ref)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with caplog.at_level(logging.WARNING, logger="freshrec.quality"):
        assert localize_data_docs(tmp_path) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not caplog.records


def test_a_file_it_does_not_know_stays_and_is_reported(tmp_path, caplog):
    page = tmp_path / "index.html"
    page.write_text('<script src="https://cdn.example.org/new.js"></script><a href="https://greatexpectations.io">GX</a>')
    with caplog.at_level(logging.WARNING, logger="freshrec.quality"):
        assert localize_data_docs(tmp_path) == 0
    assert "https://cdn.example.org/new.js" in caplog.text and "greatexpectations.io" not in caplog.text


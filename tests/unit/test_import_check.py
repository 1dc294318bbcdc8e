"""`freshrec import` checks the first rows of each source against the clean job's rules before
writing anything: counts per reason with an example each, the flag that fixes it, and a
refusal (nothing written) when most rows would be quarantined, unless --force."""

from __future__ import annotations

import json

import pytest

from freshrec.importers import ImportOptions, ImportRefused, guess_event_map, guess_ts_format, import_sources, run_import

CLICKS = "user,item,when,action\n" + "".join(
    f"u{i % 3},i{i % 4},02/{12 + i % 3}/2026 16:33:{i:02d},{'buy' if i == 3 else 'click'}\n" for i in range(7))
MAPPED = dict(user_col="user", item_col="item", ts_col="when", event_col="action")


def _csv(tmp_path, text: str = CLICKS):
    src = tmp_path / "clicks.csv"
    src.write_text(text, encoding="utf-8")
    return src


def _landed(settings) -> list[dict]:
    return [json.loads(line) for p in sorted(settings.landing_events_dir.glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_a_source_that_would_be_quarantined_is_refused_with_the_flags_that_fix_it(settings, tmp_path, capsys):
    with pytest.raises(ImportRefused, match=r"7 of the 7 rows checked \(100%\) would be quarantined.*--force") as refused:
        import_sources(settings, "csv", [_csv(tmp_path)], ImportOptions(**MAPPED))
    assert list(settings.landing_events_dir.iterdir()) == []
    assert refused.value.check.reasons == {"unknown_event_type": 7, "invalid_ts": 7}
    err = capsys.readouterr().err
    assert "checked the first 7 row(s): 7 would be quarantined" in err
    assert "unknown_event_type       7  e.g. unknown_event_type: 'click' is not one of view" in err
    assert "invalid_ts: '02/12/2026 16:33:00' is not an ISO-8601 timestamp" in err
    assert "--event-map click=view,buy=purchase" in err
    assert "--ts-format '%m/%d/%Y %H:%M:%S'" in err


def test_the_suggested_flags_import_every_row_clean(settings, tmp_path, capsys):
    options = ImportOptions(**MAPPED, event_map="click=view,buy=purchase", ts_format="%m/%d/%Y %H:%M:%S")
    report = run_import(settings, "csv", [_csv(tmp_path)], options)
    assert report.rows == 7 and report.check.checked == 7 and report.check.failed == 0
    assert capsys.readouterr().err == ""


def test_force_imports_anyway_and_still_reports(settings, tmp_path, capsys):
    written = import_sources(settings, "csv", [_csv(tmp_path)], ImportOptions(**MAPPED, force=True))
    assert sum(n for _, n in written) == 7 and len(_landed(settings)) == 7
    assert "7 would be quarantined" in capsys.readouterr().err


def test_a_minority_of_bad_rows_is_reported_per_reason_and_imported(settings, tmp_path, capsys):
    rows = [{"ts": "2024-05-01T10:00:00Z", "user_id": f"u{i}", "event_type": "view", "item_id": "i"} for i in range(7)]
    rows += [{"ts": "2024-05-01T10:00:00Z", "event_type": "view", "item_id": "i"},
             {"ts": "2024-05-01T10:00:00Z", "user_id": "u", "event_type": "view", "item_id": "i", "price": -1},
             {"ts": "2024-05-01T10:00:00Z", "user_id": "u", "event_type": "view", "item_id": "i", "price": "x"}]
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n", encoding="utf-8")
    report = run_import(settings, "events", [src])
    assert report.rows == 11
    assert report.check.checked == 11 and report.check.failed == 4
    assert report.check.reasons == {"missing_user_id": 1, "invalid_price": 2, "malformed_json": 1}
    assert report.check.examples["invalid_price"][0] == "invalid_price: price must be a finite number >= 0, got -1"
    import_sources(settings, "events", [src])
    err = capsys.readouterr().err
    assert "4 would be quarantined" in err and "invalid_price         2  e.g." in err and "{broken" in err


def test_epoch_seconds_get_their_flag(settings, tmp_path, capsys):
    src = _csv(tmp_path, "user,item,when\n" + "".join(f"u{i},i{i},{1_700_000_000 + i}\n" for i in range(5)))
    with pytest.raises(ImportRefused):
        import_sources(settings, "csv", [src], ImportOptions(user_col="user", item_col="item", ts_col="when",
                                                             default_event="view"))
    assert "--ts-format epoch_s" in capsys.readouterr().err


def test_guesses():
    assert guess_event_map({"click": 5, "AddToCart": 2, "wibble": 1}) == "click=view,AddToCart=add_to_cart"
    assert guess_event_map({"wibble": 1}) is None
    assert guess_ts_format(["13/02/2026 10:00:00"])[0] == "%d/%m/%Y %H:%M:%S"
    assert guess_ts_format(["02/12/2026 10:00:00", "02/13/2026 10:00:00"])[0] == "%m/%d/%Y %H:%M:%S"
    assert guess_ts_format(["sometime"]) == []

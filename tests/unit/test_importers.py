"""Importers: every source row becomes one landing row, ids are stable, files are atomic and unique."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from freshrec.cli import build_parser
from freshrec.errors import UserError
from freshrec.importers import (
    RAW_SOURCE_FIELD,
    ImportOptions,
    derive_event_id,
    event_ids,
    import_sources,
    run_import,
    tafeng_date,
    tafeng_unit_price,
)
from freshrec.landing import atomic_write_jsonl
from freshrec.schemas import EVENT_FIELDS
from tests.conftest import SAMPLES

# for sources of mostly broken rows on purpose: past the up-front check, which would refuse them
FORCE = ImportOptions(force=True)

RR_SAMPLE = SAMPLES / "retailrocket_sample_events.csv"
OTTO_SAMPLE = SAMPLES / "otto_sample_train.jsonl"
TAFENG_HEADER = '"TRANSACTION_DT","CUSTOMER_ID","AGE_GROUP","PIN_CODE","PRODUCT_SUBCLASS","PRODUCT_ID","AMOUNT","ASSET","SALES_PRICE"'


def _read(files: list[tuple[Path, int]]) -> list[dict]:
    rows: list[dict] = []
    for path, n in files:
        with path.open(encoding="utf-8") as fh:
            got = [json.loads(line) for line in fh]
        assert len(got) == n, path
        rows.extend(got)
    return rows


def _no_temp_files(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]


# -- retailrocket -----------------------------------------------------------------------------

def test_retailrocket_sample_maps_every_row(settings):
    files = import_sources(settings, "retailrocket", [RR_SAMPLE])
    rows = _read(files)
    assert len(rows) == 2771
    assert collections.Counter(r["event_type"] for r in rows) == {"view": 2695, "add_to_cart": 62, "purchase": 14}
    assert all(isinstance(r["ts"], int) and r["ts"] > 1_400_000_000_000 for r in rows)
    assert all("session_id" not in r for r in rows)
    assert all(set(r) <= set(EVENT_FIELDS) for r in rows)
    assert len({r["event_id"] for r in rows}) == len(rows)
    first = rows[0]
    assert first == {"event_id": derive_event_id("retailrocket", RR_SAMPLE.name, 1), "ts": 1437927001434,
                     "user_id": "79", "event_type": "view", "item_id": "450209"}
    _no_temp_files(settings.landing_events_dir)


def test_retailrocket_keeps_odd_rows_raw(settings, tmp_path):
    src = tmp_path / "events.csv"
    src.write_text("timestamp,visitorid,event,itemid,transactionid\n"
                   "1433221332117,257597,view,355908,\n"
                   "\n"
                   "1433224214164,992329,wishlist,248676,\n"
                   "not-a-time,1,transaction,7,42\n"
                   "1433221332117,2\n", encoding="utf-8")
    report = run_import(settings, "retailrocket", [src], FORCE)
    rows = _read(report.files)
    assert len(rows) == 4  # the blank line holds no row; the others all land
    assert report.skipped == {"blank lines": 1}
    assert rows[1]["event_type"] == "wishlist"  # unknown types pass through for the clean job to quarantine
    assert rows[2]["ts"] == "not-a-time" and rows[2]["event_type"] == "purchase"
    assert rows[3] == {"event_id": derive_event_id("retailrocket", "events.csv", 4), "ts": 1433221332117, "user_id": "2"}


def test_reimport_writes_new_files_with_the_same_ids(settings):
    first = import_sources(settings, "retailrocket", [RR_SAMPLE])
    second = import_sources(settings, "retailrocket", [RR_SAMPLE])
    assert {p for p, _ in first}.isdisjoint({p for p, _ in second})
    assert all(p.exists() for p, _ in first + second)
    assert _read(first) == _read(second)
    assert len(list(settings.landing_events_dir.iterdir())) == 2


# Computed with the code before event_ids() (commit 3d215e8, each reader hashing inline): landing
# zones and lakes already hold these ids, and a re-import must dedup against them.
PINNED_IDS = [
    ("retailrocket", "events.csv", 1, "retailrocket-4209f267dca60abc8218"),
    ("retailrocket", "retailrocket_sample_events.csv", 2771, "retailrocket-0ccbe8806bd3c5dc7bf2"),
    ("otto", "otto_sample_train.jsonl", "1:0", "otto-e85e29de0ace8d8fed97"),
    ("otto", "otto_sample_train.jsonl", "3:17", "otto-62486a75d7b3085aa92e"),
    ("otto", "otto_sample_train.jsonl", 7, "otto-f26953ad8701f37eb09c"),
    ("tafeng", "ta_feng_all_months_merged.csv", 1, "tafeng-ed4e1f01b0ffda26646c"),
    ("tafeng", "ta_feng_all_months_merged.csv", 817741, "tafeng-bdd1510e530d994f316a"),
    ("movielens", "u.data", 1, "movielens-be73a838b5aef0eab98a"),
    ("movielens", "ratings.csv", 20000263, "movielens-7af03d9c616a4e6a1417"),
    ("csv", "clicks.csv", 1, "csv-2831a94acb8ebf3f9064"),
    ("csv", "Bestellungen März.csv", 12, "csv-6eda2d9564866483aef4"),
]


@pytest.mark.parametrize("fmt, basename, row, expected", PINNED_IDS)
def test_event_ids_are_the_ones_existing_homes_hold(fmt, basename, row, expected):
    assert event_ids(fmt, basename)(row) == expected
    assert derive_event_id(fmt, basename, row) == expected


def test_imported_samples_carry_the_pinned_ids(settings):
    rr = _read(import_sources(settings, "retailrocket", [RR_SAMPLE]))
    assert (rr[0]["event_id"], rr[-1]["event_id"]) == ("retailrocket-299103b4455d79d53969", "retailrocket-0ccbe8806bd3c5dc7bf2")
    otto = _read(import_sources(settings, "otto", [OTTO_SAMPLE]))
    assert (otto[0]["event_id"], otto[-1]["event_id"]) == ("otto-e85e29de0ace8d8fed97", "otto-1604aedb590f5209c1c1")


def test_event_ids_depend_on_the_file_name_not_its_folder(settings, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    same_name = other / RR_SAMPLE.name
    shutil.copy(RR_SAMPLE, same_name)
    renamed = other / "renamed.csv"
    shutil.copy(RR_SAMPLE, renamed)
    a = _read(import_sources(settings, "retailrocket", [RR_SAMPLE]))
    b = _read(import_sources(settings, "retailrocket", [same_name]))
    c = _read(import_sources(settings, "retailrocket", [renamed]))
    assert [r["event_id"] for r in a] == [r["event_id"] for r in b]
    assert not {r["event_id"] for r in a} & {r["event_id"] for r in c}


def test_rows_per_file_splits_and_names_are_ordered(settings):
    files = import_sources(settings, "retailrocket", [RR_SAMPLE], ImportOptions(rows_per_file=1000))
    assert [n for _, n in files] == [1000, 1000, 771]
    names = [p.name for p, _ in files]
    assert [n[-11:] for n in names] == ["00000.jsonl", "00001.jsonl", "00002.jsonl"]
    assert len({n[:-11] for n in names}) == 1 and names[0].startswith("retailrocket-retailrocket_sample_events-")


def test_lines_match_landing_atomic_write_jsonl_bytes(settings, tmp_path):
    """The importer's fast path writes exactly what landing.atomic_write_jsonl would write."""
    files = import_sources(settings, "retailrocket", [RR_SAMPLE])
    rows = _read(files)
    ref, _ = atomic_write_jsonl(tmp_path / "ref", "ref.jsonl", rows)
    assert files[0][0].read_bytes() == ref.read_bytes()


def test_gzipped_source_is_read(settings, tmp_path):
    src = tmp_path / "events.csv.gz"
    src.write_bytes(gzip.compress(RR_SAMPLE.read_bytes()))
    rows = _read(import_sources(settings, "retailrocket", [src]))
    assert len(rows) == 2771
    assert rows[0]["event_id"] == derive_event_id("retailrocket", "events.csv", 1)


def test_bad_second_source_writes_nothing(settings, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(UserError, match="column 'timestamp' not found.*available columns: a, b, c"):
        import_sources(settings, "retailrocket", [RR_SAMPLE, bad])
    assert list(settings.landing_events_dir.iterdir()) == []


# -- otto -------------------------------------------------------------------------------------

def test_otto_sample(settings):
    rows = _read(import_sources(settings, "otto", [OTTO_SAMPLE]))
    assert len(rows) == 862
    assert {r["event_type"] for r in rows} <= {"view", "add_to_cart", "purchase"}
    assert len({r["user_id"] for r in rows}) == 20
    assert all(r["user_id"] == r["session_id"] for r in rows)
    assert all(isinstance(r["ts"], int) and isinstance(r["item_id"], str) for r in rows)
    assert len({r["event_id"] for r in rows}) == 862
    first = json.loads(OTTO_SAMPLE.read_text().splitlines()[0])
    assert rows[0]["item_id"] == str(first["events"][0]["aid"]) and rows[0]["user_id"] == str(first["session"])


def test_otto_bad_lines_land_for_quarantine(settings, tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text('{"session": 5, "events": [{"aid": 1, "ts": 1659304800025, "type": "clicks"},'
                   ' {"aid": 2, "ts": 1659304800026, "type": "orders"}, {"aid": 3, "ts": 1, "type": "likes"}, 7]}\n'
                   '{"session": 6, "events": [{"aid": 1, "ts": 1659304800025, "ty\n'
                   "\n"
                   "[1, 2]\n", encoding="utf-8")
    rows = _read(import_sources(settings, "otto", [src], FORCE))
    assert [r["event_type"] for r in rows] == ["view", "purchase", "likes", "<unparseable otto event>",
                                               "<unparseable otto line>", "<unparseable otto line>"]
    assert rows[4][RAW_SOURCE_FIELD].startswith('{"session": 6') and "user_id" not in rows[4]
    assert rows[5][RAW_SOURCE_FIELD] == "[1, 2]"
    assert len({r["event_id"] for r in rows}) == len(rows)


# -- ta-feng ----------------------------------------------------------------------------------

def _tafeng_zip(tmp_path: Path, body: list[str], member: str = "ta_feng_all_months_merged.csv",
                header: str = TAFENG_HEADER) -> Path:
    path = tmp_path / "ta_feng.csv.zip"
    text = "\r\n".join([header, *body]) + "\r\n"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, "\ufeff" + text)  # UTF-8 with a BOM, as distributed
    return path


def test_tafeng_mapping_and_unit_price(settings, tmp_path):
    src = _tafeng_zip(tmp_path, [
        '"11/1/2000","01104905","45-49","115","110411","4710199010372","2","24","30"',
        '"2/28/2001","00418683","<25","Others","120107","4710857472535","3","48","46"',
        '"1/5/2001","00000001","","","100","77","0","0","0"',
        '"13/45/2000","02","","","100","78","x","0","12"',
        '"1/6/2001","03","","","100","79","1","0","abc"',
    ])
    rows = _read(import_sources(settings, "tafeng", [src], FORCE))
    assert len(rows) == 5
    assert rows[0] == {"event_id": derive_event_id("tafeng", "ta_feng_all_months_merged.csv", 1), "ts": "2000-11-01T00:00:00",
                       "user_id": "01104905", "session_id": "01104905-2000-11-01", "event_type": "purchase",
                       "item_id": "4710199010372", "category": "110411", "price": 15.0, "quantity": 2}
    assert rows[1]["price"] == round(46 / 3, 4) and rows[1]["ts"] == "2001-02-28T00:00:00"
    assert rows[1]["user_id"] == "00418683"  # leading zeros kept
    assert rows[2]["quantity"] == 0 and "price" not in rows[2]  # AMOUNT 0: no unit price, quarantined downstream
    assert rows[3]["ts"] == "13/45/2000" and rows[3]["quantity"] == "x" and "price" not in rows[3]
    assert rows[3]["session_id"] == "02-13/45/2000"
    assert rows[4]["price"] == "abc"  # raw value passes through
    assert all(r["event_type"] == "purchase" for r in rows)


def test_tafeng_helpers():
    assert tafeng_date("11/1/2000") == ("2000-11-01T00:00:00", "2000-11-01")
    assert tafeng_date("2/30/2001") == ("2/30/2001", "2/30/2001")
    assert tafeng_unit_price(4, "10") == 2.5
    assert tafeng_unit_price(3, "100") == 33.3333
    assert tafeng_unit_price(0, "10") is None
    assert tafeng_unit_price("x", "10") is None
    assert tafeng_unit_price(-2, "-30") == 15.0


def test_tafeng_unzipped_csv_with_bom(settings, tmp_path):
    src = tmp_path / "ta_feng_all_months_merged.csv"
    src.write_text(TAFENG_HEADER + '\n"11/1/2000","0042","","","5","9","1","1","7"\n', encoding="utf-8-sig")
    rows = _read(import_sources(settings, "tafeng", [src]))
    zipped = _read(import_sources(settings, "tafeng", [_tafeng_zip(tmp_path, ['"11/1/2000","0042","","","5","9","1","1","7"'])]))
    assert rows == zipped  # same data file name inside or outside the zip: same ids
    assert rows[0]["user_id"] == "0042" and rows[0]["price"] == 7.0


def test_tafeng_bad_zip(settings, tmp_path):
    src = _tafeng_zip(tmp_path, ['"11/1/2000","1","","","5","9","1","1","7"'], member="other.csv")
    with zipfile.ZipFile(src, "a") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(UserError, match="ta_feng_all_months_merged.csv.*other.csv"):
        import_sources(settings, "tafeng", [src])
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    src = _tafeng_zip(wrong, ['"1","2"'], header='"DATE","CUSTOMER"')
    with pytest.raises(UserError, match="column 'TRANSACTION_DT' not found.*DATE, CUSTOMER"):
        import_sources(settings, "tafeng", [src])
    assert list(settings.landing_events_dir.iterdir()) == []


@pytest.mark.tafeng
def test_tafeng_full_file_reads_every_row(settings, tafeng_zip):
    files = import_sources(settings, "tafeng", [tafeng_zip])
    assert sum(n for _, n in files) == 817_741
    assert [n for _, n in files] == [500_000, 317_741]
    ids = set()
    for path, _ in files:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                ids.add(line[13:41])  # '{"event_id":"tafeng-<20 hex>"'
    assert len(ids) == 817_741
    with files[0][0].open(encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert first["ts"] == "2000-11-01T00:00:00" and first["user_id"] == "01104905" and first["price"] == 15.0


# -- movielens --------------------------------------------------------------------------------

def test_movielens_100k_and_1m(settings, tmp_path):
    u_data = tmp_path / "u.data"
    u_data.write_text("196\t242\t3\t881250949\n186\t302\t5\t891717742\n22\t377\t1\t878887116\n", encoding="utf-8")
    ratings = tmp_path / "ratings.dat"
    ratings.write_text("1::1193::5::978300760\n1::661::3::978302109\nbroken line\n", encoding="utf-8")
    a = _read(import_sources(settings, "movielens", [u_data]))
    assert a == [
        {"event_id": derive_event_id("movielens", "u.data", 1), "ts": 881250949000, "user_id": "196", "event_type": "purchase", "item_id": "242"},
        {"event_id": derive_event_id("movielens", "u.data", 2), "ts": 891717742000, "user_id": "186", "event_type": "purchase", "item_id": "302"},
        {"event_id": derive_event_id("movielens", "u.data", 3), "ts": 878887116000, "user_id": "22", "event_type": "purchase", "item_id": "377"},
    ]
    b = _read(import_sources(settings, "movielens", [ratings]))
    assert [(r.get("user_id"), r.get("item_id"), r.get("ts")) for r in b[:2]] == [("1", "1193", 978300760000), ("1", "661", 978302109000)]
    assert b[2]["event_type"] == "<unparseable movielens line>" and b[2][RAW_SOURCE_FIELD] == "broken line"


def test_movielens_recbole_atomic_file_header_is_skipped(settings, tmp_path):
    # RecBole's dataset_example/ml-100k/ml-100k.inter: u.data with a typed header line
    inter = tmp_path / "ml-100k.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n", encoding="utf-8")
    rows = _read(import_sources(settings, "movielens", [inter]))
    assert [(r["user_id"], r["item_id"], r["ts"]) for r in rows] == [("196", "242", 881250949000)]


def test_movielens_min_rating_is_counted(settings, tmp_path):
    src = tmp_path / "ratings.dat"
    src.write_text("1::10::5::978300760\n1::11::3::978300761\n2::10::4::978300762\n2::12::1::978300763\n", encoding="utf-8")
    report = run_import(settings, "movielens", [src], ImportOptions(min_rating=4.0))
    rows = _read(report.files)
    assert [r["item_id"] for r in rows] == ["10", "10"]
    assert report.skipped == {"movielens ratings below --min-rating 4": 2}
    assert rows[1]["event_id"] == derive_event_id("movielens", "ratings.dat", 3)  # ids keep the source line number


# -- events (canonical copies) ----------------------------------------------------------------

def test_events_jsonl_and_gz_are_copied_byte_for_byte(settings, tmp_path):
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text('{"event_id":"e1","ts":"2024-01-01T00:00:00Z","user_id":"u","event_type":"view","item_id":"i"}\n'
                     '\n{"ts":1704067200000,"user_id":"ü","event_type":"search","query":"café"}\n', encoding="utf-8")
    gz = tmp_path / "batch2.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes(), mtime=0))
    csv_src = tmp_path / "batch3.csv"
    csv_src.write_text('event_id,ts,user_id,event_type,item_id,query\ne9,2024-01-01T00:00:00Z,u,search,,"a, b\nc"\n',
                       encoding="utf-8")
    files = import_sources(settings, "events", [jsonl, gz, csv_src])
    assert [n for _, n in files] == [2, 2, 1]
    (p1, _), (p2, _), (p3, _) = files
    assert p1.name.startswith("events-batch-") and p1.name.endswith("-00000.jsonl")
    assert p2.name.endswith(".jsonl.gz") and p3.name.endswith(".csv")
    assert p1.read_bytes() == jsonl.read_bytes() and p2.read_bytes() == gz.read_bytes() and p3.read_bytes() == csv_src.read_bytes()
    again = import_sources(settings, "events", [jsonl])
    assert again[0][0] != p1 and again[0][0].read_bytes() == p1.read_bytes()
    _no_temp_files(settings.landing_events_dir)


@pytest.mark.parametrize("name, content, message", [
    ("batch.txt", b'{"a":1}\n', "must be named"),
    ("batch.jsonl.gz", b'{"a":1}\n', "not gzip"),
    ("batch.jsonl", gzip.compress(b'{"a":1}\n'), "holds gzip data"),
    ("batch.csv", b"", "empty"),
    ("batch.jsonl.gz", gzip.compress(b'{"a":1}\n')[:-10], "corrupt gzip"),
])
def test_events_rejects_bad_files(settings, tmp_path, name, content, message):
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(UserError, match=message):
        import_sources(settings, "events", [src])
    assert list(settings.landing_events_dir.iterdir()) == []


# -- generic csv ------------------------------------------------------------------------------

def test_generic_csv_mapping(settings, tmp_path):
    src = tmp_path / "clicks.csv"
    src.write_text("\ufeffwhen;who;what;sku;basket;cat;amount;n;q\n"
                   "01/02/2024 10:11:12;Müller;click;A-1;s1;shoes;12.50;2;\n"
                   "01/02/2024 10:12:00;Müller;buy;A-1;s1;shoes;12.5;1;\n"
                   "yesterday;Ana;find;;s2;;;;café au lait\n"
                   "01/02/2024 10:13:00;Bo;share;B-2;;;-1;1.5;\n", encoding="utf-8")
    args = ImportOptions(user_col="who", ts_col="when", event_col="what", item_col="sku", session_col="basket",
                         category_col="cat", price_col="amount", quantity_col="n", query_col="q",
                         event_map="click=view, buy=purchase,find=search", ts_format="%d/%m/%Y %H:%M:%S", delimiter=";")
    rows = _read(import_sources(settings, "csv", [src], args))
    assert rows[0] == {"event_id": derive_event_id("csv", "clicks.csv", 1), "ts": "2024-02-01T10:11:12", "user_id": "Müller",
                       "session_id": "s1", "event_type": "view", "item_id": "A-1", "category": "shoes", "price": 12.5, "quantity": 2}
    assert rows[1]["event_type"] == "purchase"
    assert rows[2] == {"event_id": derive_event_id("csv", "clicks.csv", 3), "ts": "yesterday", "user_id": "Ana",
                       "session_id": "s2", "event_type": "search", "query": "café au lait"}
    assert rows[3]["event_type"] == "share" and rows[3]["price"] == -1.0 and rows[3]["quantity"] == 1.5


def test_generic_csv_default_event_event_id_and_epoch(settings, tmp_path):
    src = tmp_path / "orders.tsv"
    src.write_text("id\tuser\tt\titem\nX1\t7\t1704067200000\t9\n\t8\t1704067201000\t10\n", encoding="utf-8")
    args = ImportOptions(user_col="user", ts_col="t", item_col="item", default_event="purchase", event_id_col="id",
                         delimiter="\\t")  # the two characters backslash-t, as typed on a command line
    rows = _read(import_sources(settings, "csv", [src], args))
    assert rows[0] == {"event_id": "X1", "ts": 1704067200000, "user_id": "7", "event_type": "purchase", "item_id": "9"}
    assert rows[1]["event_id"] == derive_event_id("csv", "orders.tsv", 2)


@pytest.mark.parametrize("extra, message", [
    (dict(user_col="who", ts_col="when", event_col="nope"), "column 'nope' not found.*available columns: who, when, what"),
    (dict(ts_col="when", event_col="what"), "--user-col"),
    (dict(user_col="who", event_col="what"), "--ts-col"),
    (dict(user_col="who", ts_col="when"), "--event-col or --default-event"),
    (dict(user_col="who", ts_col="when", default_event="click"), "not an event type"),
    (dict(user_col="who", ts_col="when", event_col="what", event_map="click"), "--event-map"),
    (dict(user_col="who", ts_col="when", event_col="what", delimiter=";;"), "--delimiter"),
])
def test_generic_csv_errors(settings, tmp_path, extra, message):
    src = tmp_path / "x.csv"
    src.write_text("who,when,what\n1,2,view\n", encoding="utf-8")
    with pytest.raises(UserError, match=message) as info:
        import_sources(settings, "csv", [src], ImportOptions(**extra))
    assert "\n" not in str(info.value)


# -- options ----------------------------------------------------------------------------------

def test_import_options_are_the_commands_flags_with_its_defaults():
    args = vars(build_parser().parse_args(["import", "csv", "placeholder"]))
    names = {f.name for f in dataclasses.fields(ImportOptions)}
    assert names == set(args) - {"command", "format", "sources"}
    assert ImportOptions(**{name: args[name] for name in names}) == ImportOptions()


# -- source errors ----------------------------------------------------------------------------

def test_source_errors(settings, tmp_path):
    with pytest.raises(UserError, match="not found"):
        import_sources(settings, "otto", [tmp_path / "missing.jsonl"])
    with pytest.raises(UserError, match="directory"):
        import_sources(settings, "otto", [tmp_path])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        import_sources(settings, "retailrocket", [empty])
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    with pytest.raises(UserError, match="empty file, no header"):
        import_sources(settings, "retailrocket", [blank])
    # a file with a header and no rows imports nothing, without error
    header_only = tmp_path / "header.csv"
    header_only.write_text("timestamp,visitorid,event,itemid,transactionid\n")
    assert import_sources(settings, "retailrocket", [header_only]) == []

"""The event rules of docs/events.md in plain Python: one row in, a verdict out.

Spark's ``parse_raw`` (jobs/clean.py) is the engine of ``clean``; this is its twin for code
that judges rows one at a time without Spark (``freshrec import``'s up-front check, and later
the event API). Both give the same verdicts with the same reason codes and messages:
tests/integration/test_rules_parity.py runs one corpus through both. The casts below copy
Spark's (``trim`` strips spaces only, a number's text is Spark's text of the variant, a string
timestamp is read the way ``cast(... as timestamp)`` reads it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from freshrec.fileio import json_line
from freshrec.schemas import EVENT_FIELDS, EVENT_TYPES, ID_FIELDS, ITEM_EVENT_TYPES

#: every reason code, in the order a row's reasons are listed
REASON_CODES = (
    "malformed_json", "not_an_object", "invalid_id_type", "invalid_id_chars", "id_too_long", "missing_user_id", "missing_event_type",
    "unknown_event_type", "missing_ts", "invalid_ts", "ts_out_of_range", "future_ts", "missing_item_id",
    "missing_query", "invalid_price", "invalid_quantity",
)
MALFORMED_JSON = "malformed_json: line is not valid JSON (truncated or corrupt)"
NOT_AN_OBJECT = "not_an_object: each line must be a JSON object"
INVALID_TS = "' is not an ISO-8601 timestamp or epoch milliseconds, or names an impossible date"
TYPE_LIST = ", ".join(EVENT_TYPES)
# A JSON id may be a string or an integer; anything else (bool, float, object, array) is a type error.
# A JSON null (VOID) is an absent id, as an empty one is: producers that write every key send it.
ID_TYPES_OK = ("STRING", "BIGINT", "INT", "SMALLINT", "TINYINT", "VOID")
_MAX_INT = 2_147_483_647
#: characters no id may hold: C0 and C1 control characters and DEL (a NUL breaks PostgreSQL)
CONTROL_CHARS = "[\\x00-\\x1f\\x7f-\\x9f]"
_CONTROL = re.compile(CONTROL_CHARS)
DEFAULT_MAX_ID_LENGTH = 256


def pseudonym(user_id: str, key: bytes) -> str:
    """The keyed hash a user id is replaced by at ingest when FRESHREC_PSEUDONYMISE is on:
    ``p-`` and the first 32 hex digits of HMAC-SHA256(key, the id's UTF-8 bytes). jobs/clean.py
    computes the same in Spark (``pseudonym_column``)."""
    return "p-" + hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def id_problems(name: str, value: str, max_id_length: int = DEFAULT_MAX_ID_LENGTH) -> list[str]:
    """Why an id (as text, trimmed) is not acceptable, each as ``code: message``; empty when it
    is. The clean job (jobs/clean.py) and the HTTP API apply the same two rules."""
    problems = []
    if _CONTROL.search(value):
        problems.append(f"invalid_id_chars: {name} holds a control character")
    if len(value) > max_id_length:
        problems.append(f"id_too_long: {name} is longer than {max_id_length} characters, got {len(value)}")
    return problems

# Python's json writes bare NaN/Infinity; quoted, such a row parses and the price rule explains it
BARE_CONSTANT = r'(:\s*)(-?Infinity|NaN)(\s*[,}])'
_BARE_CONSTANT = re.compile(BARE_CONSTANT)
_EPOCH = re.compile(r"^-?\d+(\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DOUBLE = re.compile(r"^[+-]?(NaN|Infinity|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[fFdD]?)$")
_DOUBLE_SPECIAL = {"inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf,
                   "-inf": -math.inf, "-infinity": -math.inf, "nan": math.nan}
# a zone may follow the seconds only: Spark reads "10:00:00Z" but not "10:00Z"
_TIMESTAMP = re.compile(r"^([+-]?\d{4,6})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2})(?::(\d{1,2})(?::(\d{1,2})"
                        r"(?:\.(\d*))?(.*))?)?)?)?)?$")
_OFFSET = re.compile(r"^(?:Z|(?:UTC|GMT|UT)?([+-])(\d{1,2})(?::?(\d{2}))?(?::?(\d{2}))?|UTC|GMT|UT)$")
_EPOCH_START = datetime(1970, 1, 1, tzinfo=timezone.utc)


class _Malformed(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Malformed(name)  # Spark's JSON parser has no bare NaN/Infinity


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Malformed("duplicate key")  # Spark's parse_json refuses duplicate keys
    return obj


class _Num(float):
    """A JSON number with a fraction or an exponent, keeping its text: Spark stores it as a
    decimal (fraction only, up to 38 digits) or a double, and each has its own text."""

    text: str

    def __new__(cls, text: str) -> "_Num":
        num = super().__new__(cls, text)
        num.text = text
        return num


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_Num)


def parse_line(line: str) -> Any:
    """A landing line as Spark's ``try_parse_json`` reads it (bare NaN/Infinity values quoted
    first, as parse_raw does; what follows the first JSON value is ignored, as Spark does);
    raises ValueError for what Spark reads as null."""
    if "NaN" in line or "Infinity" in line:
        line = _BARE_CONSTANT.sub(r'\1"\2"\3', line)
    try:
        return _DECODER.raw_decode(line.lstrip(" \t\r\n"))[0]
    except (_Malformed, ValueError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


# -- values as Spark sees them -------------------------------------------------------------

def _decimal(value: Any) -> Decimal | None:
    """The decimal Spark keeps a JSON number as (trailing zeros dropped), else None (a long or
    a double)."""
    if isinstance(value, _Num):
        if "e" in value.text.lower():
            return None
        number = Decimal(value.text).normalize()
    elif isinstance(value, int) and not -2**63 <= value < 2**63:
        number = Decimal(value)
    else:
        return None
    return number if _precision_scale(number)[0] <= 38 else None


def _precision_scale(number: Decimal) -> tuple[int, int]:
    digits, exponent = len(number.as_tuple().digits), int(number.as_tuple().exponent)
    scale = max(-exponent, 0)
    return max(digits + max(exponent, 0), scale), scale


def _decimal_type(number: Decimal) -> str:
    return "DECIMAL({},{})".format(*_precision_scale(number))


def _java_double(value: float) -> str:
    """Java's ``Double.toString``: plain from 1e-3 to 1e7, else d.dddE[-]n."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        text = repr(float(value))
        return text if "e" not in text else f"{Decimal(text):f}"
    sign, digits, exp = Decimal(repr(float(value))).as_tuple()
    mantissa = "".join(map(str, digits)).rstrip("0") or "0"
    power = exp + len(digits) - 1
    return f"{'-' if sign else ''}{mantissa[0]}.{mantissa[1:] or '0'}E{power}"


def _text(value: Any) -> str | None:
    """``variant_get(v, '$.name', 'string')``: a string as it is, a number's or a boolean's
    text, an object or array as compact JSON, null as null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and -2**63 <= value < 2**63:
        return str(value)
    if isinstance(value, (int, float)):
        number = _decimal(value)
        return f"{number:f}" if number is not None else _java_double(float(value))
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _type_name(value: Any) -> str:
    """``schema_of_variant`` of a JSON value."""
    if value is None:
        return "VOID"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, (int, float)):
        if isinstance(value, int) and -2**63 <= value < 2**63:
            return "BIGINT"
        number = _decimal(value)
        return _decimal_type(number) if number is not None else "DOUBLE"
    if isinstance(value, list):
        inner = {_type_name(v) for v in value}
        return f"ARRAY<{inner.pop() if len(inner) == 1 else 'VARIANT'}>"
    return "OBJECT<" + ", ".join(f"{k}: {_type_name(value[k])}" for k in sorted(value)) + ">"


def _blank(text: str | None, trim: bool = True) -> str | None:
    if text is None:
        return None
    text = text.strip(" ") if trim else text
    return text or None


def _to_double(text: str) -> float | None:
    """``try_cast(text as double)``."""
    s = text.strip()
    if s.lower() in _DOUBLE_SPECIAL:
        return _DOUBLE_SPECIAL[s.lower()]
    if not _DOUBLE.match(s):
        return None
    return float(s.rstrip("fFdD"))


def _to_decimal(text: str, places: int) -> Decimal | None:
    """``try_cast(text as decimal(38, places))``: rounded half up; null past 38 digits."""
    s = text.strip()
    if not _NUMBER.match(s):
        return None
    try:
        value = Decimal(s).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        return None
    return value if len(value.as_tuple().digits) <= 38 else None


def _zone(text: str) -> timezone | ZoneInfo | None:
    text = text.strip()
    if not text:
        return timezone.utc
    match = _OFFSET.match(text)
    if match:
        if not match[1]:
            return timezone.utc
        hours, minutes, seconds = int(match[2]), int(match[3] or 0), int(match[4] or 0)
        if hours > 18 or minutes > 59 or seconds > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes, seconds=seconds)
        return timezone(-offset if match[1] == "-" else offset)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _iso_timestamp(text: str) -> datetime | None:
    """``try_cast(text as timestamp)`` in a UTC session."""
    match = _TIMESTAMP.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, rest = match.groups()
    zone = _zone(rest or "")
    if zone is None:
        return None
    try:
        micros = int((fraction or "")[:6].ljust(6, "0"))
        local = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                         int(second or 0), micros, tzinfo=zone)
    except (ValueError, OverflowError):
        return None
    return local.astimezone(timezone.utc)


def parse_ts(text: str) -> datetime | None:
    """A trimmed ``ts`` as parse_raw reads it: digits are epoch milliseconds (rounded to
    3 places, then truncated), anything else a Spark timestamp string; None when unreadable."""
    if _EPOCH.match(text):
        millis = _to_decimal(text, 3)
        if millis is None:
            return None
        try:
            return _EPOCH_START + timedelta(milliseconds=int(millis))
        except OverflowError:
            return None
    return _iso_timestamp(text)


def spark_ts_text(ts: datetime) -> str:
    """``cast(ts as string)`` in a UTC session: no zone, fraction without trailing zeros."""
    ts = ts.astimezone(timezone.utc)
    text = f"{ts.year:04d}-{ts:%m-%d %H:%M:%S}"
    return text + ("." + f"{ts.microsecond:06d}".rstrip("0") if ts.microsecond else "")


# -- the rules ------------------------------------------------------------------------------

def _fields(obj: dict[str, Any]) -> dict[str, str | None]:
    """Every canonical field as text: trimmed and empty as absent (numbers untrimmed)."""
    return {name: _blank(_text(obj.get(name)), trim=name not in ("price", "quantity")) for name in EVENT_FIELDS}


def _checks(obj: dict[str, Any], s: dict[str, str | None], ts: datetime | None, bounds: tuple[datetime, datetime],
            min_event_ts: str, skew_hours: float, max_id_length: int) -> list[str]:
    """The reasons a parsed object breaks the rules, in parse_raw's order."""
    event_type = s["event_type"].lower() if s["event_type"] is not None else None
    reasons = [f"invalid_id_type: {name} must be a string or an integer, got {_type_name(obj[name])}"
               for name in ID_FIELDS if name in obj and _type_name(obj[name]) not in ID_TYPES_OK]
    problems = [p for name in ID_FIELDS if s[name] is not None for p in id_problems(name, s[name], max_id_length)]
    reasons += sorted(problems, key=lambda p: not p.startswith("invalid_id_chars"))  # parse_raw's order: by rule, then field
    if s["user_id"] is None:
        reasons.append("missing_user_id: user_id is required")
    if s["event_type"] is None:
        reasons.append("missing_event_type: event_type is required")
    elif event_type not in EVENT_TYPES:
        reasons.append(f"unknown_event_type: '{s['event_type']}' is not one of {TYPE_LIST}")
    if s["ts"] is None:
        reasons.append("missing_ts: ts is required")
    elif ts is None:
        reasons.append(f"invalid_ts: '{s['ts']}{INVALID_TS}")
    elif ts < bounds[0]:
        reasons.append(f"ts_out_of_range: {min_event_ts} is the earliest accepted time, got {spark_ts_text(ts)}")
    elif ts > bounds[1]:
        reasons.append(f"future_ts: more than {skew_hours:g}h after processing time, got {spark_ts_text(ts)}")
    if event_type in ITEM_EVENT_TYPES and s["item_id"] is None:
        reasons.append(f"missing_item_id: item_id is required for {event_type} events")
    if event_type == "search" and s["query"] is None:
        reasons.append("missing_query: search events need a query")
    price = _to_double(s["price"]) if s["price"] is not None else None
    if s["price"] is not None and (price is None or not math.isfinite(price) or price < 0):
        reasons.append(f"invalid_price: price must be a finite number >= 0, got {s['price']}")
    qty = _to_decimal(s["quantity"], 6) if s["quantity"] is not None else None
    if s["quantity"] is not None and (qty is None or qty != qty.to_integral_value() or not 1 <= qty <= _MAX_INT):
        reasons.append(f"invalid_quantity: quantity must be an integer >= 1, got {s['quantity']}")
    return reasons


def derived_event_id(ts: datetime, s: dict[str, str | None]) -> str:
    """The id of an event without one: parse_raw's hash of its normalised content."""
    micros = (ts - _EPOCH_START) // timedelta(microseconds=1)
    parts = [str(micros), s["user_id"], s["session_id"], s["event_type"].lower(), s["item_id"],
             s["query"].lower() if s["query"] is not None else None]
    return "d-" + hashlib.sha256("\u0001".join(p for p in parts if p is not None).encode("utf-8")).hexdigest()[:32]


def _clean_row(s: dict[str, str | None], ts: datetime, pseudonym_key: bytes | None) -> dict[str, Any]:
    event_type = s["event_type"].lower()
    search = event_type == "search"
    user_id = pseudonym(s["user_id"], pseudonym_key) if pseudonym_key else s["user_id"]
    return {
        "event_id": s["event_id"] or derived_event_id(ts, s), "ts": ts, "user_id": user_id,
        "session_id": s["session_id"], "event_type": event_type, "item_id": None if search else s["item_id"],
        "query": s["query"].lower() if search else None, "category": s["category"],
        "price": _to_double(s["price"]) if s["price"] is not None else None,
        "quantity": int(_to_decimal(s["quantity"], 6)) if s["quantity"] is not None else None,
        "recommendation_id": s["recommendation_id"],
    }


def validate_row(row: str | Mapping[str, Any], now: datetime, min_event_ts: str = "1990-01-01T00:00:00Z",
                 max_future_skew_hours: float = 24.0,
                 max_id_length: int = DEFAULT_MAX_ID_LENGTH,
                 pseudonym_key: bytes | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """Judge one landing row (its JSON text, or a row as an importer writes it) as ``clean``
    does: ``(clean row, [])`` for a valid row, else ``(None, reasons)``, each reason
    ``code: message`` (docs/events.md#quarantine). ``now`` is the processing time; with a
    ``pseudonym_key`` the clean row's user_id is its :func:`pseudonym`."""
    # A row is judged as the line it lands as: Spark types a number by its JSON text.
    line = row if isinstance(row, str) else json_line(row)
    try:
        obj = parse_line(line)
    except ValueError:
        return None, [MALFORMED_JSON]
    if not line.lstrip(" ").startswith("{") or not isinstance(obj, dict):
        return None, [NOT_AN_OBJECT]
    s = _fields(obj)
    ts = parse_ts(s["ts"]) if s["ts"] is not None else None
    now = now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)
    low = _iso_timestamp(min_event_ts) or _EPOCH_START
    high = now + timedelta(seconds=int(max_future_skew_hours * 3600))
    reasons = _checks(obj, s, ts, (low, high), min_event_ts, max_future_skew_hours, max_id_length)
    return (None, reasons) if reasons else (_clean_row(s, ts, pseudonym_key), [])


def reason_codes(reasons: list[str]) -> list[str]:
    """The codes of a row's reasons (the text before each colon)."""
    return [r.split(":", 1)[0] for r in reasons]

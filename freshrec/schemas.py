"""The canonical event log and the tables derived from it (docs/events.md is the contract)."""

from __future__ import annotations

EVENT_TYPES = ("view", "add_to_cart", "remove_from_cart", "purchase", "search")

# Canonical fields in the order importers write them.
EVENT_FIELDS = (
    "event_id", "ts", "user_id", "session_id", "event_type",
    "item_id", "query", "category", "price", "quantity", "recommendation_id",
)
REQUIRED_FIELDS = ("ts", "user_id", "event_type")
# Events about an item: they carry an item_id; searches carry a query instead.
ITEM_EVENT_TYPES = tuple(t for t in EVENT_TYPES if t != "search")
ID_FIELDS = ("event_id", "user_id", "session_id", "item_id", "recommendation_id")

ITEM_FIELDS = ("item_id", "category", "price", "available")

# Columns of lake/events (Parquet, partitioned by event_date).
# recommendation_id: the served list that led to the event (attribution), null for most events;
# lake files written before it existed lack the column (read the lake with mergeSchema to see it).
CLEAN_EVENT_COLUMNS = (
    "event_id", "ts", "user_id", "session_id", "event_type", "item_id", "query",
    "category", "price", "quantity", "recommendation_id", "source_file", "event_date",
)
# Columns of lake/quarantine.
QUARANTINE_COLUMNS = ("source_file", "raw", "reason", "batch_id")

LANDING_SUFFIXES = (".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz")

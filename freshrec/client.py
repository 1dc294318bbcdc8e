"""Python read client: the published lists in the shapes the HTTP API returns (docs/api.md, docs/serving.md).

    client = RecsClient(settings.serving)          # or RecsClient(store)
    client.recs("42", n=10)
    # {"user_id": "42", "version": "...", "source": "personal" | "fallback", "updated_at": "...",
    #  "experiment": None, "variant": None, "recommendation_id": "r-...",
    #  "items": [{"item_id": "9", "score": 0.87, "category": "shoes", "price": 59.9}, ...]}

Every answer carries a new ``recommendation_id`` (``freshrec.impressions``); a client built with
``impressions=`` (the API's is) logs each answer as an impression. A user's answer also carries
``experiment`` and ``variant``: null, unless an experiment runs (``freshrec.experiments``) and
the user is in its traffic; then they get their variant's list, or both variants' lists
interleaved (``variant`` ``interleaved``, and each item carries its ``team``).

A user, item, category or query the live version does not know gets the overall popular list
with ``source: "fallback"``, never an error. Only "nothing is live yet" raises
(:class:`~freshrec.serving.NothingPublished`), and a key no event could have carried (a control
character, an id over ``max_id_length`` characters: the clean job's own rules) raises
:class:`~freshrec.serving.ServingError` before any store is asked (the API's 400). Each item carries its ``category`` and ``price``
(null when unknown); ``details=False`` leaves them out and saves a read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from freshrec.jobs.rules import DEFAULT_MAX_ID_LENGTH, id_problems
from freshrec.serving import ServingStore, open_store
from freshrec.serving.base import ServingError, normalise_query

if TYPE_CHECKING:
    from freshrec.settings import Settings

MAX_QUERY_LENGTH = 1000


class RecsClient:
    def __init__(self, store_or_url: ServingStore | str, max_id_length: int = DEFAULT_MAX_ID_LENGTH,
                 user_key: Callable[[str], str] | None = None,
                 impressions: Callable[[dict[str, Any]], None] | None = None, experiments: Any = None) -> None:
        self._owns_store = isinstance(store_or_url, str)
        self.store = open_store(store_or_url) if isinstance(store_or_url, str) else store_or_url
        self.max_id_length = max_id_length
        self.user_key = user_key  # how a clear user id is stored (FRESHREC_PSEUDONYMISE), or None
        self.impressions = impressions  # where each served list is logged (freshrec.impressions), or None
        self.experiments = experiments  # the running experiment (freshrec.experiments.ExperimentRouter), or None

    @classmethod
    def for_settings(cls, settings: "Settings", store: ServingStore | None = None,
                     impressions: Callable[[dict[str, Any]], None] | None = None) -> "RecsClient":
        """A client with the settings' id rules and, when ids are pseudonymised, their key, which
        serves the running experiment of the settings' state DB; ``impressions`` (an
        :class:`~freshrec.impressions.ImpressionLog`) logs every list served."""
        from freshrec.experiments import ExperimentRouter

        return cls(store if store is not None else settings.serving, settings.max_id_length,
                   settings.user_key if settings.pseudonymise else None, impressions, ExperimentRouter(settings))

    def _served(self, result: dict[str, Any], kind: str, key: str | None,
                recommendation_id: str | None = None) -> dict[str, Any]:
        """``result`` with a new recommendation_id (before its items), logged as an impression."""
        from freshrec.impressions import impression, new_recommendation_id

        items = result.pop("items")
        result["recommendation_id"] = recommendation_id or new_recommendation_id()
        result["items"] = items
        if self.impressions is not None:
            self.impressions(impression(result, kind, key))
        return result

    def _in_experiment(self, user_id: str, key: str, n: int, details: bool) -> dict[str, Any] | None:
        """The answer of a user in the running experiment's traffic, or None (outside it, no
        experiment, or a user the variants' versions do not list: the live version answers)."""
        from freshrec.experiment_stats import team_draft
        from freshrec.experiments import INTERLEAVED
        from freshrec.impressions import new_recommendation_id
        from freshrec.serving.base import VersionError

        exp = self.experiments.current() if self.experiments is not None else None
        variant = exp.variant_of(key) if exp is not None else None
        if variant is None:
            return None
        names = list(exp.variants) if variant == INTERLEAVED else [variant]
        try:
            found = [self.store.get_user_recs(key, n, version=exp.versions[name], details=details) for name in names]
        except VersionError:  # a variant's version went away (the experiment was stopped and pruned)
            return None
        if any(f is None for f in found):
            return None
        recommendation_id = new_recommendation_id()
        if variant == INTERLEAVED:
            by_item = [{i["item_id"]: i for i in f["items"]} for f in found]
            drafted = team_draft([i["item_id"] for i in found[0]["items"]], [i["item_id"] for i in found[1]["items"]], n,
                                 f"{exp.salt}:{recommendation_id}", teams=(names[0], names[1]))
            items = [{**by_item[names.index(team)][item], "team": team} for item, team in drafted]
            first = found[0]
        else:
            first = found[0]
            items = first["items"]
        result = {"user_id": str(user_id), "version": first["version"], "source": "personal",
                  "updated_at": first["updated_at"], "experiment": exp.name, "variant": variant, "items": items}
        return self._served(result, "user", key, recommendation_id)

    def _check(self, name: str, value: str | None, limit: int | None = None) -> None:
        if value is None:
            return
        problems = id_problems(name, str(value), limit or self.max_id_length)
        if problems:
            raise ServingError(problems[0].split(": ", 1)[1])

    def _fallback(self, n: int, details: bool) -> tuple[str | None, str | None, list[dict[str, Any]]]:
        popular = self.store.get_popular(None, n, details=details)
        if popular is None:  # a version committed without an overall list (require_popular=False)
            return self.store.live_version(), None, []
        return popular["version"], popular["updated_at"], popular["items"]

    def recs(self, user_id: str, n: int = 10, *, details: bool = True) -> dict[str, Any]:
        self._check("user_id", user_id)
        key = self.user_key(user_id) if self.user_key else str(user_id)
        in_experiment = self._in_experiment(user_id, key, n, details)
        if in_experiment is not None:
            return in_experiment
        found = self.store.get_user_recs(key, n, details=details)
        if found is not None:  # the id as the caller knows it; in no experiment
            return self._served({**found, "user_id": str(user_id), "experiment": None, "variant": None}, "user", key)
        version, updated_at, items = self._fallback(n, details)
        return self._served({"user_id": str(user_id), "version": version, "source": "fallback", "updated_at": updated_at,
                             "experiment": None, "variant": None, "items": items}, "user", key)

    def _or_fallback(self, key_name: str, found: dict[str, Any] | None, source: str, fallback_key: Any,
                     n: int, details: bool, kind: str) -> dict[str, Any]:
        """A keyed list in the recs shape, or the overall popular list marked ``fallback``."""
        if found is not None:
            result = {key_name: found[key_name], "version": found["version"], "source": source,
                      "updated_at": found["updated_at"], "items": found["items"]}
        else:
            version, updated_at, items = self._fallback(n, details)
            result = {key_name: fallback_key, "version": version, "source": "fallback", "updated_at": updated_at, "items": items}
        return self._served(result, kind, result[key_name])

    def similar(self, item_id: str, n: int = 10, *, details: bool = True) -> dict[str, Any]:
        self._check("item_id", item_id)
        found = self.store.get_similar(item_id, n, details=details)
        return self._or_fallback("item_id", found, "similar", str(item_id), n, details, "similar")

    def popular(self, category: str | None = None, n: int = 10, *, details: bool = True) -> dict[str, Any]:
        self._check("category", category)
        found = self.store.get_popular(category, n, details=details)
        return self._or_fallback("category", found, "popular", category or None, n, details, "popular")

    def query_items(self, query: str, n: int = 10, *, details: bool = True) -> dict[str, Any]:
        self._check("query", query, MAX_QUERY_LENGTH)
        found = self.store.get_query_items(query, n, details=details)
        return self._or_fallback("query", found, "query", normalise_query(query), n, details, "query")

    def status(self) -> dict[str, Any]:
        """``{"live_version", "store", "created_at", "committed_at", "live_at", "meta", "counts", "versions"}``;
        ``live_version`` is None before the first publish (no error)."""
        status = self.store.status()
        status["versions"] = [{k: r[k] for k in ("version", "state", "created_at", "committed_at", "counts")}
                              for r in self.store.versions()]
        return status

    @staticmethod
    def send_events(events: Any, *, url: str, api_key: str | None = None, batch_size: int = 1000) -> dict[str, Any]:
        """POST ``events`` (dicts or JSON texts) to the event API of the ``freshrec serve`` at
        ``url``, in batches: ``{"sent", "accepted", "duplicates", "rejected": [...]}``
        (``freshrec.sender.send_events``). The server, not this client's store, takes them: they
        reach the lake through the landing zone, and the sender's list in about a second."""
        from freshrec.sender import send_events

        return send_events(url, events, api_key=api_key, batch_size=batch_size)

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "RecsClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _price(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_list(title: str, result: dict[str, Any]) -> str:
    """A compact human view of one result (the CLI without --json): rank, item, score, and the
    category and price when the items carry details ("-" where unknown)."""
    head = f"{title}  version {result.get('version') or '-'}  source {result.get('source') or '-'}"
    if result.get("updated_at"):
        head += f"  updated {result['updated_at']}"
    lines = [head]
    items = result.get("items") or []
    width = max((len(str(i["item_id"])) for i in items), default=0)
    cat_width = max((len(str(i.get("category") or "-")) for i in items), default=0)
    for rank, item in enumerate(items, 1):
        line = f"{rank:>4}  {str(item['item_id']):<{width}}  {item['score']:<10.6g}"
        if "category" in item:
            line += f"  {str(item['category'] or '-'):<{cat_width}}  {_price(item.get('price')):>9}"
        lines.append(line.rstrip())
    if not items:
        lines.append("   (empty)")
    return "\n".join(lines)

"""Subscriptions as code: exactly one athenahealth Subscription per configured topic and practice.

``athena-pipeline subscriptions ensure`` reads ``ATHENA_EVENT_TOPICS`` (families such as
``Appointment`` expand to all their topics), ``WEBHOOK_URL`` and ``WEBHOOK_SECRET``, lists what
the client already has and converges, idempotently:

- a topic with one healthy Subscription (``active``/``requested``) to our endpoint is **kept**;
- a topic without one gets one **created** (``X-Hub-Secret`` = the first ``WEBHOOK_SECRET``);
- a topic whose Subscriptions point elsewhere (the endpoint changed), are in ``error``/``off`` or
  are duplicates is **replaced**: the new one is created first, then the old ones are deleted, so
  no change is missed in between;
- a Subscription to our endpoint for a topic no longer configured is **deleted**.

Re-running changes nothing. ``replace=True`` (``ensure --replace``) recreates every one: the way
to register a rotated secret, which athena never returns and so cannot be compared.

Why POSTs are not retried: athena has no idempotency keys (§5), so a blind retry after a timeout
could create a second Subscription. ``ensure`` is the retry: run it again and duplicates are
removed. Calls go through the shared :class:`~athena_pipeline.athena.client.AthenaClient` (token
cache, rate limit, call log) with the three subscription scopes athena's operations team grants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from athena_pipeline.athena.client import FHIR_JSON, AthenaClient
from athena_pipeline.events.signature import SECRET_HEADER
from athena_pipeline.events.topics import expand_topics, practice_filter, topic_from_url, topic_url
from athena_pipeline.http import RetryPolicy

#: OAuth scopes for Event Subscriptions (granted by athenahealth operations, spec §1.2).
SUBSCRIPTION_SCOPES = "system/SubscriptionTopic.read system/Subscription.read system/Subscription.write"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
HEALTHY = ("active", "requested")
_NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class RemoteSubscription:
    """A Subscription as athenahealth reports it (never with its secret)."""

    id: str
    topic: str | None
    practice_id: str | None
    endpoint: str | None
    status: str | None
    end: str | None = None

    @classmethod
    def from_resource(cls, res: dict) -> RemoteSubscription:
        channel = res.get("channel") if isinstance(res.get("channel"), dict) else {}
        criteria = res.get("criteria") if isinstance(res.get("criteria"), str) else ""
        practice = None
        for ext in (res.get("_criteria") or {}).get("extension") or []:
            value = ext.get("valueString") if isinstance(ext, dict) else None
            if isinstance(value, str) and "Practice-" in value:
                practice = value.rsplit("Practice-", 1)[1].strip()
        return cls(id=str(res.get("id")), topic=topic_from_url(criteria), practice_id=practice,
                   endpoint=channel.get("endpoint"), status=res.get("status"), end=res.get("end"))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EnsureResult:
    """What ``ensure`` did, topic by topic."""

    created: list[RemoteSubscription] = field(default_factory=list)
    kept: list[RemoteSubscription] = field(default_factory=list)
    replaced: list[RemoteSubscription] = field(default_factory=list)  # the old ones, now deleted
    deleted: list[RemoteSubscription] = field(default_factory=list)  # no longer configured

    @property
    def changed(self) -> bool:
        return bool(self.created or self.replaced or self.deleted)

    def summary(self) -> dict[str, int]:
        return {"created": len(self.created), "kept": len(self.kept),
                "replaced": len(self.replaced), "deleted": len(self.deleted)}


def subscription_resource(topic: str, endpoint: str, practice_id: str | int, *,
                          topic_base: str, end: str | None = None,
                          reason: str = "athena-pipeline event sync") -> dict:
    """The Subscription athena expects (§3.1): rest-hook, id-only, one topic, one practice."""
    res: dict[str, Any] = {
        "resourceType": "Subscription", "status": "requested", "reason": reason,
        "meta": {"profile": [f"{BACKPORT}/backport-subscription"]},
        "criteria": topic_url(topic, topic_base),
        "_criteria": {"extension": [{"url": f"{BACKPORT}/backport-filter-criteria",
                                     "valueString": practice_filter(practice_id)}]},
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": FHIR_JSON,
                    "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content",
                                                "valueCode": "id-only"}]}},
    }
    if end:
        res["end"] = end
    return res


class SubscriptionManager:
    """List, create, delete and converge Subscriptions for one practice through an AthenaClient."""

    def __init__(self, client: AthenaClient, practice_id: str | int, *,
                 topic_base: str | None = None) -> None:
        self.client = client
        self.practice_id = str(practice_id)
        self.topic_base = topic_base or client.fhir_base_url
        self._template = f"{client.fhir_path}/Subscription"

    def topics(self) -> list[str]:
        """Topic ids the server offers (``GET /SubscriptionTopic``)."""
        return [str(r.get("id")) for r in self.client.fhir_search("SubscriptionTopic")]

    def list(self) -> list[RemoteSubscription]:
        """This client's Subscriptions for our practice."""
        subs = [RemoteSubscription.from_resource(r) for r in self.client.fhir_search("Subscription")]
        return [s for s in subs if s.practice_id in (None, self.practice_id)]

    def create(self, topic: str, endpoint: str, secret: str | None, *, end: str | None = None
               ) -> RemoteSubscription:
        headers = {"Accept": FHIR_JSON}
        if secret:
            headers[SECRET_HEADER] = secret
        body = subscription_resource(topic, endpoint, self.practice_id, topic_base=self.topic_base,
                                     end=end)
        response = self.client.request("POST", self.client.fhir_url("Subscription"),
                                       path_template=self._template, json=body, headers=headers,
                                       retry=_NO_RETRY)
        created = RemoteSubscription.from_resource(response.json())
        return created if created.topic else RemoteSubscription(
            created.id, topic, self.practice_id, endpoint, created.status, end)

    def delete(self, sub_id: str) -> None:
        """Delete one Subscription; one that is already gone (404) counts as deleted."""
        self.client.request("DELETE", self.client.fhir_url(f"Subscription/{sub_id}"),
                            path_template=f"{self._template}/{{id}}",
                            accept=lambda r: r.is_success or r.status_code == 404)

    def ensure(self, topics: Sequence[str], endpoint: str, secret: str | None, *,
               replace: bool = False, end: str | None = None) -> EnsureResult:
        """Converge to one healthy Subscription per topic (see the module docstring)."""
        wanted = expand_topics(topics)
        result = EnsureResult()
        existing = self.list()
        by_topic: dict[str | None, list[RemoteSubscription]] = {}
        for sub in existing:
            by_topic.setdefault(sub.topic, []).append(sub)
        for topic in wanted:
            mine = by_topic.pop(topic, [])
            good = [s for s in mine if not replace and s.endpoint == endpoint and s.status in HEALTHY]
            keep = good[0] if good else None
            if keep is None:
                result.created.append(self.create(topic, endpoint, secret, end=end))
            else:
                result.kept.append(keep)
            for old in mine:
                if old is not keep:
                    self.delete(old.id)
                    result.replaced.append(old)
        for leftovers in by_topic.values():  # topics no longer configured, at our endpoint only
            for old in leftovers:
                if old.endpoint == endpoint:
                    self.delete(old.id)
                    result.deleted.append(old)
        return result

    def delete_all(self, *, endpoint: str | None = None) -> list[RemoteSubscription]:
        """Delete every Subscription of this practice (only those to ``endpoint`` when given)."""
        gone = []
        for sub in self.list():
            if endpoint is None or sub.endpoint == endpoint:
                self.delete(sub.id)
                gone.append(sub)
        return gone


def manager_from_settings(settings: Any, **client_overrides: Any) -> SubscriptionManager:
    """A manager over a new AthenaClient with the subscription scopes (close ``.client`` after)."""
    overrides = {"scopes": SUBSCRIPTION_SCOPES, **client_overrides}
    client = AthenaClient.from_settings(settings, **overrides)
    return SubscriptionManager(client, settings.athena_practice_id)


def ensure_subscriptions(settings: Any, *, endpoint: str | None = None,
                         topics: Sequence[str] | None = None, replace: bool = False
                         ) -> EnsureResult:
    """``subscriptions ensure`` with :class:`~athena_pipeline.settings.Settings`."""
    secrets = settings.webhook_secrets
    manager = manager_from_settings(settings)
    try:
        return manager.ensure(topics or settings.athena_event_topics, endpoint or settings.webhook_url,
                              secrets[0] if secrets else None, replace=replace)
    finally:
        manager.client.close()


def list_subscriptions(settings: Any) -> list[RemoteSubscription]:
    manager = manager_from_settings(settings)
    try:
        return manager.list()
    finally:
        manager.client.close()


def delete_subscriptions(settings: Any, ids: Sequence[str] | None = None, *,
                         endpoint: str | None = None) -> list[str]:
    """Delete the given ids, or every Subscription (to ``endpoint`` when given); returns ids."""
    manager = manager_from_settings(settings)
    try:
        if ids:
            for sub_id in ids:
                manager.delete(sub_id)
            return list(ids)
        return [s.id for s in manager.delete_all(endpoint=endpoint)]
    finally:
        manager.client.close()

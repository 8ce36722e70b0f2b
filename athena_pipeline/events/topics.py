"""athenahealth Event Subscription topics: the catalogue, and how a topic names what changed.

Why one module for both sides: the emulator serves this catalogue at ``GET /SubscriptionTopic``
and derives notifications from it, while the pipeline's ``subscriptions ensure`` expands the
configured topic families (``ATHENA_EVENT_TOPICS=Appointment,Patient``) with it. A topic id is
``<Family>.<action>`` (``Appointment.check-in``); athena wants **one Subscription per topic**.

The catalogue is athena's alpha list (spec ``athenahealth-api.md`` §3.4, README v0.11). Where the
spec names a family but not its actions (ClinicalEncounterDiagnosis, PatientProblem,
HistoricalMedication, HistoricalVaccine) we assume create/delete/update.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Base of topic canonicals as athena writes them in ``Subscription.criteria``.
ATHENA_TOPIC_BASE = "https://api.platform.athenahealth.com/fhir/r4/SubscriptionTopic"


@dataclass(frozen=True)
class TopicFamily:
    """A family of topics: its actions and where a changed resource is fetched (§3.4)."""

    name: str
    actions: tuple[str, ...]
    fetch: str  # endpoint template to fetch the focus, for documentation and clients
    fhir_type: str | None = None  # FHIR type of the focus reference, when there is one
    fhir_kind: str | None = None  # athena's FHIR logical id kind: a-{pid}.{kind}-{id}
    identifier: str | None = None  # proprietary identifier system suffix: urn:athenahealth:athenanet:{x}:{pid}

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(f"{self.name}.{a}" for a in self.actions)


CATALOGUE: tuple[TopicFamily, ...] = (
    TopicFamily("Appointment", ("cancel", "check-in", "check-out", "freeze", "reschedule",
                                "schedule", "unfreeze", "update"),
                "GET /v1/{practiceid}/appointments/{id}", "Appointment", "Appointment", "appointment"),
    TopicFamily("Patient", ("create", "delete", "merge", "update"),
                "GET /fhir/r4/Patient/{id} or /v1/{practiceid}/patients/{id}", "Patient", "E", "patient"),
    TopicFamily("Encounter", ("check-in", "reopen", "signoff"),
                "GET /fhir/r4/Encounter/{id} or /v1/{practiceid}/chart/encounter/{id}",
                "Encounter", "encounter", "encounter"),
    TopicFamily("LabResult", ("close", "create", "update"),
                "GET /v1/{practiceid}/patients/{patientid}/documents/labresult/{id}",
                "Observation", "observation", "labresult"),
    TopicFamily("ImagingResult", ("close", "create", "delete", "reopen", "update"),
                "GET /v1/{practiceid}/patients/{patientid}/documents/imagingresult/{id}",
                identifier="imagingresult"),
    TopicFamily("Order", ("cancel", "deny", "perform", "signoff", "submit", "update"),
                "GET /v1/{practiceid}/patients/{patientid}/documents/order/{id}", identifier="order"),
    TopicFamily("PatientCase", ("add-note", "create", "update"),
                "GET /v1/{practiceid}/patients/{patientid}/documents/patientcase/{id}",
                identifier="patientcase"),
    TopicFamily("Prescription", ("create", "delete", "preapprove", "refill-create", "refill-update",
                                 "reopen", "update"),
                "GET /v1/{practiceid}/patients/{patientid}/documents/prescription/{id}",
                identifier="prescription"),
    TopicFamily("Claim", ("create", "delete", "update"), "GET /v1/{practiceid}/claims/{id}",
                identifier="claim"),
    TopicFamily("ClinicalEncounterDiagnosis", ("create", "delete", "update"),
                "GET /fhir/r4/Condition/{id}", "Condition", "condition", "clinicalencounterdiagnosis"),
    TopicFamily("PatientProblem", ("create", "delete", "update"), "GET /fhir/r4/Condition/{id}",
                "Condition", "condition", "patientproblem"),
    TopicFamily("HistoricalMedication", ("create", "delete", "update"),
                "GET /fhir/r4/MedicationStatement/{id}", identifier="historicalmedication"),
    TopicFamily("HistoricalVaccine", ("create", "delete", "update"),
                "GET /fhir/r4/Immunization/{id}", identifier="historicalvaccine"),
    TopicFamily("Provider", ("create", "delete", "undelete", "update"),
                "GET /fhir/r4/Practitioner/{id}", "Practitioner", "Provider", "provider"),
    TopicFamily("ReferringProvider", ("create", "delete", "undelete", "update"),
                "GET /v1/{practiceid}/referringproviders/{id}", identifier="referringprovider"),
)

FAMILIES: dict[str, TopicFamily] = {f.name: f for f in CATALOGUE}
ALL_TOPICS: tuple[str, ...] = tuple(t for f in CATALOGUE for t in f.topics)

#: The families the pipeline reacts to (issue #6 §3): the default of ``ATHENA_EVENT_TOPICS``.
DEFAULT_FAMILIES: tuple[str, ...] = ("Appointment", "Patient", "Encounter", "LabResult", "Claim")

_TOPIC_IN_URL = re.compile(r"SubscriptionTopic/([A-Za-z]+\.[a-z][a-z-]*)/?$")


def family_of(topic: str) -> str:
    """``Appointment`` for ``Appointment.check-in``."""
    return topic.split(".", 1)[0]


def expand_topics(entries: Iterable[str]) -> list[str]:
    """Topic ids from a configuration list: a family name means all of its topics.

    ``["Appointment", "Patient.update"]`` -> the 8 Appointment topics and ``Patient.update``,
    in catalogue order, without duplicates. Raises ValueError naming an unknown entry.
    """
    wanted: set[str] = set()
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        if entry in FAMILIES:
            wanted.update(FAMILIES[entry].topics)
        elif entry in ALL_TOPICS:
            wanted.add(entry)
        else:
            raise ValueError(f"unknown athenahealth event topic {entry!r} "
                             f"(families: {', '.join(FAMILIES)})")
    return [t for t in ALL_TOPICS if t in wanted]


def topic_from_url(criteria: str) -> str | None:
    """The topic id at the end of a topic canonical (``.../SubscriptionTopic/Patient.update``)."""
    match = _TOPIC_IN_URL.search(criteria.strip())
    return match.group(1) if match else None


def topic_url(topic: str, base: str = ATHENA_TOPIC_BASE) -> str:
    """The canonical URL of a topic under ``base`` (a FHIR base or a SubscriptionTopic base)."""
    base = base.rstrip("/")
    if not base.endswith("/SubscriptionTopic"):
        base += "/SubscriptionTopic"
    return f"{base}/{topic}"


def practice_filter(practice_id: str | int) -> str:
    """The backport filter-criteria value that scopes a Subscription to one practice."""
    return f"ah-practice=Organization/a-1.Practice-{practice_id}"

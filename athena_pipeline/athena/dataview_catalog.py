"""The one place Data View table names live: every athenaOne Data View table the project uses.

Why a catalogue: athenahealth publishes no Data View schema (spec ``athenahealth-api.md`` §4). Our
table and column names come from third-party code that reads the share (Tuva's athenahealth
connector, DispatchHealth's LookML) or are outright guesses. Keeping every name here, with how
sure we are of it, lets the sandbox renderer, the extractor, the raw loader and the dbt sources
agree, and lets a practice whose share differs fix it with configuration instead of code:

* ``DATAVIEW_TABLE_MAP`` (a JSON object) maps our logical name to the real upstream table name,
  e.g. ``{"ERARECORD": "ERA_RECORD"}``. :func:`upstream_name` applies it.
* ``confidence='guessed'`` tables (kick codes, ERA remittances, appointment types) are
  experimental: loaders should tolerate their absence upstream and marts should say so.

One name for one thing across layers (design.md): logical table ``CLAIM`` is dbt source
``dataview.claim``, raw table ``raw_dataview.claim`` and staging model ``stg_dataview__claims``.

Conventions every table follows (spec §4): ``CONTEXTID`` (the practice), ``CONTEXTNAME`` and
``CONTEXTPARENTCONTEXTID`` on every row; the key is ``CONTEXTID`` + the table's own id column(s);
soft delete is ``DELETEDDATETIME``/``DELETEDBY`` (deleted rows stay in the table); ``CREATEDDATETIME``
and ``LASTUPDATED`` (the incremental watermark) are always present.

Claim submission dates (a choice, documented here because several layers depend on it): athenaOne
has no ``CLAIMSUBMITDATE`` column that we could find, so we do not invent one. The *first*
submission of a claim is ``TRANSACTION.FIRSTBILLEDDATETIME`` on its CHARGE rows (a DispatchHealth
column); the latest (re)submission per payer is ``CLAIM.LASTBILLEDDATE1`` / ``LASTBILLEDDATE2``
(Tuva columns); each individual submission is a ``CLAIMNOTE`` row with ``ACTION='SUBMITTED'``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Confidence = Literal["documented", "guessed"]

TABLE_MAP_ENV = "DATAVIEW_TABLE_MAP"

CONTEXT_COLUMNS: tuple[str, ...] = ("CONTEXTID", "CONTEXTNAME", "CONTEXTPARENTCONTEXTID")
AUDIT_COLUMNS: tuple[str, ...] = ("CREATEDDATETIME", "CREATEDBY", "DELETEDDATETIME", "DELETEDBY", "LASTUPDATED")
WATERMARK_COLUMN = "LASTUPDATED"
SOFT_DELETE_COLUMN = "DELETEDDATETIME"

# Snowflake unquoted identifiers: letters, digits, _ and $ (not leading digit/$). Upstream names are
# spliced into SQL, so anything else is refused rather than quoted.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True)
class DataViewTable:
    """One Data View table: how it is named in every layer, keyed, watermarked and trusted."""

    name: str  # logical, upper-case, as spec §4 names it (or as we guessed it)
    primary_key: tuple[str, ...]  # without CONTEXTID; the full key is CONTEXTID + these
    description: str
    confidence: Confidence
    plural: str  # snake_case plural of the entity, for the staging model name
    documented_columns: tuple[str, ...] = ()  # columns spec §4 lists (or guesses) for the table
    guessed_columns: tuple[str, ...] = ()  # columns we added without any evidence of the name
    watermark_column: str = WATERMARK_COLUMN
    soft_delete_column: str = SOFT_DELETE_COLUMN

    @property
    def experimental(self) -> bool:
        """Guessed tables may be missing or shaped differently in a real share."""
        return self.confidence == "guessed"

    @property
    def key_columns(self) -> tuple[str, ...]:
        return ("CONTEXTID", *self.primary_key)

    @property
    def source_name(self) -> str:
        return f"dataview.{self.name.lower()}"

    @property
    def raw_table(self) -> str:
        return f"raw_dataview.{self.name.lower()}"

    @property
    def staging_model(self) -> str:
        return f"stg_dataview__{self.plural}"

    def upstream_name(self, env: Mapping[str, str] | None = None) -> str:
        return upstream_name(self.name, env=env)


def _t(name: str, key: str | tuple[str, ...], plural: str, confidence: Confidence, description: str,
       documented: tuple[str, ...] = (), guessed: tuple[str, ...] = ()) -> DataViewTable:
    return DataViewTable(
        name=name,
        primary_key=(key,) if isinstance(key, str) else key,
        description=description,
        confidence=confidence,
        plural=plural,
        documented_columns=documented,
        guessed_columns=guessed,
    )


_DIAGNOSES = tuple(f"DIAGNOSIS{i}" for i in range(1, 9))

CATALOG: tuple[DataViewTable, ...] = (
    _t("PATIENT", "PATIENTID", "patients", "documented",
       "One row per patient registered in the practice; ENTERPRISEID is the cross-practice identity.",
       ("PATIENTID", "ENTERPRISEID", "FIRSTNAME", "LASTNAME", "DOB", "SEX", "ZIP", "PATIENTSTATUS",
        "CURRENTDEPARTMENTID", "PRIMARYPROVIDERID", "NEWPATIENTID")),
    _t("PROVIDER", "PROVIDERID", "providers", "documented",
       "Rendering and scheduling providers (physicians, NPs, PAs) with NPI and specialty.",
       ("PROVIDERID", "PROVIDERNPINUMBER", "PROVIDERFIRSTNAME", "PROVIDERLASTNAME", "PROVIDERTYPE",
        "SPECIALTY", "PROVIDERGROUPID", "SUPERVISINGPROVIDERID", "BILLABLEYN"),
       ("PROVIDERSEX", "TAXONOMY")),
    _t("DEPARTMENT", "DEPARTMENTID", "departments", "documented",
       "Practice locations (service departments) with place of service.",
       ("DEPARTMENTID", "DEPARTMENTNAME", "BILLINGNAME", "DEPARTMENTSTATE", "DEPARTMENTZIP",
        "PLACEOFSERVICECODE", "PROVIDERGROUPID", "CHARTSHARINGGROUPID"),
       ("DEPARTMENTPHONE", "DEPARTMENTSPECIALTY")),
    _t("INSURANCEPACKAGE", "INSURANCEPACKAGEID", "insurance_packages", "documented",
       "Payers as athenaOne insurance packages, with type and reporting category (payer mix). Spec §4 "
       "tags the table name D,G: seen in DispatchHealth, name not confirmed.",
       ("INSURANCEPACKAGEID", "INSURANCEPACKAGENAME", "INSURANCEPACKAGETYPE", "INSURANCEPRODUCTTYPE",
        "INSURANCEREPORTINGCATEGORY"),
       ("PAYERNAME", "PAYERID")),
    _t("PATIENTINSURANCE", "PATIENTINSURANCEID", "patient_insurances", "documented",
       "A patient's coverage by an insurance package; SEQUENCENUMBER 1 primary, 2 secondary.",
       ("PATIENTINSURANCEID", "PATIENTID", "INSURANCEPACKAGEID", "SEQUENCENUMBER", "ISSUEDATE",
        "EXPIRATIONDATE", "CANCELLATIONDATE"),
       ("INSURANCEIDNUMBER",)),
    _t("APPOINTMENTTYPE", "APPOINTMENTTYPEID", "appointment_types", "guessed",
       "Appointment type names for APPOINTMENT.APPOINTMENTTYPEID (experimental: table name guessed).",
       ("APPOINTMENTTYPEID",), ("APPOINTMENTTYPENAME",)),
    _t("APPOINTMENT", "APPOINTMENTID", "appointments", "documented",
       "Scheduled visits with status (f future, x cancelled, 2/3/4 checked in/out/charge entered, "
       "o open); NOSHOWYN marks a no-show.",
       ("APPOINTMENTID", "PATIENTID", "DEPARTMENTID", "PROVIDERID", "APPOINTMENTTYPEID", "APPOINTMENTDATE",
        "APPOINTMENTSTARTTIME", "APPOINTMENTSTATUS", "APPOINTMENTCHECKINDATETIME",
        "APPOINTMENTCANCELLEDDATETIME", "CLAIMID"),
       ("NOSHOWYN",)),
    _t("CLINICALENCOUNTER", "CLINICALENCOUNTERID", "clinical_encounters", "documented",
       "Clinical encounters (the chart side of a visit), linked to appointment and claim.",
       ("CLINICALENCOUNTERID", "PATIENTID", "CHARTID", "APPOINTMENTID", "DEPARTMENTID", "CLAIMID",
        "PROVIDERID", "ENCOUNTERDATE", "ENCOUNTERSTATUS", "CLINICALENCOUNTERTYPE", "CLOSEDDATETIME")),
    _t("CLINICALENCOUNTERDIAGNOSIS", "CLINICALENCOUNTERDXID", "clinical_encounter_diagnoses", "documented",
       "Diagnoses recorded at an encounter. DIAGNOSISCODE carries the ICD-10-CM code (with the dot) in "
       "the sandbox; real shares may need CLINICALENCOUNTERDXICD10 + ICDCODEALL to resolve it.",
       ("CLINICALENCOUNTERDXID", "CLINICALENCOUNTERID", "DIAGNOSISCODE", "SNOMEDCODE", "STATUS", "ORDERING"),
       ("DIAGNOSISCODEDESCRIPTION",)),
    _t("PATIENTPROBLEM", "PATIENTPROBLEMID", "patient_problems", "documented",
       "Problem-list entries (chronic conditions) with onset and deactivation; DIAGNOSISCODE is ICD-10-CM.",
       ("PATIENTPROBLEMID",),
       ("DIAGNOSISCODEDESCRIPTION",)),
    _t("DOCUMENT", "DOCUMENTID", "documents", "documented",
       "Chart documents; the sandbox renders lab-result documents (DOCUMENTCLASS 'LABRESULT'), which "
       "carry the PATIENTID that CLINICALRESULT lacks.",
       ("DOCUMENTID", "PATIENTID", "DOCUMENTCLASS", "STATUS")),
    _t("CLINICALRESULT", "CLINICALRESULTID", "clinical_results", "documented",
       "One lab result (order result) per document; OBSERVATIONDATETIME is the collection time.",
       ("CLINICALRESULTID", "DOCUMENTID", "RESULTSREPORTEDDATETIME", "OBSERVATIONDATETIME")),
    _t("CLINICALRESULTOBSERVATION", "CLINICALOBSERVATIONID", "clinical_result_observations", "documented",
       "Analyte values of a lab result. RESULT is text. LOINCID carries the LOINC code itself in the "
       "sandbox (real shares: an id into a LOINC table); OBSERVATIONIDENTIFIERLOINC is the code.",
       ("CLINICALOBSERVATIONID", "CLINICALRESULTID", "LOINCID", "OBSERVATIONIDENTIFIER", "RESULT",
        "OBSERVATIONUNITS", "REFERENCERANGE", "OBSERVATIONABNORMALFLAGID", "RESULTSTATUS")),
    _t("VITALSIGN", "ENCOUNTERDATAID", "vital_signs", "documented",
       "Vitals as key/value rows per encounter (VITALS.BLOODPRESSURE.SYSTOLIC/DIASTOLIC, VITALS.BMI, "
       "VITALS.WEIGHT, VITALS.HEIGHT); VALUE is text in DBUNIT.",
       ("ENCOUNTERDATAID", "CLINICALENCOUNTERID", "KEY", "VALUE", "DISPLAYVALUE", "DISPLAYUNIT",
        "CREATEDDATETIME"),
       ("OBSERVATIONDATETIME",)),
    _t("CLAIM", "CLAIMID", "claims", "documented",
       "One claim per billed encounter, with per-party status and outstanding balance as of today. "
       "First submission: TRANSACTION.FIRSTBILLEDDATETIME; latest: LASTBILLEDDATE1/2.",
       ("CLAIMID", "PATIENTID", "CLAIMAPPOINTMENTID", "CLAIMPRIMARYPATIENTINSID", "RENDERINGPROVIDERID",
        "SERVICEDEPARTMENTID", "PRIMARYCLAIMSTATUS", "SECONDARYCLAIMSTATUS", "PATIENTCLAIMSTATUS",
        "PRIMARYOUTSTANDING", "CLAIMSERVICEDATE", *_DIAGNOSES)),
    _t("CLAIMDIAGNOSIS", "CLAIMDIAGNOSISID", "claim_diagnoses", "documented",
       "Diagnoses on a claim in billing order (SEQUENCENUMBER 1..8).",
       ("CLAIMDIAGNOSISID", "CLAIMID", "DIAGNOSISCODE", "SEQUENCENUMBER", "DIAGNOSISCODESETNAME")),
    _t("TRANSACTION", "TRANSACTIONID", "transactions", "documented",
       "The ledger: charges (AMOUNT > 0), payments and adjustments (< 0), transfers between parties; "
       "reversals offset the voided row. Sum of AMOUNT per claim = its outstanding balance.",
       ("TRANSACTIONID", "TRANSACTIONTYPE", "TRANSACTIONREASON", "TRANSACTIONTRANSFERTYPE", "AMOUNT",
        "CHARGEID", "PARENTCHARGEID", "CLAIMID", "PATIENTID", "PAYMENTBATCHID", "POSTDATE", "VOIDEDDATE",
        "REVERSALFLAG", "PROCEDURECODE"),
       ("INSURANCEPACKAGEID", "ERARECORDID")),
    _t("KICKREASON", "KICKREASONID", "kick_reasons", "guessed",
       "athenaOne kick reasons (experimental): kick code, name, category and the claim status it sets.",
       ("KICKREASONID", "KICKCODE", "KICKREASONNAME", "KICKREASONCATEGORYID", "NEXTCLAIMSTATUS"),
       ("KICKREASONCATEGORY",)),
    _t("CLAIMNOTE", "CLAIMNOTEID", "claim_notes", "guessed",
       "Claim workflow history (experimental): one row per status change, with the kick reason applied.",
       ("CLAIMNOTEID", "CLAIMID", "KICKREASONID", "TRANSFERTYPE"),
       ("PATIENTID", "ACTION", "NOTEDATE", "KICKCODE", "CLAIMSTATUS", "NOTE")),
    _t("ERARECORD", "ERARECORDID", "era_records", "guessed",
       "Electronic remittance (835) at claim level (experimental): one row per payer adjudication.",
       ("ERARECORDID",),
       ("CLAIMID", "PATIENTID", "INSURANCEPACKAGEID", "TRANSFERTYPE", "REMITDATE", "REMITSEQUENCE",
        "BILLEDAMOUNT", "ALLOWEDAMOUNT", "PAIDAMOUNT", "PATIENTRESPONSIBILITYAMOUNT", "DENIALYN")),
    _t("ERAKICK", "ERAKICKID", "era_kicks", "guessed",
       "835 CAS adjustments of a remittance (experimental): group code, CARC, amount and the kick code "
       "the payer code maps to (named after the ERAKICK(kickcode, kickreasonid, kickedamount) snippet).",
       ("ERAKICKID", "KICKCODE", "KICKREASONID", "KICKEDAMOUNT"),
       ("ERARECORDID", "CLAIMID", "GROUPCODE", "ADJUSTMENTREASONCODE")),
)

_BY_NAME: dict[str, DataViewTable] = {t.name: t for t in CATALOG}


def table_names() -> list[str]:
    """Logical names of every catalogued table, in catalogue order."""
    return [t.name for t in CATALOG]


def get_table(logical: str) -> DataViewTable:
    """The catalogue entry for a logical name (case-insensitive)."""
    try:
        return _BY_NAME[logical.upper()]
    except KeyError:
        raise KeyError(f"{logical!r} is not a catalogued Data View table; known: {', '.join(_BY_NAME)}") from None


def documented_tables() -> list[DataViewTable]:
    return [t for t in CATALOG if t.confidence == "documented"]


def experimental_tables() -> list[DataViewTable]:
    return [t for t in CATALOG if t.experimental]


def table_map(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The validated ``DATAVIEW_TABLE_MAP``: logical name (upper-case) -> upstream table name.

    Refuses unknown logical names (a typo would otherwise silently do nothing) and upstream names
    that are not plain identifiers (they end up in SQL).
    """
    raw = (os.environ if env is None else env).get(TABLE_MAP_ENV, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{TABLE_MAP_ENV} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(parsed, dict):  # a configuration error, like the others: ValueError
        raise ValueError(  # noqa: TRY004
            f"{TABLE_MAP_ENV} must be a JSON object like {{\"ERARECORD\": \"ERA_RECORD\"}}")
    mapping: dict[str, str] = {}
    for key, value in parsed.items():
        logical = str(key).upper()
        if logical not in _BY_NAME:
            raise ValueError(f"{TABLE_MAP_ENV}: {key!r} is not a catalogued Data View table")
        if not isinstance(value, str) or not _IDENTIFIER.match(value):
            raise ValueError(f"{TABLE_MAP_ENV}: upstream name for {logical} must be a plain identifier, "
                             f"got {value!r}")
        mapping[logical] = value
    return mapping


def upstream_name(logical: str, env: Mapping[str, str] | None = None) -> str:
    """The real upstream table name for a logical one: ``DATAVIEW_TABLE_MAP`` or the logical name."""
    entry = get_table(logical)
    return table_map(env).get(entry.name, entry.name)

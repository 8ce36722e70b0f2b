"""``AthenaClient``: the HTTP policy plus athenahealth auth, with FHIR and v1 GET helpers.

Why a thin class: bulk export, Event Subscription follow-up reads and any v1 lookups must share
one token cache, one rate limiter (athena counts calls per client) and one call log. The
helpers know athena's URL shapes so every call gets a precise path template
(``/fhir/r4/Patient/{id}``, ``/v1/{practiceid}/patients``) without ids or query values.

FHIR pages follow ``Bundle.link[relation=next]`` (athena pages with a ``cursor`` parameter);
v1 lists use ``limit``/``offset`` and follow the response's ``next`` until it disappears.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Self
from urllib.parse import urljoin, urlsplit

import httpx

from athena_pipeline.athena.auth import build_authenticator
from athena_pipeline.http import (
    DEFAULT_TIMEOUT,
    ApiError,
    Authenticator,
    CallRecord,
    HttpPolicy,
    RetryPolicy,
    StreamHandle,
    origin,
    template_path,
)

SYSTEM = "athena"
FHIR_JSON = "application/fhir+json"
V1_DEFAULT_LIMIT = 1500
V1_MAX_LIMIT = 5000
_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_MAX_PAGES = 100_000


def _bundle_count(response: httpx.Response) -> int | None:
    body = response.json()
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return len(body.get("entry") or [])
    return 1 if isinstance(body, dict) and "resourceType" in body else None


class AthenaClient:
    """Authenticated, rate-limited, retried access to one athenahealth environment."""

    def __init__(self, fhir_base_url: str, auth: Authenticator, policy: HttpPolicy, *,
                 practice_id: str | int | None = None, v1_base_url: str | None = None) -> None:
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.auth = auth
        self.policy = policy
        self.practice_id = str(practice_id) if practice_id is not None else None
        self.v1_base_url = (v1_base_url or f"{origin(self.fhir_base_url)}/v1").rstrip("/")
        self.fhir_path = urlsplit(self.fhir_base_url).path.rstrip("/")
        #: Path segments of our own base URLs: kept verbatim in templates (e.g. "r4").
        self.known_segments = frozenset(
            s for s in (self.fhir_path + "/" + urlsplit(self.v1_base_url).path).split("/") if s)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, fhir_base_url: str, *, auth_mode: str = "client_secret",
               token_url: str | None = None, client_id: str | None = None,
               client_secret: str | None = None, private_key_path: Path | str | None = None,
               private_key_pem: bytes | str | None = None, key_id: str | None = None,
               jwt_algorithm: str | None = None, scopes: str | None = None,
               practice_id: str | int | None = None, requests_per_second: float | None = 5.0,
               timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
               on_call: Callable[[CallRecord], None] | None = None,
               max_connections: int = 10) -> AthenaClient:
        """A client with its own connection pool, token cache and rate limiter."""
        policy = HttpPolicy(SYSTEM, timeout=timeout, retry=retry,
                            requests_per_second=requests_per_second, on_call=on_call,
                            max_connections=max_connections)
        try:
            auth = build_authenticator(
                auth_mode, policy=policy, token_url=token_url, client_id=client_id,
                client_secret=client_secret, private_key_path=private_key_path,
                private_key_pem=private_key_pem, key_id=key_id, jwt_algorithm=jwt_algorithm,
                scopes=scopes)
        except BaseException:
            policy.close()
            raise
        return cls(fhir_base_url, auth, policy, practice_id=practice_id)

    @classmethod
    def from_settings(cls, settings, *, on_call: Callable[[CallRecord], None] | None = None,
                      **overrides) -> AthenaClient:
        """A client configured from :class:`athena_pipeline.settings.Settings`."""
        kwargs = {
            "auth_mode": settings.athena_auth, "token_url": settings.athena_token_url,
            "client_id": settings.athena_client_id, "client_secret": settings.athena_client_secret,
            "private_key_path": settings.athena_private_key_path, "key_id": settings.athena_key_id,
            "scopes": settings.athena_scopes, "practice_id": settings.athena_practice_id,
            "requests_per_second": settings.athena_requests_per_second, "on_call": on_call}
        kwargs.update(overrides)
        return cls.create(settings.athena_fhir_base_url, **kwargs)

    def close(self) -> None:
        self.policy.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- templates ---------------------------------------------------------------------------
    def template(self, url: str, *, tokens: Mapping[str, str] | None = None,
                 last: str | None = None) -> str:
        """The path template of ``url``: id-like segments become ``{id}``.

        ``tokens`` maps concrete segments to placeholders (e.g. a bulk job id to ``{job}``);
        ``last`` replaces the final segment whatever it looks like (``{file}``).
        """
        path = urlsplit(url).path
        segments = path.split("/")
        for i, seg in enumerate(segments):
            if tokens and seg in tokens:
                segments[i] = tokens[seg]
        if last is not None and segments and segments[-1]:
            segments[-1] = last
        return template_path("/".join(segments), keep=self.known_segments)

    def fhir_url(self, relative: str) -> str:
        return f"{self.fhir_base_url}/{relative.lstrip('/')}"

    # --- generic calls (used by bulk export) ---------------------------------------------------
    def request(self, method: str, url: str, *, path_template: str | None = None,
                authenticated: bool = True, **kwargs) -> httpx.Response:
        """One call through the policy, with our credentials unless ``authenticated=False``."""
        return self.policy.request(method, url,
                                   path_template=path_template or self.template(url),
                                   auth=self.auth if authenticated else None, **kwargs)

    @contextmanager
    def stream(self, method: str, url: str, *, path_template: str | None = None,
               authenticated: bool = True, **kwargs) -> Iterator[StreamHandle]:
        with self.policy.stream(method, url, path_template=path_template or self.template(url),
                                auth=self.auth if authenticated else None, **kwargs) as handle:
            yield handle

    # --- FHIR ----------------------------------------------------------------------------------
    def fhir_get(self, relative: str, params: Mapping[str, str] | None = None, *,
                 path_template: str | None = None) -> dict:
        """GET ``{fhir base}/{relative}`` as JSON (e.g. ``metadata``, ``Patient/123``)."""
        url = self.fhir_url(relative)
        response = self.request("GET", url, params=params, headers={"Accept": FHIR_JSON},
                                path_template=path_template or self.template(url),
                                count_resources=_bundle_count)
        return _json(response, self.policy.system, "GET", path_template or self.template(url))

    def fhir_read(self, resource_type: str, resource_id: str) -> dict:
        """``GET {base}/{type}/{id}``."""
        _check_type(resource_type)
        return self.fhir_get(f"{resource_type}/{resource_id}",
                             path_template=f"{self.fhir_path}/{resource_type}/{{id}}")

    def fhir_search(self, resource_type: str, params: Mapping[str, str] | None = None
                    ) -> Iterator[dict]:
        """Every resource matching a search, page after page (``Bundle.link[next]``)."""
        _check_type(resource_type)
        template = f"{self.fhir_path}/{resource_type}"
        url: str | None = self.fhir_url(resource_type)
        page_params: Mapping[str, str] | None = params
        seen: set[str] = set()
        while url is not None:
            response = self.request("GET", url, params=page_params,
                                    headers={"Accept": FHIR_JSON}, path_template=template,
                                    count_resources=_bundle_count)
            bundle = _json(response, self.policy.system, "GET", template)
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    yield resource
            url = next((link.get("url") for link in bundle.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            page_params = None  # the next link carries every parameter
            if url is not None:
                url = urljoin(self.fhir_base_url + "/", url)
                if url in seen or len(seen) > _MAX_PAGES:
                    raise ApiError(f"athena GET {template}: the server's next link repeats",
                                   system=self.policy.system, method="GET",
                                   path_template=template, transient=False)
                seen.add(url)

    # --- athenaOne v1 ----------------------------------------------------------------------------
    def _v1_url(self, path: str) -> tuple[str, str]:
        if self.practice_id is None:
            raise ValueError("v1 calls need a practice id")
        v1_path = urlsplit(self.v1_base_url).path
        url = f"{self.v1_base_url}/{self.practice_id}/{path.lstrip('/')}"
        template = template_path(f"{v1_path}/{{practiceid}}/{path.lstrip('/')}",
                                 keep=self.known_segments)
        return url, template

    def v1_get(self, path: str, params: Mapping[str, str] | None = None) -> dict:
        """GET ``/v1/{practiceid}/{path}`` as JSON."""
        url, template = self._v1_url(path)
        response = self.request("GET", url, params=params, path_template=template,
                                headers={"Accept": "application/json"})
        return _json(response, self.policy.system, "GET", template)

    def v1_list(self, path: str, key: str | None = None, params: Mapping[str, str] | None = None,
                *, limit: int = V1_DEFAULT_LIMIT) -> Iterator[dict]:
        """Every item of a v1 list, following ``next`` (``limit``/``offset`` paging).

        ``key`` names the array in the response (``patients``, ``appointments``); when omitted,
        the response's only list-valued field is used.
        """
        if not 1 <= limit <= V1_MAX_LIMIT:
            raise ValueError(f"limit must be within 1..{V1_MAX_LIMIT}")
        url, template = self._v1_url(path)
        page_params: dict[str, str] | None = {**dict(params or {}), "limit": str(limit),
                                              "offset": "0"}
        seen: set[str] = set()
        next_url: str | None = url
        while next_url is not None:
            response = self.request("GET", next_url, params=page_params, path_template=template,
                                    headers={"Accept": "application/json"},
                                    count_resources=partial(_list_count, key))
            body = _json(response, self.policy.system, "GET", template)
            array_key = key or _only_list_key(body)
            items = body.get(array_key) if array_key else None
            if not isinstance(items, list):
                raise ApiError(f"athena GET {template}: no list {key or ''} in the response",
                               system=self.policy.system, method="GET", path_template=template,
                               status=response.status_code, transient=False)
            yield from items
            nxt = body.get("next")
            if not nxt or not items:
                return
            next_url = urljoin(origin(self.v1_base_url) + "/", nxt)
            page_params = None
            if next_url in seen or len(seen) > _MAX_PAGES:
                raise ApiError(f"athena GET {template}: the server's next link repeats",
                               system=self.policy.system, method="GET", path_template=template,
                               transient=False)
            seen.add(next_url)


def _list_count(key: str | None, response: httpx.Response) -> int | None:
    body = response.json()
    items = body.get(key or _only_list_key(body) or "") if isinstance(body, dict) else None
    return len(items) if isinstance(items, list) else None


def _only_list_key(body: object) -> str | None:
    if not isinstance(body, dict):
        return None
    keys = [k for k, v in body.items() if isinstance(v, list)]
    return keys[0] if len(keys) == 1 else None


def _check_type(resource_type: str) -> None:
    if not _TYPE_RE.fullmatch(resource_type):
        raise ValueError("not a FHIR resource type name")


def _json(response: httpx.Response, system: str, method: str, template: str) -> dict:
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ApiError(f"{system} {method} {template} -> {response.status_code}: "
                       "the body is not a JSON object", system=system, method=method,
                       path_template=template, status=response.status_code, transient=False)
    return body

"""The options of the ``athena-pipeline`` command, as small decorators ``cli.py`` stacks.

Why a module of its own: ``sandbox serve`` alone takes twenty tuning options, and most options
of every command come in a handful of shapes (an optional override whose default lives in the
emulator, a flag, a date, a repeatable list, an environment-backed setting). Declaring each as
a seven-line ``click.option(...)`` buried the commands under option boilerplate; here a shape is
one helper and an option is just its flag, type and help, so the commands in ``cli.py`` read as
what they do.

Nothing here imports the pipeline's heavy modules: ``--help`` stays instant (the emulator's
fault list is read only when help is shown, see :class:`FaultsOption`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from athena_pipeline import settings as settings_mod

F = TypeVar("F", bound=Callable[..., Any])

DATE = click.DateTime(formats=["%Y-%m-%d"])
#: A strictly positive number of seconds (lifetimes, expiries).
_POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)


def stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` as if stacked in this order (the first is listed
    first in ``--help``)."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _decls(flag: str, dest: str | None) -> tuple[str, ...]:
    return (flag, dest) if dest else (flag,)


def override(flag: str, type_: click.ParamType | type | None, help_text: str, *,
             metavar: str | None = None, dest: str | None = None) -> Callable[[F], F]:
    """An optional value whose default lives elsewhere (the emulator's config, a watermark):
    ``default=None`` means "not given", and the help names the real default."""
    return click.option(*_decls(flag, dest), type=type_, default=None, metavar=metavar, help=help_text)


def flag(name: str, help_text: str, *, dest: str | None = None) -> Callable[[F], F]:
    """An on/off switch, off unless given."""
    return click.option(*_decls(name, dest), is_flag=True, help=help_text)


def names(flag: str, metavar: str, help_text: str) -> Callable[[F], F]:
    """A repeatable option that also takes comma lists (``cli._split`` flattens it)."""
    return click.option(flag, flag.lstrip("-"), multiple=True, metavar=metavar, help=help_text)


def from_env(flag: str, envvar: str, default: Any, help_text: str, *, dest: str | None = None,
             **attrs: Any) -> Callable[[F], F]:
    """An option backed by an environment variable of ``settings.py`` (shown in ``--help``)."""
    return click.option(*_decls(flag, dest), envvar=envvar, show_envvar=True, default=default,
                        show_default=True, help=help_text, **attrs)


def world_option(flag: str, dest: str, help_text: str) -> Callable[[F], F]:
    """The world directory option every sandbox command takes (defaults to SANDBOX_WORLD)."""
    return from_env(flag, "SANDBOX_WORLD", settings_mod.SANDBOX_WORLD, help_text, dest=dest,
                    type=click.Path(file_okay=False, path_type=Path))


#: ``--practice-id``: the athenaOne practice (CONTEXTID) of a synthetic world.
practice_id_option = from_env("--practice-id", "ATHENA_PRACTICE_ID", settings_mod.SANDBOX_PRACTICE_ID,
                              "athenaOne practice id (CONTEXTID) of the synthetic practice.", type=int)


# --- sandbox serve: the emulators' options ---------------------------------------------------------


class FaultsOption(click.Option):
    """``--faults``, whose help lists the emulator's fault names, read only when help is shown
    (so every other invocation skips the import)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        try:
            from athena_pipeline.sandbox.emulator.faults import FAULTS_HELP
        except ImportError:
            pass
        else:
            self.help = FAULTS_HELP
        return super().get_help_record(ctx)


def _assignments(param: click.Parameter, values: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    """``("ID=VALUE", ...)`` as (id, value) pairs; a malformed item is a usage error."""
    pairs = []
    for item in values:
        client_id, sep, value = item.partition("=")
        if not sep or not client_id.strip() or not value.strip():
            raise click.BadParameter(f"{item!r} is not CLIENT_ID={what}", param=param)
        pairs.append((client_id.strip(), value.strip()))
    return pairs


def parse_jwt_clients(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    """``--jwt-client ID=PATH`` -> {client id: public keys}, read and checked now so a bad key
    file is a one-line usage error naming the file, not a failure at the first token request."""
    pairs = _assignments(param, values, "PATH")
    if not pairs:
        return {}
    from athena_pipeline.sandbox.emulator.auth import load_public_keys

    clients: dict[str, tuple] = {}
    for client_id, path in pairs:
        try:
            keys = load_public_keys(Path(path).expanduser())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param=param) from None
        clients[client_id] = clients.get(client_id, ()) + keys
    return clients


def parse_client_secrets(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    """``--client-secret ID=SECRET`` -> {client id: secret}; one secret per client."""
    secrets: dict[str, str] = {}
    for client_id, secret in _assignments(param, values, "SECRET"):
        if secrets.get(client_id, secret) != secret:
            raise click.BadParameter(f"two different secrets for client {client_id!r}", param=param)
        secrets[client_id] = secret
    return secrets


def _clients(flag: str, dest: str, metavar: str, callback: Callable[..., dict],
             help_text: str) -> Callable[[F], F]:
    """A repeatable ``CLIENT_ID=VALUE`` registration, parsed into a dict by ``callback``."""
    return click.option(flag, dest, multiple=True, metavar=metavar, callback=callback, help=help_text)


def _overrides(rows: tuple[tuple[str, click.ParamType, str | None, str], ...], prefix: str = ""
               ) -> list[Callable[[F], F]]:
    """:func:`override` per ``(flag, type, metavar, help)`` row, each help after ``prefix``."""
    return [override(name, type_, prefix + text, metavar=metavar) for name, type_, metavar, text in rows]


#: ``sandbox serve``'s athenahealth emulator options (after --world, --host, --port); each
#: ``None`` default means "the emulator's own default", which the help names. Each of them but
#: --faults is named as the keyword of ``sandbox.server.build_config`` it sets.
athena_emulator_options = stack(
    click.option("--faults", cls=FaultsOption, default=None, metavar="SPEC",
                 help="Fault injection spec; see athena_pipeline/sandbox/emulator/faults.py."),
    flag("--open",
         "Open mode: no bearer token needed anywhere (tokens sent anyway are accepted), bulk "
         "manifests say requiresAccessToken: false. For Bulk Data clients run without auth.",
         dest="open_mode"),
    _clients("--jwt-client", "jwt_clients", "CLIENT_ID=PATH", parse_jwt_clients,
             "Register a SMART Backend Services (private_key_jwt) client whose public key(s) are in "
             'PATH: a PEM public key or a JWKS JSON file ({"keys": [...]}). Repeatable.'),
    _clients("--client-secret", "client_secrets", "CLIENT_ID=SECRET", parse_client_secrets,
             "Register an extra client_secret_basic/_post client. Repeatable."),
    *_overrides((
        ("--environment", click.Choice(["production", "preview"]), None,
         ("athenahealth environment to emulate; sets the token rate limit (50/min production, "
          "5/min preview).  [default: production]")),
        ("--token-lifetime", _POSITIVE_SECONDS, "SECONDS",
         "Access token lifetime (expires_in).  [default: 3600]"),
    )),
    flag("--expires-in-string",
         "Send expires_in as a JSON string, as athena's newer platform sometimes does."),
    *_overrides((
        ("--resources-per-file", click.IntRange(min=1), "N",
         "Most resources per bulk export NDJSON file; a type spans several files.  [default: 10000]"),
        ("--file-expiry", _POSITIVE_SECONDS, "SECONDS",
         ("Bulk export files (and the job) expire this long after the export completes, then "
          "answer 404.  [default: 3600]")),
        ("--export-delay", click.FloatRange(min=0), "SECONDS",
         "A bulk export reports in progress (202) for at least this long.  [default: 2]"),
        ("--per-second-limit", click.IntRange(min=1), "N",
         "API calls per second per client; more get 429 with Retry-After: 1.  [default: off]"),
    )),
)

#: ``sandbox serve``'s Caspio emulator options (the emulator mounted at /caspio). Each of them
#: but --caspio-faults is a keyword of ``build_caspio_config``: see CASPIO_CONFIG_KEYWORDS.
caspio_emulator_options = stack(
    *_overrides((
        ("--caspio-latency", click.FloatRange(min=0), "MS",
         "every REST call waits this long (real Caspio: ~300).  [default: 0]"),
        ("--caspio-rate-limit", click.FloatRange(min=0, min_open=True), "N",
         "REST calls per second per client; more get 429.  [default: off]"),
        ("--caspio-burst", click.IntRange(min=1), "N",
         "calls allowed at once by the rate limit.  [default: the rate, rounded up]"),
        ("--caspio-allowance", click.IntRange(min=0), "N",
         "monthly call allowance (period 27th-26th, Pacific).  [default: 500000]"),
        ("--caspio-over-allowance", click.Choice(["count", "throttle"]), None,
         "calls over the allowance are counted as overage, or answered 429.  [default: count]"),
        ("--caspio-token-lifetime", _POSITIVE_SECONDS, "SECONDS",
         "access token lifetime (expires_in).  [default: 86399]"),
    ), prefix="Caspio emulator: "),
    flag("--caspio-stale-token-400",
         "Caspio emulator: answer an expired token with 400 IncorrectQueryParameter instead of 401 "
         "(a quirk seen in the field)."),
    override("--caspio-faults", None,
             "Caspio emulator fault spec, e.g. throttle=p0.05,server_error=2:503,error_after_write=1; "
             "see athena_pipeline/sandbox/caspio/faults.py.", metavar="SPEC"),
)

#: The keyword of ``sandbox.caspio.server.build_caspio_config`` each Caspio option sets.
CASPIO_CONFIG_KEYWORDS = {
    "caspio_latency": "latency_ms",
    "caspio_rate_limit": "rate_limit",
    "caspio_burst": "burst",
    "caspio_allowance": "monthly_allowance",
    "caspio_over_allowance": "over_allowance",
    "caspio_token_lifetime": "token_lifetime",
    "caspio_stale_token_400": "stale_token_400",
}


# --- behaviour every command shares -------------------------------------------------------------------
def one_line_errors(func: F) -> F:
    """Any failure of a command is one ``Error: ...`` line and exit code 1, never a traceback.

    The clients', loaders' and publishers' messages carry path templates, counts and file names only
    (no ids, no PHI, no secrets), so they are safe to show; the traceback is logged at DEBUG. A
    ValueError, FileNotFoundError or LookupError speaks for itself; other exceptions are prefixed
    with their type.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as exc:  # every failure becomes one clean line
            logging.getLogger(func.__module__).debug("%s failed", func.__name__, exc_info=True)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if not isinstance(exc, (ValueError, FileNotFoundError, LookupError)):
                text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            raise click.ClickException(text or type(exc).__name__) from None

    return wrapper  # type: ignore[return-value]


def quiet_http_logs() -> None:
    """httpx logs every request URL at INFO; bulk file URLs may embed signed tokens."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)


def split_values(values: tuple[str, ...]) -> list[str]:
    """``("A,B", "C")`` -> ``["A", "B", "C"]``: repeatable options that also take comma lists."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]

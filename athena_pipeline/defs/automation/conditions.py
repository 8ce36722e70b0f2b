"""Declarative automation of the dbt models and the Caspio tables: build once a night, after the extracts.

Why declarative automation and not a chain of jobs: each asset says *when it is due* ("the nightly
tick has passed and everything I read has been refreshed since"), the automation sensor launches
exactly what is due, and the UI shows, per asset, which part of the condition holds. A manual
backfill, a re-run after a failure or the events sensor's refresh slot into the same rules.

The condition, :func:`nightly_condition`, is ``AutomationCondition.on_cron`` made a little stricter:

* ``cron_tick_passed(NIGHTLY_TIME).since_last_handled()``: at most one request per asset per night,
  and none on the first evaluation after a deploy (nothing surprising runs when it is switched on);
* every input was updated since the tick (or is requested in the same evaluation: that is how
  staging -> intermediate -> marts -> caspio are requested together, and Dagster puts everything
  requested in one evaluation into one run);
* no input is still in progress, and neither is the asset (a run of the events sensor, say).

So each model and Caspio table is built **once a night**, as soon as everything it reads is fresh:
in practice one small run for the seeds at the tick, one for what reads only FHIR once the FHIR
load is in, and one for the rest once the Data View partition is in. ``eager()`` would instead
rebuild a model after *each* upstream update (the FHIR load, then the Data View load), the first
time on half-refreshed inputs. If an extract fails, what reads it waits (and its freshness policy
fails, and the failure sensor reports the run) instead of being published half-updated.

**Inputs that may never update.** Data View tables the catalogue marks experimental (names
guessed) may be absent from a practice's share: the extract then materialises nothing for them and
dbt's ``source_or_empty`` builds their staging models empty. A strict "every input updated" would
block everything downstream of them forever. So inputs that *may not update*
(:func:`may_not_update`: those tables, and every model whose inputs are all such) are left out of
the "all updated" rule; a model whose inputs are *only* such assets waits for any of them instead.

dbt seeds have no inputs: the same condition requests them right after the tick, in a small run
of their own (reference CSVs, seconds), so a seed changed by a release is rebuilt the next night.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

import dagster as dg

#: The dbt layers (asset groups) and the Caspio publish group, by name: the transform and publish
#: stages own those assets; this module only selects them.
DBT_GROUPS = ("staging", "intermediate", "marts")
PUBLISH_GROUP = "caspio"
MARTS_GROUP = "marts"
LABEL = "nightly_after_extracts"


def nightly_cron(hour: int, minute: int) -> str:
    """The daily cron of the nightly run, e.g. ``0 2 * * *`` for 02:00."""
    return f"{minute} {hour} * * *"


def updated_since_tick(cron: str, timezone: str) -> dg.AutomationCondition:
    """True for an asset updated since the latest tick of ``cron``, or requested in this evaluation."""
    return (dg.AutomationCondition.newly_updated().since(dg.AutomationCondition.cron_tick_passed(cron, timezone))
            | dg.AutomationCondition.will_be_requested())


def nightly_condition(cron: str, timezone: str, *, may_not_update: Iterable[dg.AssetKey] = (),
                      only_uncertain_inputs: bool = False) -> dg.AutomationCondition:
    """The condition of one dbt or Caspio asset (see the module docstring).

    ``may_not_update``: dependencies left out of "every dependency updated since the tick".
    ``only_uncertain_inputs``: every input of the asset is such a dependency; then it waits for
    *any* of them to update instead (otherwise nothing would hold it back after the tick).
    """
    updated = updated_since_tick(cron, timezone)
    uncertain = sorted(set(may_not_update), key=lambda k: k.path)
    all_updated = dg.AutomationCondition.all_deps_match(updated)
    if uncertain:
        all_updated = all_updated.ignore(dg.AssetSelection.assets(*uncertain))
    condition = (
        dg.AutomationCondition.in_latest_time_window()
        & dg.AutomationCondition.cron_tick_passed(cron, timezone).since_last_handled()
        & all_updated.with_label("all_inputs_updated_since_tick")
    )
    if only_uncertain_inputs and uncertain:
        condition = condition & dg.AutomationCondition.any_deps_match(updated).allow(
            dg.AssetSelection.assets(*uncertain)).with_label("any_input_updated_since_tick")
    condition = (condition
                 & ~dg.AutomationCondition.any_deps_in_progress()
                 & ~dg.AutomationCondition.in_progress())
    return condition.with_label(f"{LABEL}({cron}, {timezone})")


def may_not_update(deps: Mapping[dg.AssetKey, AbstractSet[dg.AssetKey]], optional: AbstractSet[dg.AssetKey],
                   targets: AbstractSet[dg.AssetKey]) -> set[dg.AssetKey]:
    """The ``optional`` upstream assets, plus every target whose *signal* inputs (:func:`signal_inputs`)
    are all, recursively, such assets."""
    uncertain = set(optional)
    changed = True
    while changed:
        changed = False
        for key in targets - uncertain:
            inputs = signal_inputs(key, deps, targets)
            if inputs and inputs <= uncertain:
                uncertain.add(key)
                changed = True
    return uncertain


def signal_inputs(key: dg.AssetKey, deps: Mapping[dg.AssetKey, AbstractSet[dg.AssetKey]],
                  targets: AbstractSet[dg.AssetKey]) -> set[dg.AssetKey]:
    """The inputs of ``key`` that say "the night's data has arrived": all of them except targets with
    no inputs of their own (dbt seeds), which are requested at the tick whatever the extracts do."""
    return {dep for dep in deps.get(key, set()) if not (dep in targets and not deps.get(dep))}


def nightly_conditions(deps: Mapping[dg.AssetKey, AbstractSet[dg.AssetKey]], targets: Iterable[dg.AssetKey],
                       optional: AbstractSet[dg.AssetKey], cron: str, timezone: str
                       ) -> dict[dg.AssetKey, dg.AutomationCondition]:
    """The condition of every target, given each asset's inputs (``deps``) and the upstream assets that
    may never materialise (``optional``, see :func:`optional_inputs`)."""
    wanted = set(targets)
    uncertain = may_not_update(deps, optional, wanted)
    out: dict[dg.AssetKey, dg.AutomationCondition] = {}
    for key in wanted:
        inputs = deps.get(key, set())
        signal = signal_inputs(key, deps, wanted)
        out[key] = nightly_condition(cron, timezone, may_not_update=inputs & uncertain,
                                     only_uncertain_inputs=bool(signal) and signal <= uncertain)
    return out


def automation_targets(groups: Mapping[dg.AssetKey, str | None]) -> set[dg.AssetKey]:
    """The assets that follow the nightly extracts: the dbt layers and the Caspio publish group."""
    return {key for key, group in groups.items() if group in (*DBT_GROUPS, PUBLISH_GROUP)}


def optional_inputs() -> set[dg.AssetKey]:
    """Upstream assets that may never materialise: the Data View tables the catalogue marks
    experimental (``raw_dataview/<table>``, names guessed; absent from some shares).

    Why the catalogue and not the assets' ``skippable`` flag: the Data View multi-asset can be
    subset, and Dagster then marks *every* output of it skippable, so the flag cannot tell them apart.
    """
    from athena_pipeline.athena.dataview_catalog import experimental_tables

    return {dg.AssetKey(["raw_dataview", table.name.lower()]) for table in experimental_tables()}

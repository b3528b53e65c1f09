"""The stress run's figures and verdicts, from what the harness observed.

Each figure is printed as it is computed, and each requirement becomes a `Check`; the test
fails on any failed check and names them all.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from tests.stress.analysis import (
    DatabaseFigures,
    RelayReturn,
    ResourceFigures,
    count_events,
    link_changes,
    link_drops,
    no_link_intervals,
    relay_returns,
    resource_figures,
    subscriptions_sent,
)
from tests.stress.db_locks import DbLockRecord
from tests.stress.deliveries import Deliveries
from tests.stress.feed import FeedStats
from tests.stress.outages import OutageRecord
from tests.stress.probes import Sample

RELAY_LABELS: Final = ("A", "B")
DISPUTE_SUBSCRIPTION: Final = "disputes"
SERIES_EVERY: Final = 10.0
# Growth allowed from the mid-run plateau to the end. The daemon's only caches that grow
# with the run are bounded: the relay pool remembers 40,000 event ids (~300 bytes each, full
# only at the very end: 10,000 disputes + 30,000 own wraps) and SQLite's page cache is
# capped; that is ~12 MB at most, on top of allocator noise.
RSS_GROWTH_ALLOWED_MB: Final = 15.0
SETTLE_RSS_SPAN_MB: Final = 2.0
# Descriptors at the end versus before the load, with both relay links up in both: equal,
# give or take a health-check connection being accepted while sampling.
FD_GROWTH_ALLOWED: Final = 2
SHOWN_IDS: Final = 3
LATE_SECONDS: Final = 5.0


class Check(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    detail: str


class StressReport(msgspec.Struct, frozen=True):
    seed: int
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]


class PublishedDispute(msgspec.Struct, frozen=True):
    """One dispute event Mostro got accepted: its `created_at` and how many relays took it."""

    dispute_id: str
    created_at: int
    relays: int


class Observations(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the harness saw. Times named `*_at` are monotonic seconds, `*_wall` unix
    seconds; `windows` are the (start, end) monotonic spans before the load, of the load
    (until the last DM), and of the idle settle at the end."""

    seed: int
    disputes: int
    solvers: int
    rate: float
    budget: float
    elapsed: float
    t0: float
    t0_wall: float
    finished: bool
    stop_reason: str | None
    delivered_at: float | None
    deliveries: Deliveries
    feed: FeedStats
    accepted_at: dict[str, float]
    published: list[PublishedDispute]
    planned_outages: int
    outages: list[OutageRecord]
    outage_errors: list[str]
    planned_db_locks: int
    db_locks: list[DbLockRecord]
    db_lock_errors: list[str]
    records: list[dict[str, Any]]
    urls: list[str]
    samples: list[Sample]
    windows: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    both_up_at_end: bool
    final_health: dict[str, Any] | None
    exit_code: int | None
    db: DatabaseFigures
    db_states: dict[str, str]


def say(text: str = "") -> None:
    print(text, flush=True)


class _Evaluation:
    def __init__(self, obs: Observations) -> None:
        self.obs = obs
        self.checks: list[Check] = []
        self.labels = dict(zip(obs.urls, RELAY_LABELS, strict=True))
        self.links = {url: link_changes(obs.records, url) for url in obs.urls}
        self.drops = link_drops(self.links, obs.urls, obs.outages)
        end_wall = obs.t0_wall + (obs.windows[2][1] - obs.t0)
        self.no_link = no_link_intervals(self.links, obs.t0_wall, end_wall)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def rel(self, wall: float) -> float:
        """Unix seconds as seconds from the start of the load."""
        return wall - self.obs.t0_wall

    def run(self) -> StressReport:
        obs = self.obs
        say()
        say("=" * 78)
        say(f"figures (seed {obs.seed})")
        self.publishing()
        self.delivery()
        self.duplicates()
        self.outages()
        self.database_locks()
        self.resources()
        self.database()
        self.check(
            "all delivered within the budget",
            obs.finished and obs.elapsed <= obs.budget,
            f"{obs.stop_reason or 'finished'}; {obs.elapsed:.0f} s of {obs.budget:.0f} s",
        )
        say(f"run time {obs.elapsed:.0f} s (budget {obs.budget:.0f} s)")
        say("=" * 78)
        for check in self.checks:
            verdict = "ok  " if check.ok else "FAIL"
            say(f"{verdict} {check.name}" + ("" if check.ok else f": {check.detail}"))
        return StressReport(seed=obs.seed, checks=self.checks)

    # --- sections ------------------------------------------------------------------------------

    def publishing(self) -> None:
        obs, feed = self.obs, self.obs.feed
        relays = Counter(p.relays for p in obs.published)
        if feed.first_at is not None and feed.last_at is not None:
            span = feed.last_at - feed.first_at
            say(
                f"publish: {feed.published}/{obs.disputes} disputes in {span:.1f} s "
                f"({feed.published / max(span, 1e-9):.1f}/s, target pace {obs.rate:g}/s); "
                f"{feed.retries} publishes no relay took (retried); accepted by both relays "
                f"{relays[2]}, by one {relays[1]}"
            )
        self.check(
            "every dispute published",
            feed.published == obs.disputes and feed.failures == 0,
            f"{feed.published}/{obs.disputes}, {feed.failures} given up ({feed.last_error})",
        )

    def delivery(self) -> None:
        obs, deliveries = self.obs, self.obs.deliveries
        pairs = obs.disputes * obs.solvers
        if obs.finished and obs.delivered_at is not None:
            total = obs.delivered_at - obs.t0
            last_published = (obs.feed.last_at or obs.t0) - obs.t0
            say(
                f"delivery: all {pairs} (dispute, solver) pairs delivered {total:.1f} s after "
                f"the first publish ({pairs / total:.0f} DMs/s overall); the last dispute was "
                f"published at +{last_published:.1f} s"
            )
        else:
            say(f"delivery: NOT complete ({obs.stop_reason}): {deliveries.pairs()}/{pairs} pairs")
        latencies = sorted(
            done - obs.accepted_at[d]
            for d, done in deliveries.complete_at().items()
            if d in obs.accepted_at
        )
        if latencies:
            late = sum(latency > LATE_SECONDS for latency in latencies)
            say(
                "  latency, Mostro's publish -> the last solver's DM: "
                f"p50 {_percentile(latencies, 0.50):.2f} s, p95 {_percentile(latencies, 0.95):.2f} "
                f"s, p99 {_percentile(latencies, 0.99):.2f} s, max {latencies[-1]:.1f} s; "
                f"{late} disputes over {LATE_SECONDS:g} s"
            )
        arrivals = deliveries.arrivals()
        if arrivals:
            say(f"  DMs/s in each 10 s of the load: {_rate_series(arrivals, obs.t0)}")
        missing = deliveries.missing()
        self.check(
            "every dispute reached every solver",
            all(not ids for ids in missing),
            ", ".join(
                f"solver {i}: {len(ids)} missing {ids[:SHOWN_IDS]}" for i, ids in enumerate(missing)
            ),
        )
        self.explain_missing(sorted({d for ids in missing for d in ids}))
        foreign, errors = deliveries.foreign(), deliveries.errors()
        self.check(
            "only expected DMs, every wrap opened",
            not foreign and not errors,
            f"foreign {foreign[:SHOWN_IDS]}, inbox errors {errors[:SHOWN_IDS]}",
        )

    def explain_missing(self, missing: Sequence[str]) -> None:
        """Split what never arrived: disputes the daemon never recorded (lost before ingest),
        and recorded ones whose DM did not arrive (lost after the decision)."""
        if not missing:
            return
        obs = self.obs
        published = {p.dispute_id: p for p in obs.published}
        unknown = [d for d in missing if d not in obs.db_states]
        known = [d for d in missing if d in obs.db_states]
        if unknown:
            times = sorted(self.rel(published[d].created_at) for d in unknown if d in published)
            relays = Counter(published[d].relays for d in unknown if d in published)
            span = f"+{times[0]:.0f} .. +{times[-1]:.0f} s" if times else "unknown times"
            blind = [p for p in obs.published if self._without_link(p.created_at)]
            never_seen = set(unknown)
            lost_blind = sum(1 for p in blind if p.dispute_id in never_seen)
            say(
                f"  missing: {len(unknown)} disputes never reached the daemon's database; "
                f"Mostro published them {span} after the load started (created_at), accepted "
                f"by both relays {relays[2]}, by one {relays[1]}"
            )
            say(
                f"  of the {len(blind)} disputes published while the daemon had no relay link, "
                f"its re-sent subscriptions brought back {len(blind) - lost_blind} and lost "
                f"{lost_blind}"
            )
        if known:
            states = Counter(obs.db_states[d] for d in known)
            say(
                f"  missing: {len(known)} disputes are in the database ({dict(states)}) but "
                f"some solver never got their DM: {known[:SHOWN_IDS]}"
            )

    def _without_link(self, created_at: int) -> bool:
        """Published (whole seconds) within a span in which the daemon had no relay link."""
        return any(start - 1 <= created_at <= end + 1 for start, end in self.no_link)

    def duplicates(self) -> None:
        """A DM re-sent after its OK was lost (a link drop, a restart) is the same event
        (BEY-26), so every (solver, dispute) pair must hold exactly one event id."""
        obs, deliveries = self.obs, self.obs.deliveries
        duplicates = deliveries.duplicates()
        extra = [0] * obs.solvers
        for duplicate in duplicates:
            extra[duplicate.solver] += duplicate.wraps - 1
        say(
            f"duplicates: {len(duplicates)} (solver, dispute) pairs arrived as more than one"
            f" distinct event id, {sum(extra)} extra events (per solver {extra}), across"
            f" {len(self.drops)} link drops ({len(obs.outages)} planned outages, the rest"
            f" relay-side cuts); distinct wraps opened per solver {deliveries.wraps_received()}"
        )
        self.check(
            "no DM arrived as two distinct events",
            not duplicates,
            f"{sum(extra)} extra events: {duplicates[:SHOWN_IDS]}",
        )

    def outages(self) -> None:
        obs = self.obs
        say("outages as carried out (seconds from the start of the load), and the daemon's links:")
        for number, record in enumerate(obs.outages, 1):
            returns = relay_returns(record, obs.urls, self.labels, self.links)
            who = "+".join(RELAY_LABELS[i] for i in record.outage.relays)
            say(
                f"  {number:2}. {who:<3} down at +{record.stopped_at - obs.t0:6.1f} s for "
                f"{record.down_seconds:4.1f} s (planned {record.outage.seconds:.1f}); "
                + "; ".join(_describe_return(r) for r in returns)
            )
        for url in obs.urls:
            drops = [drop for drop in self.drops if drop.url == url]
            gaps = " ".join(
                ("?" if drop.gap is None else f"{drop.gap:.1f}") + ("" if drop.planned else "*")
                for drop in drops
            )
            unplanned = sum(not drop.planned for drop in drops)
            say(
                f"  daemon link to {self.labels[url]}: {len(drops)} drops ({unplanned} not from "
                f"the plan, marked *), seconds until reconnected: {gaps}"
            )
        lonely = sum(end - start for start, end in self.no_link)
        spans = ", ".join(
            f"+{self.rel(start):.1f}..+{self.rel(end):.1f}" for start, end in self.no_link
        )
        say(f"  the daemon had no relay link for {lonely:.1f} s in total: {spans or '-'}")
        resent = [
            sub
            for sub in subscriptions_sent(obs.records)
            if sub.name == DISPUTE_SUBSCRIPTION and sub.at >= obs.t0_wall
        ]
        if resent:
            say(
                "  dispute subscription re-sent: "
                + ", ".join(
                    f"{self.labels.get(sub.relay, sub.relay)} at +{self.rel(sub.at):.1f} s "
                    f"(since {self.rel(sub.since):+.0f} s)"
                    if sub.since is not None
                    else f"{self.labels.get(sub.relay, sub.relay)} at +{self.rel(sub.at):.1f} s"
                    for sub in resent
                )
            )
        self.check(
            "outage plan carried out",
            not obs.outage_errors and len(obs.outages) == obs.planned_outages,
            f"{len(obs.outages)} of {obs.planned_outages} outages, errors {obs.outage_errors}",
        )
        counts = count_events(obs.records)
        say(f"daemon log: {counts}")
        crashes = [r for r in obs.records if r.get("event") == "actor_crashed"]
        self.check(
            "no actor crashed",
            not crashes and not counts.get("daemon_terminated"),
            str(crashes[:SHOWN_IDS]),
        )
        self.check("clean exit on SIGTERM", obs.exit_code == 0, f"exit status {obs.exit_code}")

    def database_locks(self) -> None:
        """Every lock ridden out as one outage in the daemon's log: a warning when it began,
        an info line when it cleared, and no decision dropped (BEY-25)."""
        obs = self.obs
        say("database write locks held by another process (seconds from the start of the load):")
        for number, record in enumerate(obs.db_locks, 1):
            say(
                f"  {number:2}. held at +{self.rel(record.held_wall):6.1f} s for "
                f"{record.released_wall - record.held_wall:4.1f} s"
            )
        began = [r for r in obs.records if r.get("event") == "database_unavailable"]
        cleared = [r for r in obs.records if r.get("event") == "database_available"]
        for record in cleared:
            say(
                f"      daemon: database unavailable for {record.get('unavailable_seconds')} s, "
                f"{record.get('attempts')} attempts ({record.get('last_error')})"
            )
        dropped = [r for r in obs.records if r.get("event") == "persistence_failed"]
        self.check(
            "database lock plan carried out",
            not obs.db_lock_errors and len(obs.db_locks) == obs.planned_db_locks,
            f"{len(obs.db_locks)} of {obs.planned_db_locks} locks, errors {obs.db_lock_errors}",
        )
        self.check(
            "database locks ridden out",
            len(began) == len(cleared) == len(obs.db_locks) and not dropped,
            f"{len(obs.db_locks)} locks, {len(began)} database_unavailable, "
            f"{len(cleared)} database_available, {len(dropped)} persistence_failed",
        )

    def resources(self) -> None:
        obs = self.obs
        say("daemon resources every ~10 s (VmRSS MB, open fds):")
        for line in _series_lines(obs.samples, obs.t0, obs.outages):
            say(line)
        ready, load, settle = obs.windows
        try:
            res: ResourceFigures = resource_figures(
                obs.samples, ready=ready, load=load, settle=settle
            )
        except ValueError as exc:
            self.check("resources sampled", False, str(exc))
            return
        say(f"  CPU during the load: {res.load_cpu_percent:.0f}% of one core")
        say(
            f"  RSS: ready {res.ready_rss:.1f}, mid-run plateau {res.plateau_rss:.1f}, "
            f"end {res.end_rss:.1f} (settle span {res.settle_rss_span:.2f}), peak "
            f"{res.peak_rss:.1f} MB"
        )
        say(
            f"  fds: ready {res.ready_fds:g}, mid-run plateau {res.plateau_fds:g}, end "
            f"{res.end_fds:g} (settle span {res.settle_fds_span}), peak {res.peak_fds}; "
            f"both relay links up at the end: {obs.both_up_at_end}"
        )
        self.check(
            "RSS flat at the end",
            res.end_rss <= res.plateau_rss + RSS_GROWTH_ALLOWED_MB
            and res.settle_rss_span <= SETTLE_RSS_SPAN_MB,
            f"end {res.end_rss:.1f} MB vs plateau {res.plateau_rss:.1f} MB "
            f"(+{RSS_GROWTH_ALLOWED_MB:g} allowed), settle span {res.settle_rss_span:.2f} MB",
        )
        self.check(
            "fds flat at the end",
            obs.both_up_at_end
            and res.end_fds <= res.ready_fds + FD_GROWTH_ALLOWED
            and res.settle_fds_span <= FD_GROWTH_ALLOWED,
            f"end {res.end_fds:g} vs ready {res.ready_fds:g} (+{FD_GROWTH_ALLOWED} allowed), "
            f"settle span {res.settle_fds_span}, both links up {obs.both_up_at_end}",
        )

    def database(self) -> None:
        obs, db = self.obs, self.obs.db
        pairs = obs.disputes * obs.solvers
        say(
            f"database: {db.disputes} disputes {db.states}; {db.notified_transitions} "
            f"new->notified transitions"
        )
        say(f"  outbox rows {db.outbox}; initial rows by attempts {db.attempts}")
        say(
            f"  notification rows {db.notifications}; sent initial rows per (dispute, solver) "
            f"{db.sent_per_pair}"
        )
        for reason, count in db.failed_reasons.items():
            say(f"  failed attempt x{count}: {reason}")
        health = json.dumps(obs.final_health) if obs.final_health else None
        say(f"  final /health: {health}")
        self.check(
            "every dispute notified",
            db.disputes == obs.disputes
            and db.states.get("notified") == obs.disputes
            and db.notified_transitions == obs.disputes,
            f"{db.disputes} disputes, states {db.states}, "
            f"{db.notified_transitions} transitions to notified",
        )
        self.check(
            "one sent initial row per (dispute, solver)",
            db.sent_per_pair == {1: pairs} and db.outbox.get("initial/sent") == pairs,
            f"sent rows per pair {db.sent_per_pair}, outbox {db.outbox}",
        )
        # Each hand-out of an outbox row writes exactly one attempt row: the failed ones are
        # the retries, so failed rows = attempts - one success per row.
        self.check(
            "every failed row is a retried attempt",
            db.initial_rows == db.initial_attempts
            and db.notifications.get("initial/failed", 0)
            == db.initial_attempts - db.outbox.get("initial/sent", 0),
            f"{db.initial_rows} initial rows for {db.initial_attempts} attempts",
        )


def evaluate(obs: Observations) -> StressReport:
    """Print the figures and return the verdicts."""
    return _Evaluation(obs).run()


def _describe_return(ret: RelayReturn) -> str:
    back = "not back" if ret.back_after is None else f"back {ret.back_after:.1f} s after restart"
    if not ret.was_linked:
        return f"daemon's {ret.label} link was already down, {back}"
    noticed = "?" if ret.noticed_after is None else f"{ret.noticed_after:.1f} s"
    return f"daemon saw {ret.label} drop after {noticed}, {back}"


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _rate_series(arrivals: Sequence[float], t0: float) -> str:
    buckets = Counter(int((at - t0) // SERIES_EVERY) for at in arrivals)
    return " ".join(f"{buckets[b] / SERIES_EVERY:.0f}" for b in range(max(buckets) + 1))


def _series_lines(
    samples: Sequence[Sample], t0: float, outages: Sequence[OutageRecord]
) -> list[str]:
    lines = []
    next_at = samples[0].at if samples else 0.0
    for sample in samples:
        if sample.at < next_at:
            continue
        next_at = sample.at + SERIES_EVERY
        down = [
            "+".join(RELAY_LABELS[i] for i in r.outage.relays)
            for r in outages
            if sample.at - SERIES_EVERY < r.restarted_at and r.stopped_at <= sample.at
        ]
        marks = f"   outage {', '.join(down)} in the last 10 s" if down else ""
        lines.append(
            f"  {sample.at - t0:+7.1f} s  {sample.rss_mb:6.1f} MB  {sample.fds:3} fds{marks}"
        )
    return lines

"""``flexprice-beam check``: the seed's troubleshooting list, run before the first event.

Events Flexprice accepts (202) can still bill nothing: an ``event_name`` no meter listens to,
a SUM over a property sent as a string, an unknown customer.  This reads a sample from the
configured input, maps and validates it exactly as the pipeline would, and asks Flexprice
(read-only: features with their meters, customers by external id) — it never sends events.

Those two look-ups go through the official ``flexprice`` SDK (``io.api.Lookups``): it is
generated from the server's OpenAPI document, covers both (``features.query_feature`` with
``expand=meters``, ``customers.get_customer_by_external_id``), takes our base URL (the
stand-in's ``http://127.0.0.1``), and sends ``x-api-key``, ``X-Environment-ID`` and the extra
``headers:`` through the httpx client we give it.  It adds only httpx (small, pure Python;
apache-beam[gcp] installs it anyway).  The one gap: it puts an external id into the path
unquoted, so ``Lookups.customer`` quotes it first.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from flexprice_beam.core.config import CollectorConfig, KafkaInput
from flexprice_beam.core.events import Record
from flexprice_beam.io.api import Kind, Lookups, Reply, auth_advice
from flexprice_beam.io.secrets import SecretError
from flexprice_beam.transforms.mapping import FILTERED, Mapper, MappingError
from flexprice_beam.transforms.validate import InvalidEvent, prepare

log = logging.getLogger("flexprice_beam.check")

#: Aggregations over ``meter.aggregation.field`` that need a number there.
NUMERIC_AGGREGATIONS = {"SUM", "AVG", "MAX", "MIN", "LATEST", "SUM_WITH_MULTIPLIER",
                        "WEIGHTED_SUM"}
#: Aggregations that need the field present, whatever its type.
FIELD_AGGREGATIONS = NUMERIC_AGGREGATIONS | {"COUNT_UNIQUE"}
OK, WARN, ERROR = "ok", "warn", "ERROR"


@dataclass
class Finding:
    level: str
    check: str
    subject: str
    detail: str


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    sampled: int = 0

    def add(self, level: str, check: str, subject: str, detail: str) -> None:
        self.findings.append(Finding(level, check, subject, detail))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    def render(self) -> str:
        head = ("LEVEL", "CHECK", "SUBJECT", "DETAIL")
        rows = [head] + [(f.level, f.check, f.subject, f.detail) for f in self.findings]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
        verdict = (f"{len(self.problems)} problem(s) found" if self.problems
                   else "no problems found")
        return "\n".join(lines) + f"\n\n{self.sampled} record(s) sampled; {verdict}."


# ---------------------------------------------------------------- sampling the input


class SampleError(RuntimeError):
    """The input could not be sampled (unknown topic, broker unreachable)."""


def sample_records(cfg: CollectorConfig, n: int, timeout: float = 10.0) -> list[Record]:
    if cfg.input.generate is not None:
        from flexprice_beam.io.generate import generate_batch, start_time

        gen = cfg.input.generate
        last = min(n, gen.count) if gen.count else n
        return generate_batch(gen, start_time(gen), 0, last)
    return sample_kafka(cfg.input.kafka, n, timeout)


def sample_kafka(cfg: KafkaInput, n: int, timeout: float = 10.0) -> list[Record]:
    """The first ``n`` records of the topics, without a group: no offsets are committed."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from flexprice_beam.io.kafka import decode, python_client_config

    try:
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                                 **python_client_config(cfg))
    except KafkaError as exc:
        raise SampleError(f"cannot connect to Kafka {','.join(cfg.addresses)}: {exc}") from None
    try:
        parts = []
        for topic in cfg.topics:
            found = consumer.partitions_for_topic(topic)
            if not found:
                raise SampleError(f"topic {topic!r} does not exist or has no partitions")
            parts.extend(TopicPartition(topic, p) for p in sorted(found))
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            if all(consumer.position(tp) >= ends[tp] for tp in parts):
                break
            for recs in consumer.poll(timeout_ms=500, max_records=n - len(out)).values():
                out.extend(decode(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value,
                                  cfg.max_record_bytes) for r in recs)
        return out[:n]
    finally:
        consumer.close()


# ---------------------------------------------------------------- asking Flexprice


def fetch_meters(client: Lookups) -> tuple[Reply, list[dict]]:
    """Every published feature with its meter (``expand: meters``), all pages."""
    items: list[dict] = []
    offset = 0
    while True:
        answer = client.features(offset=offset, limit=1000)
        body = answer.data
        if answer.kind is not Kind.ACCEPTED or not isinstance(body, dict):
            return answer, items
        page = body.get("items") or []
        items.extend(page)
        total = (body.get("pagination") or {}).get("total", len(items))
        offset += len(page)
        if not page or offset >= total:
            return answer, items


def _api(report: CheckReport, client: Lookups) -> dict[str, list[dict]] | None:
    answer, features = fetch_meters(client)
    if answer.status is None:
        report.add(ERROR, "api", client.base_url, f"unreachable: {answer.error}")
        return None
    if answer.kind is Kind.AUTH:
        report.add(ERROR, "api", "api_key", f"refused: {answer.describe()[:200]} — "
                   f"{auth_advice(answer, client.environment_id)}")
        return None
    if answer.kind is not Kind.ACCEPTED:
        report.add(ERROR, "api", "/v1/features/search", answer.describe()[:300])
        return None
    meters: dict[str, list[dict]] = defaultdict(list)
    for f in features:
        meter = f.get("meter")
        if isinstance(meter, dict) and meter.get("event_name"):
            meters[meter["event_name"]].append({**meter, "feature": f.get("name")})
    env = f" in environment {client.environment_id}" if client.environment_id else ""
    report.add(OK, "api", client.base_url,
               f"reachable, key accepted{env}; {len(meters)} metered event name(s)")
    return meters


# ---------------------------------------------------------------- the checks


def _map_sample(report: CheckReport, cfg: CollectorConfig, records: list[Record]) -> list[dict]:
    mapper = Mapper(cfg.pipeline)
    events: list[dict] = []
    failures: Counter[str] = Counter()
    filtered = 0
    for record in records:
        try:
            event = mapper(record)
        except MappingError as exc:
            failures[f"mapping: {exc.field + ': ' if exc.field else ''}{exc.reason}"] += 1
            continue
        if event is FILTERED:
            filtered += 1
            continue
        try:
            events.append(prepare(record, event, cfg.pipeline.max_event_bytes,
                                  cfg.pipeline.big_numbers).event)
        except InvalidEvent as exc:
            failures[f"validation: {exc.field + ': ' if exc.field else ''}{exc.reason}"] += 1
    for reason, count in failures.most_common():
        stage, _, why = reason.partition(": ")
        report.add(ERROR, stage, f"{count} of {len(records)}", f"would be dead-lettered: {why}")
    if filtered:
        report.add(OK, "mapping", f"{filtered} of {len(records)}", "filtered out by mapping_fn")
    return events


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _check_property(report: CheckReport, name: str, meter: dict, events: list[dict],
                    stringified: bool) -> None:
    agg = meter.get("aggregation") or {}
    kind = str(agg.get("type") or "").upper()
    prop = agg.get("field")
    if kind not in FIELD_AGGREGATIONS or agg.get("expression") or not prop:
        return
    subject = f"{name} → properties.{prop}"
    why = f"meter {meter.get('name') or meter.get('feature')!r} does {kind} over it"
    values = [(e.get("properties") or {}).get(prop) for e in events]
    missing = sum(v is None for v in values)
    if missing:
        report.add(ERROR, "property", subject,
                   f"missing in {missing} of {len(values)} event(s); {why}")
    if kind not in NUMERIC_AGGREGATIONS:
        return
    strings = [v for v in values if isinstance(v, str)]
    if not strings:
        if not missing:
            report.add(OK, "property", subject, f"numeric in all {len(values)} event(s); {why}")
        return
    numeric = all(_is_number_text(s) for s in strings)
    level = WARN if numeric and stringified else ERROR
    hint = ("stringify_properties is on (the seed's \"%v\" workaround); numbers work as numbers"
            if level == WARN else "send a number, e.g. 100 (not \"100\")")
    report.add(level, "property", subject,
               f"a string in {len(strings)} of {len(values)} event(s), e.g. "
               f"{_describe(strings[0])}; {why}: {hint}")


def _check_event_names(report: CheckReport, meters: dict[str, list[dict]], events: list[dict],
                       stringified: bool) -> None:
    by_name: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_name[e["event_name"]].append(e)
    for name, group in sorted(by_name.items()):
        matched = meters.get(name)
        if not matched:
            close = difflib.get_close_matches(name, list(meters), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else (
                f"; known: {', '.join(sorted(meters)[:8]) or 'none'}")
            report.add(ERROR, "event_name", name,
                       f"matches no meter ({len(group)} sampled event(s) would bill nothing){hint}")
            continue
        report.add(OK, "event_name", name, f"metered by {', '.join(repr(m.get('name')) for m in matched)}")
        for meter in matched:
            _check_property(report, name, meter, group, stringified)


def _check_customers(report: CheckReport, client: Lookups, events: list[dict]) -> None:
    counts = Counter(e["external_customer_id"] for e in events)
    found = 0
    for cust, n in sorted(counts.items()):
        answer = client.customer(cust)
        if answer.kind is Kind.ACCEPTED:
            found += 1
        elif answer.status == 404:
            report.add(ERROR, "customer", cust,
                       f"does not exist in Flexprice ({n} sampled event(s)); create it or fix "
                       "external_customer_id")
        else:
            report.add(ERROR, "customer", cust, f"lookup failed: {answer.describe()[:200]}")
    if found:
        report.add(OK, "customer", f"{found} of {len(counts)}", "exist in Flexprice")


def run_check(cfg: CollectorConfig, sample: int = 100, timeout: float = 10.0) -> CheckReport:
    """Everything above, in order; stops early when the API or the input is unusable."""
    report = CheckReport()
    try:
        client = Lookups(cfg.output.flexprice)
    except SecretError as exc:  # e.g. api_key_env names a variable that is not set here
        report.add(ERROR, "api", "api_key", str(exc))
        return report
    try:
        meters = _api(report, client)
        if meters is None:
            return report
        try:
            records = sample_records(cfg, sample, timeout)
        except SampleError as exc:
            report.add(ERROR, "input", "kafka", str(exc))
            return report
        if not records:
            report.add(WARN, "input", "sample", "no records to sample (empty topics?)")
            return report
        report.sampled = len(records)
        events = _map_sample(report, cfg, records)
        _check_event_names(report, meters, events, cfg.pipeline.stringify_properties)
        _check_customers(report, client, events)
    finally:
        client.close()
    return report

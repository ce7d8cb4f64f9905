"""Collector configuration: one pydantic model tree whose field names are the YAML keys.

The shape follows the Bento collector's YAML (``input`` / ``pipeline`` / ``output``) so a
Bento config ports over by renaming processors, not by relearning the file.  ``${VAR}`` and
``${VAR:default}`` are expanded from the environment inside each parsed scalar value (never in
the raw text, so a secret holding ``#``, ``: `` or a quote stays one value); durations are strings
such as ``50ms``/``1s``/``2m`` and sizes ``4MB``/``512KiB``.  Unknown keys are errors.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

#: Flexprice's own limits (API-NOTES.md): no bulk request may exceed these.
MAX_BULK_EVENTS = 1000
MAX_BODY_BYTES = 32 * 1024 * 1024
#: The largest single event: it must still fit one request with the ``{"events":[…]}`` envelope.
MAX_EVENT_BYTES = MAX_BODY_BYTES - 64


class ConfigError(ValueError):
    """A config file that cannot be used; the message names each field path and reason."""


def parse_duration(value: Any) -> float:
    """``"200ms"`` → 0.2 seconds; bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 1s or 2m")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"invalid duration {value!r}: expected e.g. 500ms, 1s, 2m")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def _size(value: Any, parse: ValidatorFunctionWrapHandler) -> int:
    """``"4MB"`` → 4_000_000 bytes, ``"1MiB"`` → 1_048_576; bare numbers are bytes
    (``pydantic.ByteSize`` parses; this keeps the error saying what a size looks like)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4MB")
    if isinstance(value, int) and value < 0:
        raise ValueError("size must not be negative")
    try:
        return int(parse(value))
    except ValidationError as exc:
        if {e["type"] for e in exc.errors()} <= {"byte_size", "byte_size_unit"}:
            raise ValueError(f"invalid size {value!r}: expected e.g. 512KB, 4MB, 1MiB") from None
        raise  # a bound (ge/le) the field sets: pydantic's own words


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[pydantic.ByteSize, WrapValidator(_size)]
#: ``parse_size("4MB") == 4_000_000``
parse_size = TypeAdapter(ByteSize).validate_python


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- input


class GenerateInput(_Model):
    """Synthetic events, deterministic from ``seed`` (the Bento ``generate`` input's role)."""

    count: int = Field(100, ge=0, description="events to generate; 0 = unbounded")
    interval: Duration = 0.0
    seed: int = 42
    batch_size: int = Field(500, ge=1, le=100_000)
    start_time: str | None = Field(
        None, description="RFC3339 time of event 0; default: when the pipeline is built")
    customers: list[str] = Field(
        default_factory=lambda: [f"cust_{i:03d}" for i in range(1, 11)], min_length=1)
    event_names: list[str] = Field(
        default_factory=lambda: ["api.request", "storage.gb", "compute.minutes"], min_length=1)
    property_name: str = "value"
    value_range: tuple[float, float] = (1, 100)
    integer_values: bool = True
    source: str = "flexprice-beam-generate"

    @field_validator("value_range")
    @classmethod
    def _finite_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(x) for x in (*v, v[1] - v[0])):
            raise ValueError("value_range must be two finite numbers")
        return v

    @field_validator("start_time")
    @classmethod
    def _rfc3339_start(cls, v: str | None) -> str | None:
        if v is not None:
            from flexprice_beam.core.events import parse_timestamp

            parse_timestamp(v)
        return v

    @model_validator(mode="after")
    def _timestamps_fit(self) -> GenerateInput:
        # Event i is stamped start_time + i·interval; the last one must still be a date
        # (an unbounded run is checked for 10^9 events).
        import datetime as dt

        from flexprice_beam.core.events import parse_timestamp

        start = (parse_timestamp(self.start_time) if self.start_time
                 else dt.datetime.now(dt.timezone.utc))
        try:
            start + dt.timedelta(seconds=self.interval * (self.count or 10**9))
        except OverflowError:
            raise ValueError("start_time + count × interval goes past the year 9999") from None
        return self


class TlsConfig(_Model):
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    skip_cert_verify: bool = False


class SaslConfig(_Model):
    """``password`` (a literal: local runs only) or ``password_env``: the name of an
    environment variable on the workers, which Kafka's EnvVarConfigProvider reads there, so
    the job graph holds only ``${env:NAME}`` (docs/runners.md, "Secrets")."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    user: str
    password: SecretStr | None = None
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("password", mode="before")
    @classmethod
    def _password_given_empty(cls, v: Any) -> Any:
        if v is None:  # ``password: ${UNSET}``: written, but empty
            raise ValueError("is empty")
        return v

    @model_validator(mode="after")
    def _one_password_source(self) -> SaslConfig:
        given = [k for k in ("password", "password_env") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of password, password_env "
                             f"(got {', '.join(given) or 'none'})")
        if self.password is not None and not self.password.get_secret_value():
            raise ValueError("password is empty (if it names an environment variable, is "
                             "that variable set?)")
        return self


#: consumer properties that other keys own: setting them twice would be ambiguous, and
#: enable.auto.commit would commit offsets ahead of delivery
_OWNED_PROPERTIES = {
    "bootstrap.servers": "addresses", "group.id": "consumer_group",
    "auto.offset.reset": "start_from_oldest", "enable.auto.commit": "(always false: offsets "
    "are committed only behind delivery)", "security.protocol": "tls.enabled / sasl",
    "sasl.mechanism": "sasl.mechanism", "ssl.truststore.location": "tls.ca_file",
    "ssl.keystore.location": "tls.cert_file / tls.key_file",
    "key.deserializer": "(set by the reader)", "value.deserializer": "(set by the reader)",
}
_SECRET_PROPERTY = re.compile(r"password|secret|jaas|ssl\.keystore\.(key|certificate)|"
                              r"ssl\.truststore\.certificates|token|credential", re.I)


def consumer_property_refused(key: str) -> str | None:
    """Why ``input.kafka.consumer_properties`` may not carry ``key`` (None: it may)."""
    if _SECRET_PROPERTY.search(key):
        return ("a secret does not go in consumer_properties (it would be shown with the "
                "job's options): use input.kafka.sasl.password / tls.key_file")
    owner = _OWNED_PROPERTIES.get(key.strip().lower())
    if owner:
        return f"set by input.kafka.{owner}" if not owner.startswith("(") else \
            f"not settable {owner}"
    return None


def broker_list(items: list[str]) -> list[str]:
    """One address per entry: ``${KAFKA_BROKERS}`` may expand to "a:9092,b:9092"."""
    return [a.strip() for item in items for a in item.split(",") if a.strip()]


class KafkaInput(_Model):
    addresses: list[str] = Field(min_length=1)
    topics: list[str] = Field(min_length=1)
    consumer_group: str = "flexprice-beam"
    start_from_oldest: bool = True
    tls: TlsConfig = TlsConfig()
    sasl: SaslConfig | None = None
    max_records: int | None = Field(None, ge=1, description="stop after N records (bounded run)")
    max_read_time: Duration | None = Field(None, description="stop after this long (bounded run)")
    # Bounded ranges (io/kafka_range.py): fixed when the run starts, half-open [start, stop).
    stop_at_end: bool = Field(False, description="read up to the end offsets seen at the start")
    start_time: str | None = Field(None, description="RFC3339: first record time to read")
    stop_time: str | None = Field(None, description="RFC3339: records from this time on are not read")
    start_offsets: dict[str, int] = Field(
        default_factory=dict, description='{"topic/partition": first offset to read}')
    stop_offsets: dict[str, int] = Field(
        default_factory=dict, description='{"topic/partition": first offset not to read}')
    commit_offsets: bool = Field(
        True, description="bounded runs: commit the group's offsets after delivery")
    batch_size: int = Field(500, ge=1, le=100_000)
    max_record_bytes: ByteSize = 1024 * 1024
    consumer_properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Java KafkaConsumer properties passed through (max.poll.records, "
                    "fetch.max.bytes, ...); not secrets, not what other keys set")

    @model_validator(mode="after")
    def _check_consumer_properties(self) -> KafkaInput:
        for key in self.consumer_properties:
            why = consumer_property_refused(key)
            if why:
                raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                    type=PydanticCustomError("refused_property", why),
                    loc=("consumer_properties", key), input=key)])
        return self

    @property
    def bounded(self) -> bool:
        """A run that ends by itself (a range or a limit) rather than streaming until stopped."""
        return bool(self.max_records or self.max_read_time or self.stop_at_end
                    or self.stop_time or self.stop_offsets)

    @field_validator("addresses")
    @classmethod
    def _split_addresses(cls, v: list[str]) -> list[str]:
        return broker_list(v)

    @model_validator(mode="after")
    def _check_range(self) -> KafkaInput:
        errors: list[InitErrorDetails] = []

        def bad(loc: tuple, value: Any, reason: str) -> None:
            errors.append(InitErrorDetails(type=PydanticCustomError(
                "kafka_range", "{reason}", {"reason": reason}), loc=loc, input=value))

        times = {}
        for key in ("start_time", "stop_time"):
            value = getattr(self, key)
            if value is not None:
                from flexprice_beam.core.events import parse_timestamp

                try:
                    times[key] = parse_timestamp(value)
                except ValueError as exc:
                    bad((key,), value, str(exc))
        if len(times) == 2 and times["start_time"] >= times["stop_time"]:
            bad(("stop_time",), self.stop_time, "must be after start_time (the range is "
                "half-open: start_time <= t < stop_time)")
        for key in ("start_offsets", "stop_offsets"):
            for name, offset in getattr(self, key).items():
                reason = _partition_key_problem(name, self.topics)
                if reason is None and offset < 0:
                    reason = "offset must not be negative"
                if reason is not None:
                    bad((key, name), offset, reason)
        for name, stop in self.stop_offsets.items():
            start = self.start_offsets.get(name)
            if start is not None and stop < start:
                bad(("stop_offsets", name), stop, f"is before start_offsets {start}")
        if (self.start_time or self.start_offsets) and not self.bounded:
            key = "start_time" if self.start_time else "start_offsets"
            bad((key,), getattr(self, key), "needs an end: set stop_at_end, stop_time, "
                "stop_offsets, max_records or max_read_time (a streaming run starts at the "
                "consumer group's committed offsets)")
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


def partition_key(name: str) -> tuple[str, int]:
    """``"topic/partition"`` → ``(topic, partition)``; topic names cannot contain ``/``."""
    topic, _, partition = name.rpartition("/")
    return topic, int(partition)


def _partition_key_problem(name: str, topics: list[str]) -> str | None:
    topic, sep, partition = name.rpartition("/")
    if not sep or not topic or not partition.isdigit():
        return 'expected "topic/partition", e.g. "events/0"'
    if topic not in topics:
        return f"topic {topic!r} is not in input.kafka.topics"
    return None


class InputConfig(_Model):
    generate: GenerateInput | None = None
    kafka: KafkaInput | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> InputConfig:
        if (self.generate is None) == (self.kafka is None):
            raise ValueError("exactly one input is required: 'generate' or 'kafka'")
        return self


# ---------------------------------------------------------------- pipeline


class PipelineConfig(_Model):
    mapping: dict[str, Any] | None = Field(
        None, description="field: JMESPath expression (or a literal) evaluated on each record")
    mapping_fn: str | None = Field(None, description='"package.module:function" record -> event')
    stringify_properties: bool = False
    big_numbers: Literal["dead_letter", "string"] = Field(
        "dead_letter", description="a property number beyond ±2^53 (which Flexprice would store "
        "rounded): dead-letter the event naming the field, or send the number as a string")
    max_event_bytes: ByteSize = Field(
        1024 * 1024, ge=256, le=MAX_EVENT_BYTES,
        description="a mapped event larger than this (serialised) is dead-lettered, not sent")

    @model_validator(mode="after")
    def _one_mapping(self) -> PipelineConfig:
        if self.mapping is not None and self.mapping_fn is not None:
            raise ValueError("use either 'mapping' or 'mapping_fn', not both")
        if self.mapping_fn is not None and ":" not in self.mapping_fn:
            raise ValueError("mapping_fn must look like 'package.module:function'")
        return self


# ---------------------------------------------------------------- output


class BatchingConfig(_Model):
    count: int = Field(500, ge=1, le=MAX_BULK_EVENTS)
    byte_size: ByteSize = Field(4 * 1000 * 1000, ge=1024, le=MAX_BODY_BYTES)
    period: Duration = 1.0


class RetryConfig(_Model):
    """Transient errors (429, 5xx, network) retry with backoff until ``max_elapsed``; a 429's
    ``Retry-After`` is honoured. A rate-limit storm is the most transient error there is, so
    the default bound is time only; ``max_attempts`` is an opt-in count limit."""

    max_attempts: int | None = Field(None, ge=1, description="opt-in limit on tries per batch")
    initial_backoff: Duration = 0.2
    max_backoff: Duration = 30.0
    max_elapsed: Duration = 600.0


#: The places an API key can come from (output.flexprice); all but api_key are references.
API_KEY_SOURCES = ("api_key", "api_key_env", "api_key_file", "api_key_secret")
SECRET_VERSION_PATTERN = r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$"


def clean_api_key(key: str, source: str) -> str:
    """Strip; refuse what a header cannot carry, never echoing the key. A key read from a
    file or a Kubernetes secret often ends in a newline, and a header with a stray space or
    newline makes the HTTP stack raise an error that quotes the value into logs."""
    key = key.strip()
    if key and not all(0x21 <= ord(ch) <= 0x7E for ch in key):
        raise ValueError(f"{source} contains spaces, control or non-ASCII characters "
                         "(value not shown)")
    return key


#: RFC 9110 token characters.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Headers the client sets itself; ``headers:`` may not replace them.
_OWN_HEADERS = frozenset({"x-api-key", "x-environment-id", "content-type", "content-length",
                          "host", "transfer-encoding", "connection", "accept", "user-agent"})


def _in_flight(value: Any) -> Any:
    """``max_in_flight``: a count 1..256 or ``adaptive``, with one clear message otherwise."""
    if value == "adaptive":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise ValueError(f"must be a number of requests from 1 to 256, or adaptive (got {value!r})")
    return value


class FlexpriceOutput(_Model):
    api_host: str = Field(min_length=1)
    #: Where the key comes from -- exactly one. ``api_key`` is a literal (local runs only: it
    #: would be pickled into the job); the others are resolved on the worker in setup().
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_file: str | None = Field(None, min_length=1)
    api_key_secret: str | None = Field(None, pattern=SECRET_VERSION_PATTERN)
    scheme: Literal["http", "https"] = "https"
    mode: Literal["bulk", "single"] = "bulk"
    batching: BatchingConfig = BatchingConfig()
    # Little's law: events in flight = rate × latency. 16 × 500 covers ~170k events/s (one
    # local core) at ~45 ms per request, or a busy worker against a ~100 ms API.
    #: or ``adaptive``: AIMD on latency, 429 and 5xx, between 1 and ``adaptive_max_in_flight``
    max_in_flight: Annotated[int | Literal["adaptive"],
                             BeforeValidator(_in_flight)] = Field(16, union_mode="left_to_right")
    adaptive_max_in_flight: int = Field(64, ge=1, le=256)
    timeout: Duration = 10.0
    retry: RetryConfig = RetryConfig()
    skip_cert_verify: bool = False
    allow_insecure: bool = False
    #: sent as ``X-Environment-ID``: needed by keys from the server's config file (self-hosted),
    #: which carry no environment; API-created keys are bound to one and need none
    environment_id: str | None = Field(None, min_length=1, max_length=255)
    #: extra headers on every request (an API gateway's own token, a tenant routing header)
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("environment_id")
    @classmethod
    def _clean_environment(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not v or not all(0x21 <= ord(ch) <= 0x7E for ch in v):
            raise ValueError("environment_id must be printable ASCII without spaces")
        return v

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        out = {}
        for name, value in v.items():
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f"header {name!r} is set by the collector itself"
                                 + (" (use environment_id)" if name.lower() == "x-environment-id"
                                    else " (use api_key)" if name.lower() == "x-api-key" else ""))
            text = value.get_secret_value().strip()
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
                raise ValueError(f"header {name!r} holds a control character (value not shown)")
            try:
                text.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r} holds characters HTTP headers cannot carry "
                                 "(value not shown)") from None
            out[name] = SecretStr(text)
        return out

    @property
    def in_flight_cap(self) -> int:
        """The most requests ever in flight per process: what pools and buffers are sized by."""
        mif = self.max_in_flight
        return self.adaptive_max_in_flight if mif == "adaptive" else mif

    @property
    def base_url(self) -> str:
        host = self.api_host.rstrip("/")
        if host.endswith("/v1"):
            host = host[:-3]
        if "://" in host:
            return host
        return f"{self.scheme}://{host}"

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_given_empty(cls, v: Any) -> Any:
        if v is None:  # ``api_key: ${UNSET}``: written, but empty
            raise ValueError("is empty")
        return v

    @field_validator("api_key")
    @classmethod
    def _clean_key(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else SecretStr(clean_api_key(v.get_secret_value(), "api_key"))

    @model_validator(mode="after")
    def _check_key(self) -> FlexpriceOutput:
        given = [k for k in API_KEY_SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(API_KEY_SOURCES)} "
                             f"(got {', '.join(given) or 'none'})")
        if self.api_key is not None and not self.api_key.get_secret_value():
            raise ValueError("api_key is empty (if it names an environment variable, "
                             "is that variable set?)")
        return self

    @model_validator(mode="after")
    def _check_transport(self) -> FlexpriceOutput:
        url = self.base_url
        scheme, _, rest = url.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        host = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.split(":")[0]
        if scheme == "http" and not self.allow_insecure and not is_loopback_host(host):
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError(
                    "insecure_transport",
                    "plain http to {host} would send the API key in clear text; use "
                    "scheme: https, or set allow_insecure: true to accept that",
                    {"host": host}),
                loc=("scheme",), input=self.scheme)])
        return self


def is_loopback_host(host: str) -> bool:
    """True for this machine (``localhost``, 127.0.0.0/8, ``::1``): plain http stays local."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DeadLetterKafka(_Model):
    """A dead-letter topic (Kafka Connect's ``errors.deadletterqueue.topic.name`` role)."""

    addresses: list[str] = Field(min_length=1)
    topic: str = Field(min_length=1)
    tls: TlsConfig = TlsConfig()
    sasl: SaslConfig | None = None

    @field_validator("addresses")
    @classmethod
    def _split_addresses(cls, v: list[str]) -> list[str]:
        return broker_list(v)


class DeadLetterOutput(_Model):
    """Where dead letters go: files under any Beam FileSystems URL (local, ``s3://``,
    ``gs://``, ``hdfs://``), a Kafka topic, or both (every letter goes to each)."""

    path: str | None = "./dead-letter"
    kafka: DeadLetterKafka | None = None

    @model_validator(mode="after")
    def _somewhere(self) -> DeadLetterOutput:
        if not self.path and self.kafka is None:
            raise ValueError("dead letters need a 'path' or a 'kafka' topic (or both)")
        return self


class OutputConfig(_Model):
    flexprice: FlexpriceOutput
    dead_letter: DeadLetterOutput = DeadLetterOutput()


class MetricsConfig(_Model):
    address: str = "0.0.0.0:4195"
    enabled: bool = True


class LoggerConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class CollectorConfig(_Model):
    """The whole file."""

    input: InputConfig
    pipeline: PipelineConfig = PipelineConfig()
    output: OutputConfig
    metrics: MetricsConfig = MetricsConfig()
    logger: LoggerConfig = LoggerConfig()


# ---------------------------------------------------------------- loading


def interpolate(text: str, env: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` / ``${VAR:default}`` in one string, once: an expanded value is never
    expanded again, so a secret that itself contains ``${`` stays as it is. An unset
    variable without a default becomes empty."""
    env = os.environ if env is None else env
    return _ENV_RE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


def interpolate_values(data: Any, env: Mapping[str, str] | None = None) -> Any:
    """``interpolate`` inside every string *value* of a parsed YAML tree (keys untouched).

    Expanding after parsing means no value can change the file's structure: ``abc #def``
    stays ``abc #def`` (in the raw text, ``#`` started a comment) and ``a: b`` or a quote
    stays one string. A value that is exactly one ``${VAR}`` and expands to nothing is None,
    as ``key:`` would be, so it is reported as empty, naming its field.
    """
    env = os.environ if env is None else env
    if isinstance(data, dict):
        return {k: interpolate_values(v, env) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate_values(v, env) for v in data]
    if isinstance(data, str) and "${" in data:
        out = interpolate(data, env)
        if out == "" and _ENV_RE.fullmatch(data.strip()):
            return None
        return out
    return data


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e.get("input", "") is None:
            msg = "is empty (if it names an environment variable, is that variable set?)"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's complaint and position, without PyYAML's snippet of the line: that is
    the raw file, which may hold an API key or a SASL password written in literally."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    parts = []
    for what, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if what:
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            parts.append(f"{what}{where}")
    return "; ".join(parts) or type(exc).__name__


def load_config_text(text: str, source: str = "<config>",
                     env: dict[str, str] | None = None) -> CollectorConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        hint = ('; if a ${VAR} placeholder sits inside {…} or […], quote it: "${VAR}"'
                if "${" in text else "")
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}{hint}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with input/output keys")
    data = interpolate_values(data, env)
    try:
        return CollectorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> CollectorConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    return load_config_text(text, str(path), env)

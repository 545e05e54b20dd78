"""Configuration Structs the actors need. ``cluster.settings`` assembles them into one tree.

They are plain msgspec Structs so Ray can pickle them to actors; clients (Kafka, Snowflake)
are built from them inside the actor, never passed.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from actors.secret import Secret

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class KafkaConnection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How to reach a Kafka cluster (local broker, Strimzi, or any managed Kafka)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    # OAUTHBEARER with an OIDC identity provider (managed Kafka services), librdkafka's
    # sasl.oauthbearer.* properties: the client-credentials grant against the token endpoint.
    sasl_oauthbearer_method: Literal["default", "oidc"] | None = None
    sasl_oauthbearer_client_id: str | None = None
    sasl_oauthbearer_client_secret: Secret | None = None
    sasl_oauthbearer_token_endpoint_url: str | None = None
    sasl_oauthbearer_scope: str | None = None
    sasl_oauthbearer_extensions: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: Secret | None = None
    # Extra librdkafka properties, e.g. {"socket.keepalive.enable": "true"}. A property whose
    # name says it holds a secret (password, secret, token, a PEM key, a JAAS/OAUTHBEARER
    # config) is moved to extra_secrets when the settings are read, so it prints masked.
    extra: dict[str, str] = {}
    extra_secrets: dict[str, Secret] = {}

    def __post_init__(self) -> None:
        secret = {key: value for key, value in self.extra.items() if is_secret_property(key)}
        if secret:
            msgspec.structs.force_setattr(
                self, "extra", {k: v for k, v in self.extra.items() if k not in secret})
            msgspec.structs.force_setattr(
                self, "extra_secrets",
                {**self.extra_secrets, **{k: Secret(v) for k, v in secret.items()}})
        if self.sasl_mechanism == "OAUTHBEARER" and self.sasl_oauthbearer_method == "oidc":
            missing = [f"kafka.{name}" for name in (
                "sasl_oauthbearer_client_id", "sasl_oauthbearer_client_secret",
                "sasl_oauthbearer_token_endpoint_url") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"sasl_oauthbearer_method oidc needs {', '.join(missing)}")

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties common to producers, consumers and admin clients."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        optional: dict[str, str | Secret | None] = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "sasl.oauthbearer.method": self.sasl_oauthbearer_method,
            "sasl.oauthbearer.client.id": self.sasl_oauthbearer_client_id,
            "sasl.oauthbearer.client.secret": self.sasl_oauthbearer_client_secret,
            "sasl.oauthbearer.token.endpoint.url": self.sasl_oauthbearer_token_endpoint_url,
            "sasl.oauthbearer.scope": self.sasl_oauthbearer_scope,
            "sasl.oauthbearer.extensions": self.sasl_oauthbearer_extensions,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password,
        }
        for key, value in optional.items():
            if value is not None:
                conf[key] = value.reveal() if isinstance(value, Secret) else value
        conf.update(self.extra)
        conf.update({key: value.reveal() for key, value in self.extra_secrets.items()})
        return conf


_SECRET_WORDS: Final = ("password", "secret", "token", "credential", "jaas")


def is_secret_property(name: str) -> bool:
    """Whether a librdkafka property can hold a secret: its name says password, secret, token
    or credential, it is a PEM (``ssl.key.pem``, which holds the private key) or the
    OAUTHBEARER config string (``sasl.oauthbearer.config``, which may hold a client secret)."""
    lowered = name.lower()
    return (any(word in lowered for word in _SECRET_WORDS) or lowered.endswith(".pem")
            or lowered == "sasl.oauthbearer.config")


class TopicsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The events topic and its dead-letter topic (same partition count, partition p -> p)."""

    events: str = "events"
    dead_letter: str = "events.dlq"
    partitions: PositiveInt = 4
    # What topics are created with. acks=all waits for min.insync.replicas copies: with fewer
    # than 2 of either, an acknowledged event lives on one broker only (actors.durability).
    replication_factor: PositiveInt = 3
    min_insync_replicas: PositiveInt = 2
    # "local": a single-broker development cluster (the local stack, tests), where existing
    # topics with one replica are accepted; "replicated" refuses them (actors.durability).
    durability: Literal["replicated", "local"] = "replicated"

    def __post_init__(self) -> None:
        from actors.durability import settings_problem

        problem = settings_problem(self.replication_factor, self.min_insync_replicas,
                                   self.durability)
        if problem is not None:
            raise ValueError(problem)


class SnowflakeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Snowflake account, or the local fakesnow emulator (host/port/protocol set)."""

    account: str = "eventray"
    user: str = "eventray"
    # How the pipeline logs in (actors.snowflake_auth): "password" (snowflake.password),
    # "key_pair" (a PKCS#8 key: private_key_file or the PEM in private_key, optionally
    # encrypted with private_key_passphrase), "oauth" or "pat" (an OAuth access token or a
    # programmatic access token: token, or token_file read at each login). A missing
    # credential stops the start with the setting's name; only the local emulator (a loopback
    # host) logs in without one.
    auth: Literal["password", "key_pair", "oauth", "pat"] = "password"
    password: Secret | None = None
    private_key_file: str | None = None
    private_key: Secret | None = None
    private_key_passphrase: Secret | None = None
    token: Secret | None = None
    token_file: str | None = None
    database: str = "EVENTRAY"
    schema: str = "PUBLIC"
    warehouse: str | None = None
    role: str | None = None
    # Set for the emulator or a private link; leave None for a real account.
    host: str | None = None
    port: int | None = None
    protocol: Literal["http", "https"] = "https"
    events_table: str = "EVENTS"
    offsets_table: str = "KAFKA_OFFSETS"
    # Each partition's owner epoch: a replaced consumer's writes are refused (actors.warehouse).
    owners_table: str = "KAFKA_PARTITION_OWNERS"
    # The partition-count history (actors.partition_moves): retries across added partitions.
    partition_marks_table: str = "KAFKA_PARTITION_MARKS"
    login_timeout_s: PositiveInt = 30

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``snowflake.connector.connect``; ``ConfigError`` naming the
        setting when the chosen credential is missing or unusable."""
        from actors.snowflake_auth import credential_kwargs

        kwargs: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            **credential_kwargs(self),
            "database": self.database,
            "schema": self.schema,
            "login_timeout": self.login_timeout_s,
            "session_parameters": {"QUERY_TAG": "eventray"},
        }
        for key, value in (("warehouse", self.warehouse), ("role", self.role),
                           ("host", self.host), ("port", self.port)):
            if value is not None:
                kwargs[key] = value
        if self.host is not None:
            kwargs["protocol"] = self.protocol
        return kwargs


class ValidationRules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Business rules applied by the consumers (the contract checks shapes; these check sense)."""

    max_amount_minor: PositiveInt = 100_000_000_00  # 100M in minor units
    max_future_skew_s: PositiveFloat = 300.0
    max_past_age_days: PositiveInt = 365 * 5


class ConsumerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a partition consumer reads and batches."""

    group_id: str = "eventray-pipeline"
    # Large batches amortize the warehouse's per-statement cost (measured on the emulator:
    # 20k-event batches gave the pipeline 16.9k events/s against 14.4k with 5k).
    batch_max_events: PositiveInt = 20_000
    batch_max_bytes: PositiveInt = 16 * 1024 * 1024
    # A batch is flushed at batch_max_events, batch_max_bytes, or this long after its first
    # record: up to this much latency, traded for batches large enough for the warehouse
    # (per row, the emulator's INSERT cost 28 us in 20k-row batches, 43 in 5k).
    batch_max_wait_s: PositiveFloat = 1.0
    # Flush a batch as soon as a read comes back short (the partition is caught up) while none
    # of the partition's batches is being written: light load gets latency, heavy load (a write
    # always in flight) keeps gathering, so batches grow with the warehouse's write time.
    flush_when_caught_up: bool = True
    poll_timeout_s: PositiveFloat = 0.2
    dedup_window_s: PositiveFloat = 24 * 3600.0
    # Keys a partition's window holds at most: on disk ~41 bytes each (4 GB at 100 million,
    # 24 h at 1,160 events/s per partition), and the rows a rebuild on another node reads.
    # Size it to the partition's event rate times dedup_window_s; past it the oldest keys are
    # forgotten early, counted in eventray_dedup_evicted_early and logged.
    dedup_max_keys: PositiveInt = 100_000_000
    # Where the window lives (docs/guarantees.md, "The retry window's bound"): "disk" is a
    # RocksDB directory per partition (actors.window_store), bounded by disk; "memory" a dict
    # in the actor, held to window_ram_mb (~340 bytes a key) whatever dedup_max_keys says.
    window_store: Literal["disk", "memory"] = "disk"
    # The disk window's root: <window_dir>/<namespace>/<topic>-<partition>; empty: the system's
    # temporary directory's eventray-window. A node-local disk, not a shared one.
    window_dir: str = ""
    # RAM one consumer's window may use whatever it holds: RocksDB's block cache and memtables
    # and the changes of the batches in flight (disk), or the whole window (memory).
    window_ram_mb: PositiveInt = 256
    # At a (re)start the window's rows are read on the consumer's own warehouse session, this
    # many per page (memory holds one page: ~250 bytes a row, beside the window itself).
    window_page_rows: PositiveInt = 50_000
    # A recovery read of the dead-letter topic fails once it has read nothing and not reached
    # the partition's end for this long (then resumes after its last record, up to 5 times);
    # a long tail that keeps coming is read to its end, however long it takes.
    recovery_stall_s: PositiveFloat = 30.0
    # Logical CPUs a consumer actor reserves; small so many fit on a 2-core node.
    num_cpus: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    # Bytes of memory a consumer actor reserves (Ray's ``memory`` resource; 0: none, the
    # laptop default): window_ram_mb, a batch, the Kafka prefetch and the interpreter. Before
    # window_ram_mb bounded the window, a full one peaked at 1.24 GB RSS (2M keys + 1M dead
    # letters, README "bench recovery"); cluster/k8s/rayjob.yaml still reserves 1.5 GiB.
    memory_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_restarts: int = -1


class SinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The Snowflake sink pool."""

    # Writers (one Snowflake connection each); a partition always writes through the same one.
    # The local emulator spends more CPU per row the more writers it has (28, 33, 37 us for
    # 1, 2, 4); with every part on 2 cores, 2 writers gave the most end to end. A real
    # warehouse scales with writers: raise it there (e.g. to the partition count).
    pool_size: PositiveInt = 2
    max_restarts: int = -1
    num_cpus: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    # Bytes of memory a sink actor reserves (Ray's ``memory`` resource; 0: none). A sink holds
    # one batch (up to batch_max_events rows) and its encoded statement at a time.
    memory_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    retry_attempts: PositiveInt = 5
    retry_backoff_s: PositiveFloat = 0.5
    # gzip level of the connector's request bodies (it ships with 9; see
    # actors.request_compression): 1 is ~8x cheaper in CPU for ~35% more bytes on the wire, 0
    # stores them. Unset: 0 when snowflake.host is a loopback name (the local emulator, where
    # compressing saves nothing), else 1.
    request_compression_level: Annotated[int, msgspec.Meta(ge=0, le=9)] | None = None
    # Every N successful writes of a partition, delete its offset rows below the offset just
    # committed (the offsets table is append-only: one row per batch); 0 never prunes.
    prune_offsets_every: Annotated[int, msgspec.Meta(ge=0)] = 100
    # The sink session's LOCK_TIMEOUT: a statement waiting longer for a lock (a partition's
    # owner row held by a transaction a killed sink left open) fails and the write is retried,
    # each attempt logged, instead of waiting silently up to Snowflake's default 12 hours.
    # 0 leaves the account's value (docs/guarantees.md, "A sink killed mid-transaction").
    lock_timeout_s: Annotated[int, msgspec.Meta(ge=0)] = 120
    # The sink session's STATEMENT_TIMEOUT_IN_SECONDS; 0 leaves the account's or warehouse's.
    statement_timeout_s: Annotated[int, msgspec.Meta(ge=0)] = 0


class AutoscaleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The supervisor's scaling policy for the sink pool (``cluster.autoscale_policy``); read by
    the supervisor alone. Off: the pool keeps ``sink.pool_size``. On: ``sink.pool_size`` is
    the size a new pipeline starts with, and the policy moves it within the bounds."""

    enabled: bool = False
    # Add sinks when the backlog (every partition's lag) would take longer than this to commit
    # at the rate of the last 30 s.
    target_drain_s: PositiveFloat = 30.0
    # Bounds of the pool; max_sinks is also bounded by the partition count (a partition's
    # writes go through one sink at a time, so more sinks than partitions would idle).
    min_sinks: PositiveInt = 1
    max_sinks: PositiveInt = 8
    # No change within this long of the last one: each change moves partitions, and a new
    # sink may wait for a node to start (minutes on Kubernetes).
    cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # Add sinks only while the busiest sink writes at least this share of the time: below it
    # the sinks are not what holds the backlog up, and more would not drain it faster.
    scale_up_busy: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    # Remove a sink when the backlog drains within scale_down_drain_share * target_drain_s and
    # the sinks write less than scale_down_busy of the time on average (not saturated). Busy
    # shares do not add up across a shrink: fewer sinks write fewer, larger batches, so the
    # backlog decides and its growing past target_drain_s again undoes a shrink that was too
    # much (no sooner than cooldown_s). Up at target_drain_s, down under a quarter of it: the
    # gap keeps the pool from flapping.
    scale_down_busy: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.8
    scale_down_drain_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.25
    # One step up at most multiplies the pool by this (down: one sink per step).
    max_step_factor: Annotated[float, msgspec.Meta(ge=1)] = 2.0


class PipelineConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the actors need, handed to the supervisor and on to each actor."""

    kafka: KafkaConnection = KafkaConnection()
    topics: TopicsConfig = TopicsConfig()
    snowflake: SnowflakeConfig = SnowflakeConfig()
    consumer: ConsumerConfig = ConsumerConfig()
    sink: SinkConfig = SinkConfig()
    rules: ValidationRules = ValidationRules()
    namespace: str = "eventray"
    reconcile_interval_s: PositiveFloat = 2.0
    # How often the supervisor samples lag and sets its gauges (lag, drain time, pool size).
    metrics_interval_s: PositiveFloat = 5.0
    # The sink pool's scaling policy (read by the supervisor alone).
    autoscale: AutoscaleConfig = AutoscaleConfig()

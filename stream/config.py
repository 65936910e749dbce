"""Stream settings: one pydantic-settings model read from `BUNDLECAST_*` env vars, mirrored as CLI flags.

`settings_options` turns every field into a `--flag` of a typer command, so the env var names, the flags
and their help texts cannot drift apart.
"""

from __future__ import annotations

import functools
import inspect
import ssl
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.markup import escape

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class StreamSettings(BaseSettings):
    """Everything a worker, replay, tail, demo or bench run needs to know about Kafka, model and state."""

    model_config = SettingsConfigDict(env_prefix="BUNDLECAST_", extra="ignore", protected_namespaces=())

    kafka_bootstrap: str | None = Field(
        None,
        description="Kafka bootstrap servers, host:port[,host:port]. Unset: `demo` and `bench` start Tansu.",
    )
    kafka_security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Kafka security protocol.")
    kafka_sasl_mechanism: SaslMechanism = Field("PLAIN", description="SASL mechanism (SASL_* protocols).")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle to verify the brokers (SSL, SASL_SSL)."
    )
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Private key of the client certificate.")
    kafka_session_timeout_s: float = Field(
        6.0, gt=0, description="Consumer group session timeout; a dead worker's partitions move after this."
    )
    commit_interval_s: float = Field(
        0.5,
        gt=0,
        description="How often the worker commits the input offsets it has answered. After a crash, events "
        "since the last commit are answered again, with the same event_id (Faust's 2.8 s re-answered 9-11% "
        "of the events in 5 kills at 300/s; 0.5 s 2-3%, at no measured cost in throughput).",
    )
    producer_max_batch_bytes: int = Field(
        512 * 1024,
        ge=1,
        description="Most bytes per producer batch (per partition). An answer is ~9 KB, so a 16 KiB batch "
        "(the Kafka client default) carries one and every answer costs a produce request. 1 sends one "
        "record per batch, which state recovery on Tansu needs: its ListOffsets reports a multi-record "
        "batch's end as base offset + 1.",
    )
    recovery_consistency_check: bool = Field(
        False,
        description="Refuse to start when a partition's local state is ahead of its changelog's end "
        "(Faust's check). Off: a worker that refuses to start is the worst failure, and after a crash the "
        "local RocksDB state is the newest copy of the partitions it held. Tansu reports a multi-record "
        "batch's end as base offset + 1, so with the check on every kill -9 became a restart crash loop.",
    )
    app_id: str = Field(
        "bundlecast", description="Consumer group id and prefix of the state changelog topic."
    )
    input_topic: str = Field("clickstream", description="Topic the clickstream events are read from.")
    output_topic: str = Field("recommendations", description="Topic the recommendations are published to.")
    dlq_topic: str = Field("clickstream.dlq", description="Dead-letter topic for malformed input.")
    partitions: int = Field(
        6, ge=1, description="Partitions of topics the worker creates (input's if it exists)."
    )
    replication_factor: int = Field(1, ge=1, description="Replication factor of topics the worker creates.")
    model_dir: Path = Field(
        Path("artifacts"), description="Model artifact root (LATEST) or a version directory."
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="How often to check LATEST for a new model version (0: only on SIGHUP)."
    )
    state_dir: Path = Field(Path("state"), description="Directory of the worker's RocksDB session state.")
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: off)."
    )
    web_port: int = Field(
        6066,
        ge=0,
        le=65535,
        description="Port of the query API (GET /recommendations/USER_ID, POST /recommendations; Faust's web "
        "server; 0: off).",
    )
    web_bind: str = Field("0.0.0.0", description="Interface the query API listens on.")
    web_host: str | None = Field(
        None,
        description="Host name or IP other workers reach this one's query API at (a query for a user held "
        "elsewhere is forwarded there). Default: this host's address.",
    )
    compute_threads: int = Field(
        1,
        ge=1,
        description="Threads for the model (torch) and FAISS (OpenMP). 1 suits small batches: more spin-wait "
        "and fight the event loop for the cores.",
    )
    batch_size: int = Field(256, ge=1, description="Most events per micro-batch (one model forward each).")
    batch_linger_ms: float = Field(
        50.0,
        ge=0,
        description="Longest a micro-batch stays open after its first event (it stays open as long as the "
        "last batch took to handle, within the idle time and this).",
    )
    batch_idle_ms: float = Field(
        2.0,
        ge=0,
        description="A micro-batch closes once no event has arrived for this long: batches grow while "
        "events keep coming (a backlog) and go out as soon as the input pauses.",
    )
    fetch_max_wait_ms: int = Field(
        10,
        ge=0,
        description="Longest time the broker may hold an empty input fetch. Faust fixes it at 1,500 ms; a "
        "broker that does not answer a waiting fetch when data arrives (Tansu) then delays events that long.",
    )
    prefetch_backoff_ms: float = Field(
        20.0,
        ge=0,
        description="Longest the input consumer holds off fetching from a broker while records it fetched "
        "earlier still wait for the worker. aiokafka holds off 100 ms, for every partition on that broker, "
        "so input stalled for up to 100 ms whenever a batch was being handled.",
    )
    top_k: int = Field(20, ge=1, le=1000, description="Items per recommendation.")
    bundles_per_answer: int = Field(
        3, ge=0, le=10, description="Most bundles per recommendation (users with a known item; 0: none)."
    )
    bundle_size: int = Field(3, ge=2, le=4, description="Items per bundle.")
    query_idle_s: float = Field(
        30.0,
        ge=0,
        description="While the query API had a request within this many seconds, the worker computes the "
        "stream's answers off its event loop, so queries never wait for a micro-batch; otherwise on the "
        "loop, which answers the stream faster (0: always on the loop).",
    )
    answer_cache_users: int = Field(
        10_000,
        ge=0,
        description="Users whose latest stream answer the query API keeps (~9 KB each) and returns while "
        "their session and the model are unchanged, instead of computing it again (0: off).",
    )
    max_payload_bytes: int = Field(64 * 1024, ge=1, description="Larger input messages go to the DLQ.")
    max_id_chars: int = Field(256, ge=1, description="Longer event, user, item or session ids go to the DLQ.")
    dlq_payload_bytes: int = Field(
        1024,
        ge=0,
        description="Bytes of the original key and value a dead letter keeps (with the value's size and "
        "SHA-256, and its topic, partition and offset to find the rest).",
    )
    output_retention_ms: int = Field(
        7 * 24 * 3600 * 1000,
        ge=-1,
        description="retention.ms of the recommendations topic when the worker creates it (-1: forever). "
        "Answers name their user, so they should not outlive the sessions they came from.",
    )
    dlq_retention_ms: int = Field(
        7 * 24 * 3600 * 1000,
        ge=-1,
        description="retention.ms of the dead-letter topic when the worker creates it (-1: forever).",
    )
    liveness_stall_s: float = Field(
        60.0,
        gt=0,
        description="/healthz reports the worker dead once it has had input waiting for this long without "
        "handling any of it.",
    )
    session_max_events: int = Field(50, ge=1, description="Most recent events kept per user.")
    session_gap_s: float = Field(
        1800.0,
        gt=0,
        description="Event-time inactivity that starts a new session (recent events are dropped).",
    )
    state_ttl_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Wall-clock inactivity after which a user's whole state is deleted.",
    )
    purchased_max: int = Field(500, ge=0, description="Most purchased items remembered per user (excluded).")
    popularity_half_life_s: float = Field(
        3600.0, gt=0, description="Half-life of the stream popularity counts."
    )

    @property
    def batch_linger_s(self) -> float:
        return self.batch_linger_ms / 1000.0

    @property
    def batch_idle_s(self) -> float:
        return self.batch_idle_ms / 1000.0

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL, None for plaintext protocols."""
        if not self.kafka_security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile is not None:
            context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        return context

    def bootstrap_servers(self) -> str:
        """The configured brokers; a clear error when there are none."""
        if self.kafka_bootstrap is None:
            raise ValueError(
                "no Kafka broker configured: set BUNDLECAST_KAFKA_BOOTSTRAP or --kafka-bootstrap"
            )
        return self.kafka_bootstrap

    @property
    def sasl_password_text(self) -> str | None:
        return self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None

    def aiokafka_options(self) -> dict[str, Any]:
        """Connection and security keyword arguments shared by every aiokafka client we create."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers(),
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            options |= {
                "sasl_mechanism": self.kafka_sasl_mechanism,
                "sasl_plain_username": self.kafka_sasl_username,
                "sasl_plain_password": self.sasl_password_text,
            }
        if (context := self.ssl_context()) is not None:
            options["ssl_context"] = context
        return options

    def answer_client_options(self) -> dict[str, Any]:
        """The answers' librdkafka producer (`stream.transport.AnswerProducer`): connection, security and
        batch size."""
        return self.librdkafka_options() | {
            "batch.size": self.producer_max_batch_bytes,
            "client.id": f"{self.app_id}-answers",
        }

    def librdkafka_options(self) -> dict[str, Any]:
        """`aiokafka_options` in librdkafka's names, for the confluent-kafka clients (which read the TLS
        files themselves: no SSL context is built)."""
        options: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers(),
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            options |= {
                "sasl.mechanism": self.kafka_sasl_mechanism,
                "sasl.username": self.kafka_sasl_username,
                "sasl.password": self.sasl_password_text,
            }
        if self.kafka_security_protocol.endswith("SSL"):
            files = {
                "ssl.ca.location": self.kafka_ssl_cafile,
                "ssl.certificate.location": self.kafka_ssl_certfile,
                "ssl.key.location": self.kafka_ssl_keyfile,
            }
            options |= {name: str(path) for name, path in files.items() if path is not None}
        return {name: value for name, value in options.items() if value is not None}


def _flag_type(annotation: Any) -> Any:
    """The type typer should parse a settings field as (Literal and SecretStr become str)."""
    if isinstance(annotation, types.UnionType) or get_origin(annotation) is not None:
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if get_origin(annotation) is Literal:
            return str
        return _flag_type(args[0])
    return str if annotation is SecretStr else annotation


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one CLI flag per `StreamSettings` field to a typer command that takes `settings`.

    A flag given on the command line overrides the env var, which overrides the default.
    """
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "settings"]
    flags = []
    for name, field in StreamSettings.model_fields.items():
        default = "" if field.default is None else f"; default: {field.default}"
        option = typer.Option(
            None,
            f"--{name.replace('_', '-')}",
            help=escape(f"{field.description} [env: BUNDLECAST_{name.upper()}{default}]"),
            show_default=False,
            rich_help_panel="Settings",
        )
        flags.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_flag_type(field.annotation)
            )
        )

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        overrides = {name: kwargs.pop(name) for name in StreamSettings.model_fields}
        settings = StreamSettings(**{k: v for k, v in overrides.items() if v is not None})
        return command(settings=settings, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + flags)  # type: ignore[attr-defined]
    return wrapper

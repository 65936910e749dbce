"""Topic creation with the admin API, before the Faust app is built.

The session table's changelog must have as many partitions as the input topic (Faust refuses to run
otherwise), and brokers that auto-create topics (Tansu makes 4 partitions) would otherwise decide that
count for us. So the worker creates its topics explicitly and sizes its table from the input topic. The
output and dead-letter topics name users, so they are created with a retention (`retention.ms`).
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.config import StreamSettings

TLS_PROBE_TIMEOUT_S = 5.0


class BrokerConnectionError(RuntimeError):
    """The worker cannot talk to Kafka as configured; the message says what to check."""


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    existing = set(await admin.list_topics())
    present = [name for name in names if name in existing]
    if not present:
        return {}
    return {topic["topic"]: len(topic["partitions"]) for topic in await admin.describe_topics(present)}


def _topic_configs(settings: StreamSettings) -> dict[str, dict[str, str]]:
    return {
        settings.output_topic: {"retention.ms": str(settings.output_retention_ms)},
        settings.dlq_topic: {"retention.ms": str(settings.dlq_retention_ms)},
    }


async def probe_tls(settings: StreamSettings) -> None:
    """For SSL and SASL_SSL, complete a TLS handshake with the first bootstrap server, so that a TLS
    client facing a plaintext listener (or an untrusted certificate) says so at once: the Kafka client
    only reports "Unable to bootstrap", after retrying for most of a minute."""
    context = settings.ssl_context()
    if context is None:
        return
    address = settings.aiokafka_options()["bootstrap_servers"].split(",")[0].strip()
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=context, server_hostname=host),
            TLS_PROBE_TIMEOUT_S,
        )
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise BrokerConnectionError(
            f"TLS handshake with {address} failed ({type(error).__name__}: {str(error) or 'no answer'}): "
            f"BUNDLECAST_KAFKA_SECURITY_PROTOCOL is {settings.kafka_security_protocol}; is that listener "
            "TLS, and is its certificate signed by BUNDLECAST_KAFKA_SSL_CAFILE?"
        ) from error
    writer.close()


async def ensure_topics(settings: StreamSettings) -> int:
    """Create missing input, output and DLQ topics; return the input topic's partition count."""
    await probe_tls(settings)
    admin = AIOKafkaAdminClient(**settings.aiokafka_options())
    try:
        await admin.start()
    except Exception as error:
        protocol = settings.kafka_security_protocol
        mechanism = f" ({settings.kafka_sasl_mechanism})" if protocol.startswith("SASL") else ""
        raise BrokerConnectionError(
            f"cannot connect to Kafka at {settings.kafka_bootstrap} over {protocol}{mechanism}: "
            f"{type(error).__name__}: {error}. Check BUNDLECAST_KAFKA_BOOTSTRAP and that the broker's "
            "listener speaks this protocol (BUNDLECAST_KAFKA_SECURITY_PROTOCOL, _SASL_*)."
        ) from error
    try:
        names = [settings.input_topic, settings.output_topic, settings.dlq_topic]
        counts = await _partition_counts(admin, names)
        partitions = counts.get(settings.input_topic, settings.partitions)
        configs = _topic_configs(settings)
        missing = [
            NewTopic(name, partitions, settings.replication_factor, topic_configs=configs.get(name, {}))
            for name in names
            if name not in counts
        ]
        if missing:
            response = await admin.create_topics(missing)
            for topic, code, message in response.topic_errors:
                if code not in (0, 36):  # 36: created meanwhile by another worker
                    raise RuntimeError(f"cannot create topic {topic}: error {code} {message}")
        return partitions
    finally:
        await admin.close()

"""Topic creation on a real broker (Tansu): retention of the topics that name users, and connection
settings that do not match the broker's listener named in one line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream.broker import EmbeddedBroker
from stream.config import StreamSettings
from stream.topics import BrokerConnectionError, ensure_topics


async def retention_ms(broker: EmbeddedBroker, topic: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        (resource,) = response.resources
        return {entry[0]: entry[1] for entry in resource[4]}["retention.ms"]
    finally:
        await admin.close()


def test_output_and_dead_letter_topics_are_created_with_their_retention(kafka_broker: EmbeddedBroker) -> None:
    settings = StreamSettings(
        kafka_bootstrap=kafka_broker.bootstrap, output_retention_ms=3_600_000, dlq_retention_ms=86_400_000
    )
    assert asyncio.run(ensure_topics(settings)) == settings.partitions
    assert asyncio.run(retention_ms(kafka_broker, "recommendations")) == "3600000"
    assert asyncio.run(retention_ms(kafka_broker, "clickstream.dlq")) == "86400000"


@pytest.mark.parametrize(
    ("protocol", "named"), [("SSL", "TLS handshake"), ("SASL_PLAINTEXT", r"over SASL_PLAINTEXT \(PLAIN\)")]
)
def test_a_security_protocol_the_listener_does_not_speak_names_itself(
    kafka_broker: EmbeddedBroker, protocol: str, named: str
) -> None:
    settings = StreamSettings(
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka_security_protocol=protocol,
        kafka_sasl_username="shop",
        kafka_sasl_password="secret",
    )
    with pytest.raises(BrokerConnectionError, match=named):
        asyncio.run(ensure_topics(settings))


def test_the_worker_command_reports_a_tls_mismatch_in_one_line(
    kafka_broker: EmbeddedBroker, artifact_root: Path
) -> None:
    env = os.environ | {
        "BUNDLECAST_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "BUNDLECAST_MODEL_DIR": str(artifact_root),  # the model loads before Kafka is reached
        "BUNDLECAST_KAFKA_SECURITY_PROTOCOL": "SSL",
        "BUNDLECAST_METRICS_PORT": "0",
        "BUNDLECAST_WEB_PORT": "0",
        "COLUMNS": "400",
    }
    command = [sys.executable, "-m", "stream.cli", "worker"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1 and "Traceback" not in output, output
    assert len(output.splitlines()) == 1 and "TLS handshake" in output, output

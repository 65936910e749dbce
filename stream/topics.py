"""Topic creation with the admin API, before the Faust app is built.

The session table's changelog must have as many partitions as the input topic (Faust refuses to run
otherwise), and brokers that auto-create topics (Tansu makes 4 partitions) would otherwise decide that
count for us. So the worker creates its topics explicitly and sizes its table from the input topic.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.config import StreamSettings


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    existing = set(await admin.list_topics())
    present = [name for name in names if name in existing]
    if not present:
        return {}
    return {topic["topic"]: len(topic["partitions"]) for topic in await admin.describe_topics(present)}


async def ensure_topics(settings: StreamSettings) -> int:
    """Create missing input, output and DLQ topics; return the input topic's partition count."""
    admin = AIOKafkaAdminClient(**settings.aiokafka_options())
    await admin.start()
    try:
        names = [settings.input_topic, settings.output_topic, settings.dlq_topic]
        counts = await _partition_counts(admin, names)
        partitions = counts.get(settings.input_topic, settings.partitions)
        missing = [
            NewTopic(name, partitions, settings.replication_factor) for name in names if name not in counts
        ]
        if missing:
            response = await admin.create_topics(missing)
            for topic, code, message in response.topic_errors:
                if code not in (0, 36):  # 36: created meanwhile by another worker
                    raise RuntimeError(f"cannot create topic {topic}: error {code} {message}")
        return partitions
    finally:
        await admin.close()

"""Every name of faust-streaming, mode and aiokafka that the stream overrides or reads beyond their
documented API, checked when a worker starts.

`stream.transport`, `stream.worker` and `stream.sessions` replace or read these (each entry says where).
Those packages are pinned to the versions the tests ran on (pyproject.toml, constraints.txt), but an
install can still drift; an override of a name that upstream renamed would then silently become a new,
unused method. So `check_upstream` looks each one up where upstream defines it, and a worker refuses to
start, with one line naming what is missing, when one is gone.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version
from types import ModuleType

import faust
import faust.streams
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from faust.app.base import App
from faust.stores.rocksdb import Store
from faust.transport import consumer as faust_consumer
from faust.transport import producer as faust_producer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types.streams import StreamT
from mode import Service
from mode.services import ServiceCallbacks
from mode.utils.queues import FlowControlEvent

PINNED = ("faust-streaming", "mode-streaming", "aiokafka")


@dataclass(frozen=True)
class Reliance:
    """A name upstream defines on `owner` (a class, as the class that defines it, or a module), which our
    code (`used_by`) overrides or reads. An instance attribute is found among the names the owner's
    method `set_in` assigns."""

    owner: type | ModuleType
    name: str
    used_by: str
    set_in: str | None = None

    @property
    def where(self) -> str:
        owner = self.owner
        qualified = (
            owner.__name__ if isinstance(owner, ModuleType) else f"{owner.__module__}.{owner.__qualname__}"
        )
        return f"{qualified}.{self.name}"

    def holds(self) -> bool:
        if self.set_in is None:
            return self.name in vars(self.owner)
        method = vars(self.owner).get(self.set_in)
        # Through wrappers (functools.wraps), as tracing or instrumentation may have put around the method.
        code = getattr(inspect.unwrap(method) if callable(method) else method, "__code__", None)
        return code is not None and self.name in code.co_names


RELIANCES = (
    # stream.transport.InputConsumerThread: fetch timing and seek counting on aiokafka's fetcher.
    Reliance(faust_aiokafka.AIOKafkaConsumerThread, "on_start", "InputConsumerThread.on_start"),
    Reliance(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", "InputConsumerThread._fetch_records"),
    Reliance(faust_aiokafka.AIOKafkaConsumerThread, "_consumer", "InputConsumerThread.on_start"),
    Reliance(AIOKafkaConsumer, "_fetcher", "InputConsumerThread.on_start", set_in="__init__"),
    Reliance(Fetcher, "_fetch_max_wait_ms", "InputConsumerThread.on_start", set_in="__init__"),
    Reliance(Fetcher, "_prefetch_backoff", "InputConsumerThread.on_start", set_in="__init__"),
    Reliance(Fetcher, "seek_to", "InputConsumerThread.on_start (wrapped to count seeks)"),
    # stream.transport.InputConsumer: no delivery during a seek, no stale records after one, a commit on
    # revoke.
    Reliance(faust_aiokafka.Consumer, "_new_consumer_thread", "InputConsumer._new_consumer_thread"),
    Reliance(faust_consumer.ThreadDelegateConsumer, "_thread", "InputConsumer.getmany", set_in="__init__"),
    Reliance(faust_consumer.Consumer, "perform_seek", "InputConsumer.perform_seek"),
    Reliance(faust_consumer.Consumer, "getmany", "InputConsumer.getmany"),
    Reliance(faust_consumer.Consumer, "on_partitions_revoked", "InputConsumer.on_partitions_revoked"),
    Reliance(faust_consumer.Consumer, "_acked", "InputConsumer.on_partitions_revoked", set_in="__init__"),
    Reliance(Service, "wait_first", "InputConsumer.wait_first"),
    # stream.transport.DrainingProducerBuffer: a flush that waits for everything buffered before it.
    Reliance(ProducerBuffer, "__post_init__", "DrainingProducerBuffer.__post_init__"),
    Reliance(ProducerBuffer, "put", "DrainingProducerBuffer.put"),
    Reliance(ProducerBuffer, "flush", "DrainingProducerBuffer.flush"),
    Reliance(ProducerBuffer, "_send_pending", "DrainingProducerBuffer._send_pending"),
    Reliance(ProducerBuffer, "message_sent", "DrainingProducerBuffer.flush", set_in="__post_init__"),
    # stream.transport.AnswerProducer: the answers' librdkafka producer, a mode service.
    Reliance(ServiceCallbacks, "on_start", "AnswerProducer.on_start"),
    Reliance(ServiceCallbacks, "on_stop", "AnswerProducer.on_stop"),
    # stream.transport.DrainingProducer: tombstones as record batches, everything delivered before a commit.
    Reliance(faust_producer.Producer, "buffer", "DrainingProducer.__init__", set_in="__init__"),
    Reliance(faust_aiokafka.Producer, "on_start", "DrainingProducer.on_start"),
    Reliance(faust_aiokafka.Producer, "flush", "DrainingProducer.flush"),
    Reliance(faust_aiokafka.Producer, "_ensure_producer", "DrainingProducer.send_to_partitions"),
    Reliance(faust_aiokafka.Transport, "Consumer", "BundlecastTransport.Consumer"),
    Reliance(faust_aiokafka.Transport, "Producer", "BundlecastTransport.Producer"),
    # stream.transport.BundlecastApp and ResumeOnceFlowControl.
    Reliance(App, "_new_transport", "BundlecastApp._new_transport"),
    Reliance(App, "flow_control", "BundlecastApp.flow_control"),
    Reliance(FlowControlEvent, "resume", "ResumeOnceFlowControl.resume"),
    Reliance(FlowControlEvent, "is_active", "ResumeOnceFlowControl.resume"),
    # stream.worker: batches that close when input pauses, table writes from a batch.
    Reliance(faust.streams, "_current_event", "worker.event_context"),
    Reliance(faust.Stream, "_enable_passive", "BatchingStream.take_batches"),
    Reliance(StreamT, "current_event", "BatchingStream.take_batches"),
    # stream.sessions: deletes in the partition that holds the state.
    Reliance(Store, "_dbs", "SessionPartitions", set_in="__init__"),
    Reliance(Store, "_key_index", "SessionPartitions._delete_locally", set_in="__init__"),
    Reliance(Store, "offset_key", "SessionPartitions.stored_from"),
)


class UpstreamChanged(RuntimeError):
    """An installed faust-streaming, mode or aiokafka lacks a name the stream relies on."""


def missing(reliances: Iterable[Reliance] = RELIANCES) -> list[Reliance]:
    return [reliance for reliance in reliances if not reliance.holds()]


def check_upstream(reliances: Iterable[Reliance] = RELIANCES) -> None:
    """Raise `UpstreamChanged` naming every relied-on name the installed packages no longer have."""
    gone = missing(reliances)
    if gone:
        installed = ", ".join(f"{name} {version(name)}" for name in PINNED)
        names = "; ".join(f"{r.where} (used by {r.used_by})" for r in gone)
        raise UpstreamChanged(
            f"the installed {installed} lack what the stream overrides or reads: {names}. "
            "Install the tested versions: pip install -c constraints.txt -e ."
        )

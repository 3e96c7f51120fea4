"""The Kafka clients a service process makes, behind one small interface.

`Application` and the steps it wires never construct a client themselves: they ask the
`Clients` they were given. Production passes `KafkaClients` (confluent-kafka, that is
librdkafka against a real broker); the commit order's tests pass a process of
`brokers.local.LocalBroker`, which speaks the same part of the interface in memory and
can kill every client of a process at a chosen point.
"""

from __future__ import annotations

from typing import Any, Protocol

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient


class Clients(Protocol):
    """Makes the clients of one process (a consumer, a producer, an admin client)."""

    def consumer(self, config: dict[str, Any]) -> Consumer: ...

    def producer(self, config: dict[str, Any]) -> Producer: ...

    def admin(self, config: dict[str, Any]) -> AdminClient: ...


class KafkaClients:
    """confluent-kafka's clients, configured as given."""

    def consumer(self, config: dict[str, Any]) -> Consumer:
        return Consumer(config)

    def producer(self, config: dict[str, Any]) -> Producer:
        return Producer(config)

    def admin(self, config: dict[str, Any]) -> AdminClient:
        return AdminClient(config)

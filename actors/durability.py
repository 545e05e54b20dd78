"""Whether a topic's replication makes ``acks=all`` mean something.

The gateway answers 202 only after Kafka acknowledged an event with ``acks=all``; the dead-letter
producer commits with ``acks=all`` too. Kafka acknowledges such a write once every in-sync
replica has it, and refuses it while fewer than the topic's ``min.insync.replicas`` are in sync.
So an acknowledged event survives the loss of a broker only when the topic has at least two
replicas AND ``min.insync.replicas`` is at least two: with one replica there is no second copy;
with ``min.insync.replicas=1`` the leader alone may acknowledge after its followers fell out of
sync, and losing that leader loses the event (or an unclean election rewrites the log).

Production topics therefore get replication factor 3 and ``min.insync.replicas`` 2 (one broker
may be down and writes go on); an existing topic below that is refused at pipeline and gateway
start, unless the settings say ``topics.durability = "local"`` (a single-broker development
cluster such as the local stack, where no second copy can exist).

``settings_problem`` judges the settings, ``topic_problem`` a topic as Kafka describes it; both
pure. ``check_durability`` asks Kafka (``actors.kafka_admin.topic_durability``) and raises
``DurabilityError`` naming each topic, its settings and the setting that allows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from actors.exceptions import DurabilityError

if TYPE_CHECKING:
    from actors.config import KafkaConnection, TopicsConfig

# Fewer copies than this: an acknowledged event is on one broker only.
MIN_COPIES: Final = 2
LOCAL: Final = "local"
ALLOW_HINT: Final = ('set topics.durability = "local" (EVENTRAY_TOPICS__DURABILITY=local) '
                     "only for a single-broker development cluster")


class TopicDurability(msgspec.Struct, frozen=True):
    """A topic's replication as Kafka reports it."""

    topic: str
    replication_factor: int   # the fewest replicas of any of its partitions
    min_insync_replicas: int  # the topic's effective value (its own or the broker default)


def settings_problem(replication_factor: int, min_insync_replicas: int,
                     durability: str) -> str | None:
    """Why topics created with these settings would not be what ``durability`` promises (or
    could never be written), None when they are fine."""
    if min_insync_replicas > replication_factor:
        return (f"min_insync_replicas {min_insync_replicas} exceeds replication_factor "
                f"{replication_factor}: Kafka would refuse every acks=all write")
    if durability == LOCAL or (replication_factor >= MIN_COPIES
                               and min_insync_replicas >= MIN_COPIES):
        return None
    return (f"replication_factor {replication_factor} and min_insync_replicas "
            f"{min_insync_replicas} leave an acknowledged (acks=all) event on one broker; "
            f"use at least {MIN_COPIES} of each (the defaults are 3 and 2), or {ALLOW_HINT}")


def topic_problem(found: TopicDurability, durability: str) -> str | None:
    """Why ``acks=all`` protects nothing on this topic, None when it does (or ``durability`` is
    local)."""
    if durability == LOCAL:
        return None
    reasons: list[str] = []
    if found.replication_factor < MIN_COPIES:
        reasons.append(f"replication factor {found.replication_factor} keeps one copy")
    if found.min_insync_replicas < MIN_COPIES:
        reasons.append(f"min.insync.replicas {found.min_insync_replicas} lets the leader alone "
                       "acknowledge")
    if found.min_insync_replicas > found.replication_factor:
        reasons.append(f"min.insync.replicas {found.min_insync_replicas} exceeds its "
                       f"{found.replication_factor} replicas, so every acks=all write fails")
    if not reasons:
        return None
    return (f"topic {found.topic} (replication factor {found.replication_factor}, "
            f"min.insync.replicas {found.min_insync_replicas}): {' and '.join(reasons)}")


def refusal(problems: Sequence[str]) -> str:
    """The message of a ``DurabilityError`` for one or more topics' problems."""
    return (f"acks=all would not protect acknowledged events: {'; '.join(problems)}. Raise the "
            f"topic's replication (kafka-reassign-partitions; kafka-configs --alter "
            f"--add-config min.insync.replicas={MIN_COPIES}), or {ALLOW_HINT}")


def check_durability(conn: KafkaConnection, topics: TopicsConfig, names: Sequence[str]) -> None:
    """Raise ``DurabilityError`` when an existing topic among ``names`` makes ``acks=all``
    meaningless and ``topics.durability`` is not local. Topics that do not exist yet are left
    to whoever creates them (``ensure_topics`` uses the settings, checked when loaded)."""
    from actors.kafka_admin import topic_durability

    if topics.durability == LOCAL:
        return
    problems = [problem for found in topic_durability(conn, list(names))
                if (problem := topic_problem(found, topics.durability)) is not None]
    if problems:
        raise DurabilityError(refusal(problems))

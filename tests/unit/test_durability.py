"""Durability decisions (``actors.durability``) and the topic settings they guard, on plain data."""

from __future__ import annotations

import re

import pytest

from actors.config import TopicsConfig
from actors.durability import TopicDurability, refusal, settings_problem, topic_problem
from actors.exceptions import ConfigError
from cluster.settings import SINGLE_BROKER_TOPICS, Settings, load_settings


def test_production_defaults_are_three_replicas_and_two_in_sync() -> None:
    topics = load_settings(environ={}).topics
    assert (topics.replication_factor, topics.min_insync_replicas, topics.durability) == (
        3, 2, "replicated")


@pytest.mark.parametrize(("replicas", "in_sync"), [(3, 2), (2, 2), (5, 3)])
def test_a_replicated_topic_passes(replicas: int, in_sync: int) -> None:
    found = TopicDurability("events", replicas, in_sync)
    assert topic_problem(found, "replicated") is None


@pytest.mark.parametrize(("replicas", "in_sync", "reason"), [
    (1, 1, "replication factor 1 keeps one copy and min.insync.replicas 1 lets the leader "
           "alone acknowledge"),
    (3, 1, "min.insync.replicas 1 lets the leader alone acknowledge"),
    (1, 2, "replication factor 1 keeps one copy and min.insync.replicas 2 exceeds its 1 "
           "replicas, so every acks=all write fails"),
])
def test_a_topic_that_makes_acks_all_meaningless_is_named_with_its_settings(
        replicas: int, in_sync: int, reason: str) -> None:
    found = TopicDurability("events.dlq", replicas, in_sync)
    assert topic_problem(found, "replicated") == (
        f"topic events.dlq (replication factor {replicas}, min.insync.replicas {in_sync}): "
        f"{reason}")


def test_local_durability_accepts_a_single_copy() -> None:
    assert topic_problem(TopicDurability("events", 1, 1), "local") is None


def test_the_refusal_names_the_setting_that_allows_it() -> None:
    message = refusal([topic_problem(TopicDurability("events", 1, 1), "replicated") or ""])
    assert message.startswith("acks=all would not protect acknowledged events: topic events "
                              "(replication factor 1, min.insync.replicas 1)")
    assert 'topics.durability = "local"' in message
    assert "min.insync.replicas=2" in message


def test_settings_below_two_copies_need_local_durability() -> None:
    assert settings_problem(3, 2, "replicated") is None
    assert settings_problem(1, 1, "local") is None
    assert settings_problem(3, 1, "replicated") is not None
    assert settings_problem(1, 1, "replicated") is not None
    # More in-sync replicas than replicas: every write would fail, local or not.
    assert settings_problem(1, 2, "local") is not None


def test_loading_unsafe_topic_settings_fails_naming_the_section() -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "invalid setting topics: replication_factor 1 and min_insync_replicas 1 leave an "
            "acknowledged (acks=all) event on one broker")) as raised:
        load_settings(environ={"EVENTRAY_TOPICS__REPLICATION_FACTOR": "1",
                               "EVENTRAY_TOPICS__MIN_INSYNC_REPLICAS": "1"})
    assert 'topics.durability = "local"' in str(raised.value)
    with pytest.raises(ConfigError, match=re.escape(
            "invalid setting topics: min_insync_replicas 2 exceeds replication_factor 1")):
        load_settings(environ={"EVENTRAY_TOPICS__REPLICATION_FACTOR": "1"})
    with pytest.raises(ConfigError, match="min_insync_replicas 1 leave an acknowledged"):
        load_settings(environ={"EVENTRAY_TOPICS__MIN_INSYNC_REPLICAS": "1"})
    with pytest.raises(ValueError, match="exceeds replication_factor"):
        TopicsConfig(replication_factor=2, min_insync_replicas=3)


def test_the_single_broker_overrides_load_as_local_durability() -> None:
    topics = Settings().with_overrides(SINGLE_BROKER_TOPICS).topics
    assert (topics.replication_factor, topics.min_insync_replicas, topics.durability) == (
        1, 1, "local")
    loaded = load_settings(environ={"EVENTRAY_TOPICS__REPLICATION_FACTOR": "1",
                                    "EVENTRAY_TOPICS__MIN_INSYNC_REPLICAS": "1",
                                    "EVENTRAY_TOPICS__DURABILITY": "local"})
    assert loaded.topics == topics

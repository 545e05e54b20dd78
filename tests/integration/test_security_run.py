"""Security on a whole ``eventray run`` (a local stack of the module's own, free ports):

* every secret the settings and Ray take (the Kafka SASL, SSL-key and OIDC secrets, a secret
  ``kafka.extra`` property, the Snowflake password, the gateway's API key, Ray's token) is set
  to a value carrying one marker, and the marker is nowhere in what the run leaves readable:
  the CLI's output (``run``, ``status``, ``logs``, ``keys``), every log file of the stack and of
  Ray's session, the Ray job and actor metadata the dashboard serves (names, reprs, runtime
  environments), Serve's application status, and the settings as dumped and repr'd;
* schemathesis fuzzes the gateway that run deployed (real Ray Serve, HAProxy ingress) from its
  own ``/openapi.json``: every route and every request content type, positive and negative
  examples, a bounded number of each; no 5xx, every response as documented, and afterwards the
  pipeline holds exactly what it held plus the events that got 202.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from pipeline_helpers import REPO, landed, wait_for

from cluster.local.processes import free_port
from cluster.local.stack import stack_settings
from cluster.settings import Settings, load_settings, to_builtins
from gateway.decoding import MEDIA_TYPES, MediaType

pytestmark = pytest.mark.integration

EVENTRAY = str(Path(sys.executable).parent / "eventray")
MARKER = "5ec7e7" + secrets.token_hex(8)  # hex: a valid Ray token too
API_KEY = f"{MARKER}a1"
SECRETS = {
    "EVENTRAY_KAFKA__SASL_PASSWORD": f"{MARKER}b2",
    "EVENTRAY_KAFKA__SSL_KEY_PASSWORD": f"{MARKER}c3",
    "EVENTRAY_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": f"{MARKER}d4",
    "EVENTRAY_KAFKA__EXTRA": f'{{ "ssl.keystore.password" = "{MARKER}e5" }}',
    "EVENTRAY_SNOWFLAKE__PASSWORD": f"{MARKER}f6",
    "EVENTRAY_GATEWAY__API_KEYS": f'["{API_KEY}"]',
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": f"{MARKER}07",
}
EXAMPLES = 8  # per route, content type and mode: the fuzzing stays within ~a minute
# Every check but "schema-valid data is accepted": the contract is stricter than JSON Schema can
# say (an integer written 2512.0 is a JSON Schema integer, not a msgspec int; an event_id once
# per batch; the charset checks across fields), so some schema-valid events get 400. The
# positive examples that fit are accepted (asserted below), and every response is checked.
LOOSER_THAN_CONTRACT = [schemathesis.checks.positive_data_acceptance]


@dataclass
class Run:
    env: dict[str, str]
    settings: Settings  # pointed at the stack, secrets included (this process only)
    dashboard: str
    gateway: str
    outputs: dict[str, str] = field(default_factory=dict)  # CLI command -> what it printed


def cli(run: Run, *args: str, timeout: float = 600) -> str:
    result = subprocess.run([EVENTRAY, *args], cwd=REPO, env=run.env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    text = result.stdout + result.stderr
    run.outputs[" ".join(args)] = text
    assert result.returncode == 0, f"eventray {' '.join(args)}\n{text[-5000:]}"
    return text


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    state = tmp_path_factory.mktemp("security") / "state"
    dashboard_port, gateway_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("EVENTRAY_", "RAY_ADDRESS", "RAY_AUTH"))}
    env = {**base, **SECRETS,
           "EVENTRAY_LOCAL__STATE_DIR": str(state),
           "EVENTRAY_LOCAL__KAFKA_PORT": "0", "EVENTRAY_LOCAL__KAFKA_CONTROLLER_PORT": "0",
           "EVENTRAY_LOCAL__SNOWFLAKE_PORT": "0", "EVENTRAY_LOCAL__KAFKA_HEAP": "256m",
           "EVENTRAY_LOCAL__CACHE_DIR": str(load_settings().cache_path()),
           "EVENTRAY_RAY__DASHBOARD_PORT": str(dashboard_port),
           "EVENTRAY_RAY__OBJECT_STORE_BYTES": "150000000",
           "EVENTRAY_GATEWAY__PORT": str(gateway_port),
           "EVENTRAY_GATEWAY__SERVE__REPLICA_NUM_CPUS": "0.25"}
    run = Run(env=env, settings=Settings(), dashboard=f"http://127.0.0.1:{dashboard_port}",
              gateway=f"http://127.0.0.1:{gateway_port}")
    try:
        cli(run, "run", "--events", "400", "--batch-size", "50", "--concurrency", "2")
        own = load_settings(environ={k: v for k, v in env.items() if k.startswith("EVENTRAY_")})
        run.settings = stack_settings(own)
        yield run
    finally:
        subprocess.run([EVENTRAY, "down"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120, check=False)


def dashboard_get(run: Run, path: str, **params: Any) -> str:
    response = httpx.get(f"{run.dashboard}{path}", params=params, timeout=30,
                         headers={"Authorization": f"Bearer {SECRETS['RAY_AUTH_TOKEN']}"})
    response.raise_for_status()
    return response.text


# -- the API fuzzed from its own schema ---------------------------------------------------------

@schemathesis.serializer(*[name for name, media in MEDIA_TYPES.items()
                           if media is MediaType.MSGPACK])
def _msgpack(_ctx: Any, value: Any) -> bytes:
    return msgspec.msgpack.encode(_in_msgpack_range(value))


def _in_msgpack_range(value: Any) -> Any:
    """``value`` with integers msgpack cannot hold (past 64 bits, which negative examples
    generate) as floats: what a client could send instead, still a wrong value to refuse."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -2**63 <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [_in_msgpack_range(item) for item in value]
    if isinstance(value, dict):
        return {key: _in_msgpack_range(item) for key, item in value.items()}
    return value


@schemathesis.serializer(*[name for name, media in MEDIA_TYPES.items()
                           if media is MediaType.NDJSON])
def _ndjson(_ctx: Any, value: Any) -> bytes:
    if isinstance(value, str):  # the documented shape: the lines as one string
        return value.encode()
    if isinstance(value, list):
        return b"\n".join(msgspec.json.encode(item) for item in value)
    return msgspec.json.encode(value)  # negative examples: any JSON value


def sent_events(case: Any) -> list[dict[str, Any]]:
    """The events a request carried (for one that got 202)."""
    body = case.body
    if isinstance(body, str):  # NDJSON
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    return body if isinstance(body, list) else [body]


def test_the_run_accepted_and_landed_every_event(run: Run) -> None:
    summary = run.outputs["run --events 400 --batch-size 50 --concurrency 2"]
    assert "lost" in summary and "duplicated" in summary


def test_schemathesis_finds_no_failure_and_only_202s_reach_the_pipeline(run: Run) -> None:
    doc = httpx.get(f"{run.gateway}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    before = landed(run.settings)
    before_keys = {(a, e) for a, e, _, _ in [*before.rows, *before.dead]}
    accepted: set[tuple[str, str]] = set()
    exercised: list[str] = []
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        media_types = list(operation.get_request_payload_content_types())
        # Negative examples need something to break: the GET routes take no input at all.
        modes = [schemathesis.GenerationMode.POSITIVE] + (
            [schemathesis.GenerationMode.NEGATIVE] if media_types else [])
        for media_type in media_types or [None]:
            for mode in modes:
                strategy = operation.as_strategy(generation_mode=mode, media_type=media_type)

                @given(case=strategy)
                @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
                def fuzz(case: Any) -> None:
                    response = case.call_and_validate(base_url=run.gateway, headers=auth,
                                                      excluded_checks=LOOSER_THAN_CONTRACT)
                    if response.status_code == 202:
                        events = sent_events(case)
                        assert response.json()["accepted"] == len(events)
                        accepted.update((e["account_id"], e["event_id"]) for e in events)

                fuzz()
                exercised.append(f"{operation.label} {media_type} {mode.value}")
    # The batch route in each content type, the single-event one in its four, both in both
    # modes; the four GET routes.
    assert len(exercised) == 2 * (len(MEDIA_TYPES) + 4) + 4, exercised
    assert accepted, "no fuzzed request was accepted: the positive examples do not fit"
    expected = before_keys | accepted

    def arrived() -> bool:
        now = landed(run.settings)
        return len({(a, e) for a, e, _, _ in [*now.rows, *now.dead]}) >= len(expected)

    wait_for("the fuzzed events to land", arrived, timeout=180)
    after = landed(run.settings)
    after_keys = [(a, e) for a, e, _, _ in [*after.rows, *after.dead]]
    assert set(after_keys) == expected
    assert len(after_keys) == len(expected)  # each once: in the table or dead-lettered


# -- secrets never printed ------------------------------------------------------------------

def readable_files(root: Path) -> Iterator[Path]:
    """Every file under ``root``, through symlinks (Ray's temp dir may be linked from /tmp),
    each once."""
    seen: set[Path] = set()
    for directory, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = Path(directory, name).resolve()
            if path not in seen and path.is_file() and path.stat().st_size < 64 * 2**20:
                seen.add(path)
                yield path


def test_no_secret_is_printed_anywhere(run: Run, tmp_path: Path) -> None:
    config = run.settings
    cli(run, "status")
    cli(run, "logs", f"consumer:{config.topics.events}:0", "-n", "-1")
    cli(run, "keys", "--file", str(tmp_path / "keys.json"), "create", "sweep",
        "--accounts", "*")
    places: dict[str, str] = dict(run.outputs)
    places["jobs"] = dashboard_get(run, "/api/jobs/")
    places["actors"] = dashboard_get(run, "/api/v0/actors", detail="true", limit="1000")
    places["serve"] = dashboard_get(run, "/api/serve/applications/")
    places["settings dumped"] = json.dumps(to_builtins(config))
    places["settings repr"] = repr(config) + repr(config.gateway_config()) + repr(
        config.pipeline_config())
    state = Path(run.env["EVENTRAY_LOCAL__STATE_DIR"])
    files = list(readable_files(state))
    assert any(path.name.startswith("worker-") for path in files), "no Ray worker log found"
    for path in files:
        places[str(path)] = path.read_bytes().decode(errors="replace")
    found = sorted(place for place, text in places.items() if MARKER in text)
    assert found == [], found
    # The secrets were set, and show masked where the settings are logged at start.
    started = places["run --events 400 --batch-size 50 --concurrency 2"]
    for name in ("kafka.sasl_password", "kafka.ssl_key_password",
                 "kafka.sasl_oauthbearer_client_secret",
                 "kafka.extra_secrets.ssl.keystore.password", "snowflake.password"):
        assert f"{name}=**********" in started, name
    # And the sweep can find it: the key it just created is in what keys create printed.
    assert "sweep" in places[next(p for p in places if p.startswith("keys"))]
    assert "**********" in places["settings dumped"]

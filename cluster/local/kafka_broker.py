"""One local Apache Kafka broker in KRaft mode (combined broker + controller) on 127.0.0.1.

The jars come from ``cluster.local.kafka_jars`` (Maven Central, cached). The storage directory is
formatted on first start only; later starts (and ``restart()`` after a ``kill()``) reuse it, so
acknowledged records survive. The quorum is the single static voter ``1@127.0.0.1:<controller
port>`` (a one-node quorum, like ``kafka-storage format --standalone``, but one that also comes
back when the controller port changes between runs).
"""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path

from actors.config import KafkaConnection
from cluster.local.kafka_jars import LOG4J2_CONFIG, classpath, ensure_kafka
from cluster.local.processes import (
    LocalService,
    ServiceProcess,
    ServiceStartError,
    free_port,
    port_accepts,
    require_free_ports,
)

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
NODE_ID = 1


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as Uuid does)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka refuses ids that look like command-line flags
            return text


class LocalKafka(LocalService):
    """A single-node KRaft broker whose data lives in ``data_dir``."""

    LOG_NAME = "kafka.log"

    def __init__(self, data_dir: Path, port: int = 0, controller_port: int = 0, *,
                 version: str, cache_dir: Path, heap: str = "512m",
                 log_dir: Path | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.version = version
        self.cache_dir = cache_dir.expanduser()
        self.heap = heap
        self.log_dir = (log_dir or self.data_dir).resolve()
        self._requested = (port, controller_port)
        self._port = port
        self._controller_port = controller_port
        self._process: ServiceProcess | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def controller_port(self) -> int:
        return self._controller_port

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self._port}"

    @property
    def metadata_dir(self) -> Path:
        return self.data_dir / "logs"

    def connection(self) -> KafkaConnection:
        return KafkaConnection(bootstrap_servers=self.bootstrap_servers)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Format on first use, launch the broker, wait until a metadata request succeeds."""
        if self.is_running():
            return
        ensure_kafka(self.cache_dir, self.version)
        self._resolve_ports()
        require_free_ports("kafka", {"broker port": self._port,
                                     "controller port": self._controller_port}, HOST)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        properties = self._write_properties()
        if not (self.metadata_dir / "meta.properties").exists():
            self._format(properties)
        cmd = [*self._java(), "kafka.Kafka", str(properties)]
        self._process = ServiceProcess.spawn("kafka", cmd, log_path=self.log_path,
                                             cwd=self.data_dir)
        try:
            self._process.wait_ready(self._metadata_ok, timeout=timeout,
                                     what=f"answering metadata on {self.bootstrap_servers}")
        except ServiceStartError as exc:
            raise ServiceStartError(
                f"kafka on port {self._port} (controller {self._controller_port}): {exc}"
            ) from None
        log.info("kafka ready bootstrap=%s pid=%s data=%s", self.bootstrap_servers, self.pid,
                 self.data_dir)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop if running, then start again on the same data dir and ports."""
        self.stop()
        self.start(timeout)

    # -- internals ---------------------------------------------------------------------------

    def _resolve_ports(self) -> None:
        # Port 0: pick free ports once; restarts keep them so clients' bootstrap stays valid.
        if self._port == 0:
            self._port = free_port(HOST)
        if self._controller_port == 0:
            self._controller_port = free_port(HOST)
            while self._controller_port == self._port:
                self._controller_port = free_port(HOST)

    def _java(self) -> list[str]:
        return [
            "java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp", classpath(self.cache_dir, self.version),
        ]

    def _write_properties(self) -> Path:
        listeners = f"PLAINTEXT://{HOST}:{self._port},CONTROLLER://{HOST}:{self._controller_port}"
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{HOST}:{self._controller_port}",
            "listeners": listeners,
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self._port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.metadata_dir),
            # One node: every internal topic has one replica and needs one in sync.
            "num.partitions": "4",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # After a kill -9 the restarted node must wait out its own stale registration
            # (DUPLICATE_BROKER_REGISTRATION); the 9 s default makes every restart slow.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.retention.hours": "168",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return path

    def _format(self, properties: Path) -> None:
        cmd = [*self._java(), "kafka.tools.StorageTool", "format",
               "--cluster-id", _cluster_id(), "--config", str(properties)]
        log.info("formatting kafka storage dir=%s", self.metadata_dir)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n=== formatting: {' '.join(cmd)}\n".encode())
            log_file.flush()
            try:
                result = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                                        stderr=subprocess.STDOUT, timeout=120, check=False)
            except subprocess.TimeoutExpired:
                raise ServiceStartError(f"kafka storage format of {self.metadata_dir} timed out")\
                    from None
        if result.returncode != 0:
            from cluster.local.processes import start_error
            raise start_error(f"kafka storage format of {self.metadata_dir} failed "
                              f"(exit code {result.returncode})", self.log_path)

    def _metadata_ok(self) -> bool:
        if not port_accepts(self._port, HOST):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        metadata = admin.list_topics(timeout=2)
        return bool(metadata.brokers)

"""The Kafka broker's jars, fetched once from Maven Central into the user's cache.

``<cache_dir>/kafka-<version>/libs/*.jar`` is filled by ``mvn dependency:copy-dependencies``
on the packaged ``kafka-pom.xml``; a ``.complete`` marker (holding the pom's hash) makes a
second run download nothing. A file lock keeps concurrent fetches (two test sessions, ``./dev``
in two shells) from writing the same directory. Also the ``eventray fetch-kafka`` command.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from actors.exceptions import EventrayError

POM = Path(__file__).with_name("kafka-pom.xml")
LOG4J2_CONFIG = Path(__file__).with_name("kafka-log4j2.xml")
MARKER = ".complete"


class KafkaFetchError(EventrayError):
    """The Kafka jars could not be fetched (no Maven, no network, unknown version)."""


def dist_dir(cache_dir: Path, version: str) -> Path:
    return cache_dir.expanduser() / f"kafka-{version}"


def libs_dir(cache_dir: Path, version: str) -> Path:
    return dist_dir(cache_dir, version) / "libs"


def classpath(cache_dir: Path, version: str) -> str:
    """The JVM class path of the fetched broker (a wildcard the JVM expands)."""
    return str(libs_dir(cache_dir, version) / "*")


def _fingerprint(version: str) -> str:
    return hashlib.sha256(POM.read_bytes() + version.encode()).hexdigest()


def is_fetched(cache_dir: Path, version: str) -> bool:
    marker = dist_dir(cache_dir, version) / MARKER
    try:
        return marker.read_text().strip() == _fingerprint(version)
    except FileNotFoundError:
        return False


def ensure_kafka(cache_dir: Path, version: str, *, force: bool = False,
                 out: TextIO | None = None) -> Path:
    """Make sure the jars of Kafka ``version`` are in the cache; return the libs directory."""
    stream = sys.stderr if out is None else out
    target = dist_dir(cache_dir, version)
    if not force and is_fetched(cache_dir, version):
        return target / "libs"
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target / ".lock"):
        if not force and is_fetched(cache_dir, version):  # another process just did it
            return target / "libs"
        _fetch(target, version, stream)
    return target / "libs"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fetch(target: Path, version: str, out: TextIO) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaFetchError("Maven ('mvn') is not on PATH; it fetches the Kafka jars "
                              "(Debian/Ubuntu: apt-get install maven)")
    if shutil.which("java") is None:
        raise KafkaFetchError("'java' is not on PATH; the local Kafka broker needs a JRE 17+")
    (target / MARKER).unlink(missing_ok=True)
    pom = target / "pom.xml"
    shutil.copyfile(POM, pom)
    staging = target / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    print(f"fetching Kafka {version} jars from Maven Central into {target} ...",
          file=out, flush=True)
    started = time.monotonic()
    cmd = [mvn, "-B", "-ntp", "-f", str(pom), f"-Dkafka.version={version}",
           "dependency:copy-dependencies", "-DincludeScope=runtime",
           f"-DoutputDirectory={staging}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=target)
    assert proc.stdout is not None
    tail: list[str] = []
    for raw in proc.stdout:
        line = raw.rstrip()
        tail = [*tail[-29:], line]
        # Maven's own progress, without its banner noise.
        if "Copying" in line or "ERROR" in line or "BUILD" in line:
            print(f"  {line}", file=out, flush=True)
    code = proc.wait()
    if code != 0:
        quoted = "\n".join(f"    {t}" for t in tail)
        raise KafkaFetchError(f"mvn exited with {code} fetching Kafka {version}:\n{quoted}")
    jars = sorted(staging.glob("*.jar"))
    if not any(j.name.startswith(f"kafka_2.13-{version}") for j in jars):
        raise KafkaFetchError(f"mvn finished but {staging} holds no kafka_2.13-{version}.jar")
    libs = target / "libs"
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (target / MARKER).write_text(_fingerprint(version) + "\n")
    print(f"Kafka {version}: {len(jars)} jars in {libs} ({time.monotonic() - started:.1f}s)",
          file=out, flush=True)

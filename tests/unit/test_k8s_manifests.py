"""The Kubernetes deployment in ``cluster/k8s/`` (and the root ``ray-cluster.yaml``) held to its
schemas and to the code it deploys: every object validates against its CRD (closed, as in
``test_manifests``) or the Kubernetes schema; the settings file, the Strimzi topics, user and
secrets agree with what the settings and the code produce; the image is the pinned Ray's and
installs what the runtime imports. What runs (the Serve config, the RayJob's entry point) is
proven against a local Ray in ``tests/integration/test_k8s_local.py``."""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.metadata as metadata
import inspect
import re
import shlex
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from test_layout import imported_modules
from test_manifests import validate_manifest

from actors.dead_letter import _recovery_consumer_config, transactional_id
from actors.dlq_reader import CLI_GROUP_PREFIX
from actors.kafka_admin import ADMIN_OFFSETS_GROUP
from cluster.settings import Settings, load_settings
from gateway.config import ServeConfig
from gateway.serve_app import serve_env

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "cluster" / "k8s"
KUBERNETES_VERSION = "1.37.0"
MANIFESTS = [*sorted(K8S.glob("*.yaml")), ROOT / "ray-cluster.yaml"]
# What a pod's environment gives the settings besides the file: the secrets.
POD_SECRETS = {"EVENTRAY_KAFKA__SASL_PASSWORD": "from-the-kafkauser-secret",
               "EVENTRAY_SNOWFLAKE__PASSWORD": "from-the-snowflake-secret"}


def load(name: str) -> list[dict[str, Any]]:
    path = ROOT / name if (ROOT / name).exists() else K8S / name
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(name: str, kind: str, object_name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in load(name) if doc["kind"] == kind
             and (object_name is None or doc["metadata"]["name"] == object_name)]
    assert len(found) == 1, (name, kind, object_name)
    return found[0]


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    from test_manifests import _crd_schemas

    return _crd_schemas()


# -- schemas ---------------------------------------------------------------------------------

def _documents() -> list[Any]:
    params = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                params.append(pytest.param(doc, id=f"{path.name}:{doc['kind']}/"
                                                  f"{doc['metadata']['name']}"))
    return params


def validate_any(doc: dict[str, Any], schemas: dict[tuple[str, str], Any]) -> None:
    """Against its CRD when one is known, else against the Kubernetes schema (strict)."""
    if (doc["apiVersion"], doc["kind"]) in schemas:
        validate_manifest(doc, schemas)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("doc", _documents())
def test_every_manifest_matches_its_schema(doc: dict[str, Any],
                                           schemas: dict[tuple[str, str], Any]) -> None:
    validate_any(doc, schemas)


def test_the_deployment_has_every_object_the_docs_name() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"])
             for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert kinds >= {
        ("RayService", "eventray-gateway"), ("RayJob", "eventray-pipeline"),
        ("RayCluster", "eventray"), ("Kafka", "eventray"), ("KafkaNodePool", "broker"),
        ("KafkaNodePool", "controller"), ("KafkaTopic", "events"), ("KafkaTopic", "events.dlq"),
        ("KafkaUser", "eventray"), ("ConfigMap", "eventray-settings"),
        ("Service", "eventray-redis"), ("StatefulSet", "eventray-redis"),
        ("PodMonitor", "eventray-ray"),
    }


@pytest.mark.parametrize(("name", "kind", "path", "typo"), [
    ("kafka-topics.yaml", "KafkaTopic", ["spec"], "replica"),
    ("kafka-user.yaml", "KafkaUser", ["spec", "authorization"], "acl"),
    ("rayjob.yaml", "RayJob", ["spec"], "shutdownAfterJobFinish"),
    ("rayservice.yaml", "RayService", ["spec", "rayClusterConfig"], "gcsFaultTolerance"),
    ("podmonitor.yaml", "PodMonitor", ["spec"], "podMetricEndpoints"),
    ("redis.yaml", "StatefulSet", ["spec"], "replica"),
])
def test_a_misspelt_field_is_refused(name: str, kind: str, path: list[str], typo: str,
                                     schemas: dict[tuple[str, str], Any]) -> None:
    broken = copy.deepcopy(next(doc for doc in load(name) if doc["kind"] == kind))
    node = broken
    for key in path:
        node = node[key]
    node[typo] = 1
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate_any(broken, schemas)


# -- the settings file and what it must agree with ---------------------------------------------

def configmap_settings(environ: dict[str, str] | None = None, tmp: Path | None = None) -> Settings:
    """The settings a pod reads: the ConfigMap's file plus the secrets' variables."""
    configmap = one("settings.yaml", "ConfigMap", "eventray-settings")
    (key,) = configmap["data"]
    assert tmp is not None
    path = tmp / key
    path.write_text(configmap["data"][key])
    return load_settings(path, environ={**POD_SECRETS, **(environ or {})})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return configmap_settings(tmp=tmp_path)


def test_the_settings_file_matches_the_strimzi_cluster(settings: Settings) -> None:
    kafka = one("kafka.yaml", "Kafka")
    name = kafka["metadata"]["name"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert settings.kafka.bootstrap_servers == f"{name}-kafka-bootstrap:{listener['port']}"
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka.sasl_username == one("kafka-user.yaml", "KafkaUser")["metadata"]["name"]
    brokers = sum(pool["spec"]["replicas"] for pool in load("kafka.yaml")
                  if pool["kind"] == "KafkaNodePool" and "broker" in pool["spec"]["roles"])
    assert brokers == 3
    for pool in load("kafka.yaml"):
        if pool["kind"] == "KafkaNodePool":
            assert pool["metadata"]["labels"]["strimzi.io/cluster"] == name


def test_the_topics_are_the_settings_topics_with_their_durability(settings: Settings) -> None:
    topics = {doc["spec"]["topicName"]: doc["spec"] for doc in load("kafka-topics.yaml")}
    assert set(topics) == {settings.topics.events, settings.topics.dead_letter}
    for spec in topics.values():
        # The dead-letter topic mirrors the source's partitions (p -> p).
        assert spec["partitions"] == settings.topics.partitions
        assert spec["replicas"] == settings.topics.replication_factor == 3
        assert spec["config"]["min.insync.replicas"] == settings.topics.min_insync_replicas == 2
    assert settings.topics.durability == "replicated"


# -- the KafkaUser's ACLs against what the code asks Kafka for --------------------------------

def wanted_access(settings: Settings) -> dict[str, Any]:
    """Topics, consumer groups and transactional ids the gateway and pipeline use under
    ``settings``, each as the code builds it."""
    conn, topics = settings.kafka, settings.topics
    return {
        "topics": {topics.events, topics.dead_letter},
        "groups": {settings.pipeline.consumer.group_id,
                   _recovery_consumer_config(conn, topics.dead_letter)["group.id"],
                   ADMIN_OFFSETS_GROUP},
        "group_prefixes": {CLI_GROUP_PREFIX},
        "transactional_ids": {transactional_id(topics.events, p)
                              for p in range(topics.partitions)},
    }


def acl_problems(user: dict[str, Any], settings: Settings) -> list[str]:
    """Why the KafkaUser's ACLs are not exactly what the code needs under ``settings``."""
    acls = user["spec"]["authorization"]["acls"]
    wanted = wanted_access(settings)
    problems: list[str] = []

    def rules(kind: str, pattern: str) -> dict[str, set[str]]:
        return {acl["resource"]["name"]: set(acl["operations"]) for acl in acls
                if acl["resource"]["type"] == kind
                and acl["resource"].get("patternType", "literal") == pattern}

    topics = rules("topic", "literal")
    if set(topics) != wanted["topics"] or rules("topic", "prefix"):
        problems.append(f"topics {sorted(topics)} != {sorted(wanted['topics'])}")
    for name, ops in topics.items():
        if ops != {"Describe", "DescribeConfigs", "Read", "Write"}:
            problems.append(f"topic {name}: {sorted(ops)}")
    groups, prefixes = rules("group", "literal"), rules("group", "prefix")
    if set(groups) != wanted["groups"]:
        problems.append(f"groups {sorted(groups)} != {sorted(wanted['groups'])}")
    if set(prefixes) != wanted["group_prefixes"]:
        problems.append(f"group prefixes {sorted(prefixes)} != {sorted(wanted['group_prefixes'])}")
    problems += [f"group {name}: {sorted(ops)}" for name, ops in {**groups, **prefixes}.items()
                 if ops != {"Read"}]
    txn = rules("transactionalId", "prefix")
    if rules("transactionalId", "literal") or len(txn) != 1:
        problems.append(f"transactional ids: want one prefix rule, got {sorted(txn)}")
    for prefix, ops in txn.items():
        missing = sorted(t for t in wanted["transactional_ids"] if not t.startswith(prefix))
        if missing:
            problems.append(f"transactional ids outside prefix {prefix}: {missing}")
        if ops != {"Describe", "Write"}:
            problems.append(f"transactional id {prefix}: {sorted(ops)}")
    if any(acl["resource"]["type"] == "cluster" for acl in acls):
        problems.append("a cluster ACL: the code needs none")
    return problems


def test_the_kafka_user_grants_exactly_what_the_code_uses(settings: Settings) -> None:
    user = one("kafka-user.yaml", "KafkaUser")
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert acl_problems(user, settings) == []


@pytest.mark.parametrize("environ", [
    {"EVENTRAY_PIPELINE__CONSUMER__GROUP_ID": "eventray-consumers"},
    {"EVENTRAY_TOPICS__DEAD_LETTER": "events.dead"},
    {"EVENTRAY_TOPICS__EVENTS": "orders"},
], ids=["renamed-group", "renamed-dlq", "renamed-topic"])
def test_a_renamed_group_or_topic_fails_the_acl_check(environ: dict[str, str],
                                                     tmp_path: Path) -> None:
    renamed = configmap_settings(environ, tmp=tmp_path)
    assert acl_problems(one("kafka-user.yaml", "KafkaUser"), renamed) != []


def test_the_acls_name_every_group_id_the_code_sets() -> None:
    """A new ``group.id`` in the runtime code must be added to wanted_access (and the ACLs)."""
    runtime = [p for p in (ROOT / "actors").glob("*.py")] + [
        p for p in (ROOT / "gateway").glob("*.py")] + list((ROOT / "cluster").glob("*.py"))
    setters = sorted(f"{p.relative_to(ROOT)}: {line.strip()}" for p in runtime
                     for line in p.read_text().splitlines() if '"group.id":' in line)
    assert setters == [
        'actors/consumer.py: "group.id": cfg.consumer.group_id,',
        'actors/dead_letter.py: "group.id": f"eventray-dlq-recovery-{dlq_topic}",',
        'actors/dlq_reader.py: "group.id": f"{CLI_GROUP_PREFIX}{uuid.uuid4().hex[:8]}",',
        'actors/kafka_admin.py: conf.update({"group.id": ADMIN_OFFSETS_GROUP, '
        '"enable.auto.commit": False})',
        'actors/kafka_admin.py: conf.update({"group.id": group_id, "enable.auto.commit": False})',
    ]


# -- the Ray clusters: secrets, auth, GCS fault tolerance, resources ---------------------------

def cluster_specs() -> dict[str, dict[str, Any]]:
    return {"rayservice": one("rayservice.yaml", "RayService")["spec"]["rayClusterConfig"],
            "rayjob": one("rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"],
            "raycluster": one("ray-cluster.yaml", "RayCluster")["spec"]}


def pod_specs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in spec["workerGroupSpecs"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"]}


@pytest.mark.parametrize("which", ["rayservice", "rayjob", "raycluster"])
def test_pods_get_settings_and_secrets_the_way_the_operators_write_them(
        which: str, settings: Settings) -> None:
    configmap = one("settings.yaml", "ConfigMap")
    (config_key,) = configmap["data"]
    user = one("kafka-user.yaml", "KafkaUser")["metadata"]["name"]
    cluster_ca = f"{one('kafka.yaml', 'Kafka')['metadata']['name']}-cluster-ca-cert"
    assert settings.kafka.ssl_ca_location is not None
    ca_path = PurePosixPath(settings.kafka.ssl_ca_location)
    for pod in pod_specs(cluster_specs()[which]):
        (container,) = pod["containers"]
        env = env_of(container)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        # The settings file where EVENTRAY_CONFIG says, from the ConfigMap.
        config_path = PurePosixPath(env["EVENTRAY_CONFIG"]["value"])
        assert config_path.name == config_key
        assert volumes[mounts[str(config_path.parent)]]["configMap"]["name"] == "eventray-settings"
        # Strimzi's User Operator: Secret named after the KafkaUser, key "password".
        assert env["EVENTRAY_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": user, "key": "password"}
        # Strimzi's Cluster Operator: <cluster>-cluster-ca-cert, key ca.crt, where the
        # settings' ssl_ca_location points.
        ca_volume = volumes[mounts[str(ca_path.parent)]]["secret"]
        assert ca_volume["secretName"] == cluster_ca
        assert {"key": "ca.crt", "path": ca_path.name} in ca_volume["items"]
        # No secret value inline; the gateway's pods carry no Snowflake password.
        assert all("valueFrom" in item for name, item in env.items()
                   if "PASSWORD" in name or "SECRET" in name or "TOKEN" in name)
        assert ("EVENTRAY_SNOWFLAKE__PASSWORD" in env) == (which != "rayservice")
        if which != "rayservice":
            assert env["EVENTRAY_SNOWFLAKE__PASSWORD"]["valueFrom"]["secretKeyRef"] == {
                "name": "eventray-snowflake", "key": "password"}


@pytest.mark.parametrize("which", ["rayservice", "rayjob", "raycluster"])
def test_token_auth_and_gcs_fault_tolerance_on_every_cluster(which: str) -> None:
    spec = cluster_specs()[which]
    assert spec["authOptions"] == {"mode": "token", "secretName": "eventray-ray-token"}
    ft = spec["gcsFaultToleranceOptions"]
    redis_service = one("redis.yaml", "Service")
    (port,) = redis_service["spec"]["ports"]
    assert ft["redisAddress"] == f"{redis_service['metadata']['name']}:{port['port']}"
    redis = one("redis.yaml", "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"] == (
        env_of(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"])
    # KubeRay gives the token to the pods itself (RAY_AUTH_TOKEN from the Secret): a hand-set
    # RAY_AUTH_MODE would override it.
    for pod in pod_specs(spec):
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(env_of(pod["containers"][0]))
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert "headService" not in spec["headGroupSpec"]


def test_nothing_is_exposed_outside_the_cluster_by_these_manifests() -> None:
    services = [doc["spec"] for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())
                if doc and doc["kind"] == "Service"]
    services.append(one("rayservice.yaml", "RayService")["spec"]["serveService"]["spec"])
    assert {svc.get("type", "ClusterIP") for svc in services} == {"ClusterIP"}
    gateway = one("rayservice.yaml", "RayService")["spec"]["serveService"]["spec"]
    assert {port["targetPort"] for port in gateway["ports"]} == {8000}  # never 8265


def serve_config() -> dict[str, Any]:
    text = one("rayservice.yaml", "RayService")["spec"]["serveConfigV2"]
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def test_the_serve_config_is_valid_for_serve_and_builds_the_gateway() -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config())
    (application,) = serve_config()["applications"]
    defaults = ServeConfig()
    assert (application["name"], application["route_prefix"]) == (defaults.app_name,
                                                                  defaults.route_prefix)
    module, _, attr = application["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert len(inspect.signature(builder).parameters) == 1  # what Serve calls builders with
    (deployment,) = application["deployments"]
    assert deployment["name"] == "gateway"  # gateway.serve_app.deployment_options
    scaling = deployment["autoscaling_config"]
    assert 1 < scaling["min_replicas"] < scaling["max_replicas"]
    assert "num_replicas" not in deployment


def test_the_gateway_listens_on_the_pod_and_runs_haproxy() -> None:
    http = serve_config()["http_options"]
    assert http["host"] == "0.0.0.0"
    spec = one("rayservice.yaml", "RayService")["spec"]
    assert spec["serveService"]["spec"]["ports"][0]["targetPort"] == http["port"]
    for which in ("rayservice", "raycluster"):
        for pod in pod_specs(cluster_specs()[which]):
            env = {name: item.get("value") for name, item in env_of(pod["containers"][0]).items()}
            assert env["EVENTRAY_GATEWAY__HOST"] == "0.0.0.0"
            for name, value in serve_env(ServeConfig()).items():
                assert env[name] == value, name
    for pod in pod_specs(cluster_specs()["rayservice"]):
        ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert ports["serve"] == http["port"] and ports["metrics"] == 8080


def test_the_podmonitor_scrapes_every_eventray_ray_pod() -> None:
    monitor = one("podmonitor.yaml", "PodMonitor")["spec"]
    selector = monitor["selector"]["matchLabels"]
    (required,) = monitor["selector"]["matchExpressions"]
    assert required == {"key": "ray.io/node-type", "operator": "Exists"}  # set by KubeRay
    assert "metrics" in {endpoint["port"] for endpoint in monitor["podMetricsEndpoints"]}
    for which, spec in cluster_specs().items():
        templates = [spec["headGroupSpec"]["template"]] + [
            group["template"] for group in spec["workerGroupSpecs"]]
        for template in templates:
            labels = template["metadata"]["labels"]
            assert selector.items() <= labels.items(), (which, labels)
            ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]
                     .get("ports", [])}
            if which != "raycluster":  # KubeRay adds the metrics port where it is missing
                assert ports["metrics"] == 8080, which


# -- the RayJob ---------------------------------------------------------------------------------

def rayjob() -> dict[str, Any]:
    return one("rayjob.yaml", "RayJob")["spec"]


def test_the_rayjob_runs_the_pipeline_until_stopped_and_keeps_its_cluster() -> None:
    from ray.dashboard.modules.job.job_supervisor import JobSupervisor

    from cluster.job import parse_args

    spec = rayjob()
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "cluster.job"]
    args = parse_args(argv[3:])
    assert not args.once and not args.stop_on_exit and args.stop_on_sigint
    assert spec["shutdownAfterJobFinishes"] is False
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["RAY_JOB_STOP_SIGNAL"] == "SIGINT" in JobSupervisor.VALID_STOP_SIGNALS
    # stop_pipeline waits up to 30 s for the consumers' batches, then for Ray's names.
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60


def quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_actor_resources_come_from_the_settings_and_fit_the_worker_pods(tmp_path: Path) -> None:
    spec = rayjob()
    env = {k: str(v) for k, v in yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"].items()}
    settings = configmap_settings({k: v for k, v in env.items() if k.startswith("EVENTRAY_")},
                                  tmp=tmp_path)
    consumer, sink = settings.pipeline.consumer, settings.pipeline.sink
    assert consumer.num_cpus >= 1 and consumer.memory_bytes >= 1.5 * 2**30
    assert sink.num_cpus > 0 and sink.memory_bytes > 0
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpus, memory = quantity(limits["cpu"]), quantity(limits["memory"])
    ray_memory = memory - int(group["rayStartParams"]["object-store-memory"])
    # A pod filled with consumers by CPU still has the memory they reserve.
    assert (cpus // consumer.num_cpus) * consumer.memory_bytes <= ray_memory
    # And the pods at minReplicas hold every partition's consumer and the sink pool.
    partitions = settings.topics.partitions
    needed = partitions * consumer.num_cpus + sink.pool_size * sink.num_cpus
    assert group["minReplicas"] * cpus >= needed


# -- the image --------------------------------------------------------------------------------

def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_image_is_the_pinned_ray_and_every_manifest_runs_it() -> None:
    project = pyproject()["project"]
    ray_pin = next(Requirement(dep) for dep in project["dependencies"]
                   if Requirement(dep).name == "ray")
    (version,) = [spec.version for spec in ray_pin.specifier if spec.operator == "=="]
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert base is not None
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base[1] == f"rayproject/ray:{version}-{python}"
    for which, spec in cluster_specs().items():
        assert spec["rayVersion"] == version, which
        for pod in pod_specs(spec):
            assert pod["containers"][0]["image"] == f"eventray:{project['version']}", which


def _closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install, with their dependencies (as installed)."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if norm(req.name) in seen:
            continue
        seen.add(norm(req.name))
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for item in requires:
            dep = Requirement(item)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e})
                                         for e in (req.extras or {""})):
                todo.append(dep)
    return seen


def test_the_dockerfile_installs_what_the_runtime_imports() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("actors", "gateway", "cluster"):
        assert re.search(rf"^COPY .*\b{package}\b", dockerfile, re.MULTILINE), package
    assert re.search(r"^RUN pip install .*\s\.\s*$", dockerfile, re.MULTILINE)
    runtime = [*(ROOT / "actors").glob("*.py"), *(ROOT / "gateway").glob("*.py"),
               *(ROOT / "cluster").glob("*.py")]
    top_level = {name.split(".")[0] for path in runtime for name in imported_modules(path)}
    ours = {"actors", "gateway", "cluster"}
    third_party = sorted(name for name in top_level - ours
                         if name not in sys.stdlib_module_names and name != "__future__")
    installed = _closure(pyproject()["project"]["dependencies"])
    providers = metadata.packages_distributions()
    missing = [name for name in third_party
               if not {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(name, [])}
               & installed]
    assert third_party, "no third-party import found: the scan is broken"
    assert missing == []
    # The scan reads lazy imports too (inside functions), as the actors do.
    assert any(isinstance(node, ast.ImportFrom) and node.module == "confluent_kafka"
               for node in ast.walk(ast.parse((ROOT / "actors" / "kafka_admin.py").read_text())))


# -- the Serve application builder ------------------------------------------------------------

def test_the_builder_takes_dotted_settings_on_top_of_the_pods_settings(tmp_path: Path) -> None:
    from cluster.gateway_app import gateway_settings

    base = configmap_settings(tmp=tmp_path)
    built = gateway_settings({"gateway.producer.linger_ms": 7, "topics.events": "orders"},
                             base=base)
    assert built.gateway_config().producer.linger_ms == 7
    assert built.gateway_config().topics.events == "orders"
    # The secret from the pod's environment is kept, never part of the args.
    password = built.gateway_config().kafka.sasl_password
    assert password is not None
    assert password.reveal() == POD_SECRETS["EVENTRAY_KAFKA__SASL_PASSWORD"]
    assert gateway_settings({}, base=base) == base


@pytest.mark.parametrize(("args", "message"), [
    ({"gateway.lingr_ms": 1}, "invalid setting gateway.lingr_ms: unknown setting"),
    ({"gateway.port": "eighty"}, "invalid setting gateway.port"),
    (["gateway.port", 80], "application args must be a mapping"),
])
def test_the_builder_names_a_bad_arg(args: Any, message: str) -> None:
    from actors.exceptions import ConfigError
    from cluster.gateway_app import gateway_settings

    with pytest.raises(ConfigError, match=re.escape(message)):
        gateway_settings(args, base=Settings())


def test_the_disk_window_lives_on_a_volume_of_every_pipeline_worker(settings: Settings) -> None:
    consumer = settings.pipeline.consumer
    assert consumer.window_store == "disk"
    groups = (rayjob()["rayClusterSpec"]["workerGroupSpecs"]
              + cluster_specs()["raycluster"]["workerGroupSpecs"])
    for group in groups:
        pod = group["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts[consumer.window_dir]]  # node-local


def test_every_gateway_pod_mounts_the_api_keys_file_the_settings_name(settings: Settings) -> None:
    keys_file = PurePosixPath(settings.gateway_config().api_keys_file)
    assert str(keys_file) == "/etc/eventray/gateway-keys/keys.json"
    for pod in pod_specs(cluster_specs()["rayservice"]):
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        mount = mounts[str(keys_file.parent)]
        assert mount["readOnly"] is True
        # A whole-directory mount (not subPath): Kubernetes updates it in place on a change.
        assert "subPath" not in mount
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "eventray-gateway-keys"
        assert {"key": "keys.json", "path": keys_file.name} in secret["items"]

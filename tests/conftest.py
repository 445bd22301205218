"""Shared test fixtures.

`cluster` (session): the local control plane from hack/cluster.sh, started once per test run, or
reused when one is already running (then it is left running afterwards). Its real kubelet node is
left to `real_node_session`, which the tests on it (tests/realnode) ask for. Tests that need it are
marked `@pytest.mark.cluster` (the marker pulls the fixture in) or ask for it by name.
`namespace`: a fresh namespace for one test, deleted afterwards.
`operator`: `qwen-operator run --all-namespaces --namespace-selector qwen-tests-worker=WORKER` as a
subprocess, one per test module, serving the namespaces of its pytest-xdist worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SH = REPO / "hack" / "cluster.sh"
KUBECTL = REPO / ".venv" / "bin" / "kubectl"
# Under pytest-xdist each worker runs its own modules at the same time as the others. The `namespace`
# fixture labels its namespaces with the worker's name, and the module `operator` serves only those
# (--namespace-selector), so no two workers' operators ever reconcile the same resource.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
WORKER_LABEL = "qwen-tests-worker"
# Modules that must share the real-node worker besides tests/realnode (none now: the real-node
# modules install the chart without its CRDs, so test_helm_install's releases own them alone).
HELM_INSTALLING_MODULES: set[str] = set()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Polls predicate until it returns something truthy; fails the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 - remembered and reported on timeout
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


@dataclass
class Cluster:
    kubeconfig: str

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(KUBECTL), "--kubeconfig", self.kubeconfig, *args], input=input, text=True, capture_output=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
        return result

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        args = ["apply", "--server-side", "--field-manager", "qwen-tests", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        self.kubectl(*args, input=manifest)


def _cluster_running() -> bool:
    return subprocess.run([str(CLUSTER_SH), "status"], capture_output=True, timeout=30).returncode == 0


CLUSTER_DIR = Path(os.environ.get("QWEN_CLUSTER_DIR") or Path.home() / ".cache" / "qwen-operator" / "cluster")


@contextlib.contextmanager
def _host_lock(name: str, *, exclusive: bool = True):
    """A file lock beside the cluster directory, shared by every xdist worker (and every run) on this host."""
    CLUSTER_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(CLUSTER_DIR.parent / f".{CLUSTER_DIR.name}{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def _cluster_lock():
    """Held while bringing the cluster (or its node) up: xdist workers ask at the same time."""
    return _host_lock("")


def monitoring_crds_lock(*, exclusive: bool):
    """The Prometheus Operator CRDs are cluster-wide, and modules on other xdist workers install and remove
    them: a test that needs them holds this shared for its whole run, a test that removes them holds it
    exclusively, so no test loses them in its middle."""
    return _host_lock(".monitoring-crds", exclusive=exclusive)


def prometheus_operator_crd_files() -> list[Path]:
    """The CRDs shipped in the pinned prometheus-operator release (its Go module, via the module proxy)."""
    version = next(line.split("=", 1)[1].strip() for line in (REPO / "hack" / "versions.env").read_text().splitlines()
                   if line.startswith("PROMETHEUS_OPERATOR_VERSION="))
    download = subprocess.run(["go", "mod", "download", "-json", f"github.com/prometheus-operator/prometheus-operator@{version}"],
                              capture_output=True, text=True, timeout=900, check=True)
    files = sorted((Path(json.loads(download.stdout)["Dir"]) / "example" / "prometheus-operator-crd").glob("monitoring.coreos.com_*.yaml"))
    assert any(f.name == "monitoring.coreos.com_servicemonitors.yaml" for f in files), files
    return files


def monitoring_crd_names(files: list[Path]) -> list[str]:
    return [f"{f.name.removeprefix('monitoring.coreos.com_').removesuffix('.yaml')}.monitoring.coreos.com" for f in files]


def _real_node_running() -> bool:
    try:
        os.kill(int((CLUSTER_DIR / "pids" / "kubelet").read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    # The cluster and its real node are brought up lazily, by the first test that needs them (in
    # whichever xdist worker), and taken down at the end of the whole run by the process that
    # started the run, if they were not running before it.
    if not _is_xdist_worker(session.config):
        session.config.stash[_WAS_RUNNING] = (_cluster_running(), _real_node_running())


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _is_xdist_worker(session.config) or _WAS_RUNNING not in session.config.stash:
        return
    cluster_was_running, node_was_running = session.config.stash[_WAS_RUNNING]
    if not cluster_was_running:
        if _cluster_running():
            subprocess.run([str(CLUSTER_SH), "down"], check=False, timeout=600)
    elif not node_was_running and _real_node_running():
        subprocess.run([str(CLUSTER_SH), "node-down"], check=False, timeout=600)


_WAS_RUNNING = pytest.StashKey[tuple[bool, bool]]()


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    # The real kubelet node is started by the tests that use it (tests/realnode: `cluster.sh node-up`);
    # it is tainted, so the kwok tests' pods never land on it.
    # Twice the default L4 pool: three workers' tests ask for GPUs at the same time.
    env = {**os.environ, "QWEN_REAL_NODE": "0", "QWEN_GPU_POOLS": os.environ.get("QWEN_GPU_POOLS", "NVIDIA-L4:6,Tesla-T4:1")}
    with _cluster_lock():
        subprocess.run([str(CLUSTER_SH), "up"], check=True, timeout=3600, env=env)
    kubeconfig = subprocess.run([str(CLUSTER_SH), "kubeconfig"], check=True, capture_output=True, text=True).stdout.strip()
    os.environ["KUBECONFIG"] = kubeconfig
    return Cluster(kubeconfig=kubeconfig)


@pytest.fixture(scope="session")
def real_node_session(cluster: Cluster) -> Cluster:
    """The cluster with its real kubelet node (`hack/cluster.sh node-up`), started once for every test
    that asks (they all run in one xdist worker: the `realnode` group), and stopped at the end of the
    run when it was started by it. Where this machine cannot run it, node-up records why, and
    tests/realnode (realnode_support.real_node_or_skip) skips with that."""
    with _cluster_lock():
        subprocess.run([str(CLUSTER_SH), "node-up"], check=True, timeout=3600)
    return cluster


@pytest.fixture(scope="session")
def k8s(cluster: Cluster):
    """An official-client ApiClient for the local cluster."""
    from kubernetes import client, config

    return config.new_client_from_config(config_file=cluster.kubeconfig)


@pytest.fixture
def prometheus_operator_crds(cluster: Cluster) -> Any:
    """The pinned release's ServiceMonitor and PrometheusRule CRDs (and their siblings), installed and
    held for the test (monitoring_crds_lock). They are left installed: the tests that need them absent
    remove them themselves, under the exclusive lock."""
    files = prometheus_operator_crd_files()
    with monitoring_crds_lock(exclusive=False):
        install_prometheus_operator_crds(cluster, files)
        yield


@pytest.fixture
def short_tmp_path() -> Path:
    """A short temporary folder, for what binds a unix socket under it (at most 107 bytes of path):
    the vLLM stand-in does under TMPDIR, as vLLM does, and pytest's tmp_path under xdist is longer."""
    path = Path(tempfile.mkdtemp(prefix="qwen-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s) -> str:
    from kubernetes import client

    core = client.CoreV1Api(k8s)
    base = request.node.name.lower().replace("_", "-")
    name = "".join(c for c in base if c.isalnum() or c == "-")[:40].strip("-") + "-" + uuid.uuid4().hex[:5]
    labels = getattr(request, "param", None) or {}
    labels = {"qwen-tests": "true", WORKER_LABEL: WORKER, **labels}
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    wait_until(lambda: core.read_namespaced_service_account("default", name), 30, f"default service account in {name}")
    yield name
    core.delete_namespace(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("cluster") and "cluster" not in getattr(item, "fixturenames", ["cluster"]):
            item.fixturenames.insert(0, "cluster")
    # The longest groups first, each on a worker of its own (pytest_xdist_make_scheduler hands out one
    # group per worker, in this order): the real node's, then the kind cluster's, which run side by side.
    items.sort(key=lambda item: FIRST_GROUPS.index(group) if (group := xdist_group_of(item.nodeid)) in FIRST_GROUPS else len(FIRST_GROUPS))


REAL_NODE_GROUP = "tests/realnode"
KIND_GROUP = "tests/e2e/test_kind.py"
FIRST_GROUPS = [REAL_NODE_GROUP, KIND_GROUP]


def xdist_group_of(nodeid: str) -> str:
    """The unit of work of one pytest-xdist worker: a test module, run whole (its module-scoped
    fixtures start once), except that the real-node tests are one group: the node is a host
    singleton, and each module's pods expect it to themselves."""
    path = nodeid.split("::", 1)[0]
    if path.startswith(REAL_NODE_GROUP + "/") or Path(path).name in HELM_INSTALLING_MODULES:
        return REAL_NODE_GROUP
    return path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` (-n 3): groups as xdist_group_of says, handed out in collection order, so the real-node
    group starts first on one worker and the kind module on the next. (xdist_group marks with --dist loadgroup did not group anything under pytest 9.2 and xdist 3.8.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


@dataclass
class RunningOperator:
    """The operator, run as `qwen-operator run` in a subprocess against the local cluster."""

    process: subprocess.Popen
    metrics_port: int
    log_path: Path
    resync_seconds: float

    def metrics(self) -> dict[str, float]:
        """Samples of the operator's /metrics as {'name{labels}': value} (loopback only)."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def requests(self, verbs: set[str]) -> float:
        total = 0.0
        for name, value in self.metrics().items():
            if name.startswith("qwen_operator_api_requests_total{") and any(f'verb="{v}"' in name for v in verbs):
                total += value
        return total

    def requests_by_kind(self, verbs: set[str]) -> dict[str, float]:
        totals: dict[str, float] = {}
        for name, value in self.metrics().items():
            if name.startswith("qwen_operator_api_requests_total{") and any(f'verb="{v}"' in name for v in verbs):
                kind = name.split('kind="', 1)[1].split('"', 1)[0]
                totals[kind] = totals.get(kind, 0.0) + value
        return totals

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apply_crds(cluster: Cluster, paths: list[Path], names: list[str]) -> None:
    """Applies CRD manifests and waits until every named CRD is Established."""
    for path in paths:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "qwen-tests", "-f", str(path))
    wait_crds_established(cluster, names)


def wait_crds_established(cluster: Cluster, names: list[str]) -> None:
    """A poll, not `kubectl wait --for=condition=Established`: that fails at once on a CRD created a moment ago,
    which has no conditions yet."""
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'

    def established() -> bool:
        return all(cluster.kubectl("get", "crd", name, "-o", f"jsonpath={jsonpath}").stdout == "True" for name in names)

    wait_until(established, 60, f"CRDs {', '.join(names)} to be established")


def install_crds(cluster: Cluster) -> None:
    """The QwenInference CRD, applied and Established."""
    apply_crds(cluster, [REPO / "crds"], ["qweninferences.inference.qwenops.io"])


def install_prometheus_operator_crds(cluster: Cluster, files: list[Path]) -> None:
    """The pinned prometheus-operator release's CRDs (prometheus_operator_crd_files), applied and Established."""
    apply_crds(cluster, files, monitoring_crd_names(files))


def start_operator(cluster: Cluster, log_path: Path, *args: str, resync: float = 3.0) -> RunningOperator:
    """Starts `qwen-operator run --standalone ARGS` against the cluster, metrics on a free loopback port."""
    port = free_loopback_port()
    env = {
        **os.environ,
        "KUBECONFIG": cluster.kubeconfig,
        "QWEN_OPERATOR_RESYNC_SECONDS": str(resync),
        "QWEN_OPERATOR_METRICS_PORT": str(port),
        "QWEN_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
    }
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "qwen-operator"), "run", "--standalone", *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    running = RunningOperator(process, port, log_path, resync)
    wait_until(lambda: running.metrics(), 60, "the operator's metrics endpoint")
    return running


def stop_operator(running: RunningOperator) -> None:
    running.process.terminate()
    try:
        running.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait(timeout=10)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> RunningOperator:
    """One cluster-admin operator per test module, so modules that run the operator under other
    credentials (tests/integration/test_helm_install.py) never have it reconciling beside them."""
    install_crds(cluster)
    running = start_operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log", "--all-namespaces",
                             "--namespace-selector", f"{WORKER_LABEL}={WORKER}")
    try:
        yield running
    finally:
        stop_operator(running)
        assert "Traceback" not in running.log_text(), running.log_text()[-5000:]

"""helm against the local control plane, and the operator run under the chart's ServiceAccount.

The chart's own Deployment cannot run here (its pods are fake-Running under kwok), so the real
operator runs as a local subprocess instead, with exactly the identity a pod of the chart would
have: a token of the chart's ServiceAccount (TokenRequest), the args and literal env of the chart's
Deployment, and leader election on the chart's Lease (not --standalone), so that every API call,
kopf's and the election's included, goes through the chart's RBAC.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from conftest import REPO, Cluster, RunningOperator, free_loopback_port, wait_until

CHART = REPO / "charts" / "qwen-operator"
BUILD_TOOLS = REPO / "hack" / "build-tools.sh"
OPERATOR = REPO / ".venv" / "bin" / "qwen-operator"
# The CRDs the chart installs with crds.enabled.
CHART_CRDS = ("qweninferences.inference.qwenops.io",)
# Every process a test starts stops by itself: helm calls, and the operator after this long.
HELM_TIMEOUT_SECONDS = 180
OPERATOR_MAX_SECONDS = 900
TOKEN_DURATION = "1h"
RBAC_DENIAL = re.compile(r'User \\?"system:serviceaccount:[^"\\]+\\?" cannot [a-z]+ resource')


def helm_binary() -> str:
    """The helm that hack/build-tools.sh builds from the Go module proxy (built now if missing)."""
    subprocess.run([str(BUILD_TOOLS), "helm"], check=True, timeout=1800)
    return subprocess.run([str(BUILD_TOOLS), "path", "helm"], check=True, capture_output=True, text=True, timeout=30).stdout.strip()


@dataclass(frozen=True)
class Release:
    """One helm release of the chart."""

    name: str
    namespace: str

    @property
    def fullname(self) -> str:
        """The chart's qwen-operator.fullname: the name of its Deployment, ServiceAccount and RBAC."""
        return self.name if "qwen-operator" in self.name else f"{self.name}-qwen-operator"


@dataclass
class Helm:
    binary: str
    cluster: Cluster

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, "--kubeconfig", self.cluster.kubeconfig, *args],
            capture_output=True, text=True, timeout=HELM_TIMEOUT_SECONDS,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def install(self, release: Release, values: dict[str, Any] | None = None, check: bool = True, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """helm install, with `values` as a values file (strict schema: unknown keys fail)."""
        args = ["install", release.name, str(CHART), "--namespace", release.namespace, "--create-namespace", "--wait", "--timeout", "120s", *extra]
        if values is not None:
            args += ["--values", "-"]
        result = subprocess.run(
            [self.binary, "--kubeconfig", self.cluster.kubeconfig, *args],
            input=yaml.safe_dump(values) if values is not None else None,
            capture_output=True, text=True, timeout=HELM_TIMEOUT_SECONDS,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm install {release.name} failed ({result.returncode}):\n{result.stderr}")
        return result

    def uninstall(self, release: Release, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout", "120s", check=check)

    def status(self, release: Release) -> subprocess.CompletedProcess[str]:
        return self.run("status", release.name, "--namespace", release.namespace, check=False)


def adopt_existing_crds(cluster: Cluster, release: Release) -> list[str]:
    """Hands the chart's CRDs that already exist to `release`, the way helm documents adoption.

    helm refuses to install over a resource it does not own. The CRDs may exist already: applied
    with kubectl by other tests of the session (conftest's install_crds), or kept (crds.keep) by a
    release uninstalled earlier. A cluster admin moving to the chart does the same.
    """
    adopted = []
    for crd in CHART_CRDS:
        if cluster.kubectl("get", "crd", crd, "-o", "name", check=False).returncode != 0:
            continue
        cluster.kubectl("label", "crd", crd, "--overwrite", "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl("annotate", "crd", crd, "--overwrite",
                        f"meta.helm.sh/release-name={release.name}", f"meta.helm.sh/release-namespace={release.namespace}")
        adopted.append(crd)
    return adopted


def write_service_account_kubeconfig(cluster: Cluster, service_account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig for the cluster's server and CA that authenticates as the ServiceAccount, with a
    token from the TokenRequest API (the same kind of token a pod of the chart would mount)."""
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, f"--duration={TOKEN_DURATION}").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context_name = admin["current-context"]
    context = next(c["context"] for c in admin["contexts"] if c["name"] == context_name)
    server = next(c["cluster"] for c in admin["clusters"] if c["name"] == context["cluster"])
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": server}],  # server plus certificate-authority(-data)
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "service-account", "context": {"cluster": "cluster", "user": service_account}}],
        "current-context": "service-account",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class ChartCommand:
    """What the chart's Deployment runs: the container's args and its literal env values."""

    args: list[str]
    env: dict[str, str]


def chart_command(cluster: Cluster, release: Release) -> ChartCommand:
    deployment = json.loads(cluster.kubectl("get", "deployment", release.fullname, "-n", release.namespace, "-o", "json").stdout)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return ChartCommand(args=list(container["args"]), env=env)


def local_args(args: list[str], liveness_port: int) -> list[str]:
    """The chart's args for a process on this machine: the liveness endpoint moves to 127.0.0.1 on
    a free port (the chart's 0.0.0.0:8080 is a pod's address). Nothing else changes."""
    result = list(args)
    for i, arg in enumerate(result[:-1]):
        if arg == "--liveness":
            url = urlsplit(result[i + 1])
            result[i + 1] = urlunsplit((url.scheme, f"127.0.0.1:{liveness_port}", url.path, url.query, url.fragment))
    return result


@dataclass
class ChartOperator(RunningOperator):
    """The operator as a subprocess running under the chart's ServiceAccount."""

    args: list[str]
    pod_id: str

    def rbac_denials(self) -> list[str]:
        """Log lines of requests the RBAC authorizer refused. Its message always reads
        `User "system:serviceaccount:NS:NAME" cannot VERB resource ...`; other 403s (a namespace
        being deleted refuses new content) are not about the chart's RBAC."""
        return [line for line in self.log_text().splitlines() if RBAC_DENIAL.search(line)]


def start_chart_operator(cluster: Cluster, release: Release, work_dir: Path, resync: float = 3.0) -> ChartOperator:
    """Starts `qwen-operator run` with the chart Deployment's args and env, as its ServiceAccount."""
    command = chart_command(cluster, release)
    assert "--standalone" not in command.args, command.args
    kubeconfig = write_service_account_kubeconfig(cluster, release.fullname, release.namespace, work_dir / "service-account.kubeconfig")
    metrics_port, liveness_port = free_loopback_port(), free_loopback_port()
    args = local_args(command.args, liveness_port)
    pod_id = f"local-{release.name}-{os.getpid()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")},
        **command.env,
        "KUBECONFIG": str(kubeconfig),
        # What the chart's fieldRefs give a pod: its name (its identity in the Lease) and namespace.
        "POD_NAME": pod_id,
        "POD_NAMESPACE": release.namespace,
        "QWEN_OPERATOR_RESYNC_SECONDS": str(resync),
        "QWEN_OPERATOR_METRICS_PORT": str(metrics_port),
        "QWEN_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
    }
    log_path = work_dir / "operator.log"
    with open(log_path, "w") as log:
        # timeout(1) passes the TERM of stop_operator on, and ends a forgotten operator by itself.
        process = subprocess.Popen(
            ["timeout", "--kill-after=10", str(OPERATOR_MAX_SECONDS), str(OPERATOR), *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    running = ChartOperator(process, metrics_port, log_path, resync, args=args, pod_id=pod_id)
    wait_until(lambda: running.process.poll() is None and running.metrics(), 60,
               f"the operator's metrics endpoint (log: {log_path})")
    return running


def lease_holder(cluster: Cluster, release: Release) -> str:
    """The identity holding the chart's leader-election Lease ("" when none)."""
    result = cluster.kubectl("get", "lease", release.fullname, "-n", release.namespace, "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def without_verb(rules: list[dict[str, Any]], api_group: str, resource: str, verb: str) -> list[dict[str, Any]]:
    """RBAC rules with one verb taken away from every rule that grants it on (api_group, resource)."""
    edited = []
    for rule in rules:
        rule = json.loads(json.dumps(rule))
        if api_group in rule.get("apiGroups", []) and resource in rule.get("resources", []) and verb in rule.get("verbs", []):
            others = [r for r in rule["resources"] if r != resource]
            if others:
                # Keep the verb for the rule's other resources; only `resource` loses it.
                edited.append({**rule, "resources": others})
                rule = {**rule, "resources": [resource]}
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
        edited.append(rule)
    return edited


def cluster_role_rules(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return json.loads(cluster.kubectl("get", "clusterrole", name, "-o", "json").stdout)["rules"]


def set_cluster_role_rules(cluster: Cluster, name: str, rules: list[dict[str, Any]]) -> None:
    patch = [{"op": "replace", "path": "/rules", "value": rules}]
    cluster.kubectl("patch", "clusterrole", name, "--type=json", "-p", json.dumps(patch))


def can_i(cluster: Cluster, release: Release, verb: str, resource: str, namespace: str, subresource: str | None = None) -> bool:
    """Whether the chart's ServiceAccount may `verb` `resource` in `namespace` (the API server's answer)."""
    extra = [f"--subresource={subresource}"] if subresource else []
    result = cluster.kubectl("auth", "can-i", verb, resource, *extra, "-n", namespace,
                             f"--as=system:serviceaccount:{release.namespace}:{release.fullname}", check=False)
    return result.stdout.strip() == "yes"


def other_operators_of_this_session() -> list[str]:
    """Command lines of `qwen-operator run` processes this pytest process started, such as the
    session-scoped `operator` fixture of conftest (cluster-admin, every namespace). While one runs,
    it reconciles this module's resources too, and a test of the chart's RBAC proves nothing."""
    found = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        words = [w.decode(errors="replace") for w in cmdline if w]
        # This module's own operators run under timeout(1): that is the child of pytest, not them.
        if parent == me and words and Path(words[0]).name != "timeout" and any(w.endswith("/qwen-operator") for w in words) and "run" in words:
            found.append(" ".join(words))
    return found

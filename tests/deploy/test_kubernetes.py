"""deploy/kubernetes: every manifest the kustomization lists passes the Kubernetes API's own
schema (kubernetes-validate, strict: an unknown or misspelt field fails), and the DaemonSet
says what a platform team needs: host network, node-critical priority, every taint
tolerated, probes on /readyz and /healthz, requests, the token from a Secret, the join
through the headless Service, and an init container that configures the host's containerd.
The node's and the init container's command lines are parsed by pollen's own CLI.

No cluster runs here: scheduling, the probes, DNS of the headless Service and the init
container against a real host are not exercised (the join by DNS name is, in
tests/peer/cluster/test_join_dns.py; configure against real containerd in
tests/integration/test_configure.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from peer.cli import _node_config, run
from peer.configure.command import configure

K8S = Path(__file__).parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31"


def _kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


def _manifests() -> dict[str, dict[str, Any]]:
    return {
        name: yaml.safe_load((K8S / name).read_text()) for name in _kustomization()["resources"]
    }


def _daemonset() -> dict[str, Any]:
    (ds,) = [m for m in _manifests().values() if m["kind"] == "DaemonSet"]
    return ds


def test_the_kustomization_lists_existing_files_and_known_fields() -> None:
    kustomization = _kustomization()
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "resources", "labels"}
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name


@pytest.mark.parametrize("name", _kustomization()["resources"])
def test_each_manifest_passes_the_api_schema(name: str) -> None:
    kubernetes_validate.validate(_manifests()[name], KUBERNETES_VERSION, strict=True)


def test_the_validator_would_catch_a_misspelt_field() -> None:
    broken = _daemonset()
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_daemonset_runs_on_every_node_with_what_it_needs() -> None:
    pod = _daemonset()["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]  # every taint, no key
    (node,) = pod["containers"]
    assert node["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert node["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert node["resources"]["requests"]["cpu"] and node["resources"]["requests"]["memory"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cluster-token"]["secret"]["secretName"] == "pollen-cluster-token"
    assert volumes["data"]["hostPath"]["path"] == "/var/lib/pollen"
    assert pod["terminationGracePeriodSeconds"] > 30  # the node's --shutdown-grace


def test_the_join_names_the_headless_service() -> None:
    (service,) = [m for m in _manifests().values() if m["kind"] == "Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    # No cluster domain: the host's resolv.conf search list brings it (clusters differ).
    name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    (node,) = _daemonset()["spec"]["template"]["spec"]["containers"]
    joins = [a for a in node["command"] if a.startswith("--join=")]
    assert joins == [f"--join={name}:65002"]


def test_the_nodes_command_line_is_one_pollen_accepts(tmp_path: Path) -> None:
    (node,) = _daemonset()["spec"]["template"]["spec"]["containers"]
    token = tmp_path / "token"
    token.write_text("t" * 40)
    args = [
        a.replace("$(HOST_IP)", "10.0.0.7").replace("/etc/pollen/token/token", str(token))
        for a in node["command"][2:]
    ]
    assert node["command"][:2] == ["/usr/local/bin/pollen", "run"]
    with run.make_context("run", args) as ctx:
        config = _node_config(dict(ctx.params))
    assert str(config.http) == "127.0.0.1:65001"
    assert str(config.advertise) == "10.0.0.7:65002"
    assert str(config.admin) == "127.0.0.1:65003"  # not reachable from other pods
    assert node["readinessProbe"]["httpGet"]["host"] == "127.0.0.1"
    assert config.cluster_token == b"t" * 40


def test_the_init_container_configures_the_hosts_containerd(tmp_path: Path) -> None:
    (init,) = _daemonset()["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:3] == ["/usr/local/bin/pollen", "configure", "containerd"]
    mounts = {m["mountPath"] for m in init["volumeMounts"]}
    assert "/host/etc/containerd" in mounts
    # A read-only root: the one-file binary must have somewhere to unpack itself.
    assert "/tmp" in mounts and {"name": "TMPDIR", "value": "/tmp"} in init["env"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    args = [a.replace("--root=/host", f"--root={tmp_path}") for a in init["command"][3:]]
    with configure.make_context("configure", ["containerd", *args]) as ctx:
        assert ctx.params["all_registries"] and ctx.params["root"] == tmp_path

"""The real node's generated configuration and images, checked without starting anything."""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
from pathlib import Path

from kaito.devcluster import ControlPlane
from kaito.devcluster.nodehost import dns_reply, service_of
from kaito.devcluster.realnode import (
    CGROUP_ROOT,
    NODE_IP,
    NODE_NETWORK,
    NODE_TAINT,
    HostClaim,
    RealNode,
    _jumps_to,
    image_parts,
    write_image_archive,
)


def node(tmp_path: Path) -> RealNode:
    plane = ControlPlane(tmp_path / "plane", bind_address=NODE_IP)
    made = RealNode(plane, tmp_path / "node", HostClaim(-1, {}))
    made.ports = {"kubelet_healthz": 1, "proxy_healthz": 2, "proxy_metrics": 3}
    return made


def test_the_kubelet_refuses_anonymous_callers_and_keeps_to_its_own_cgroup(
    tmp_path: Path,
) -> None:
    config = node(tmp_path)._kubelet_config(Path("ca"), Path("crt"), Path("key"))
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["x509"] == {"clientCAFile": "ca"}
    assert config["authorization"] == {"mode": "Webhook"}
    assert config["readOnlyPort"] == 0
    assert (config["cgroupDriver"], config["cgroupRoot"]) == ("cgroupfs", CGROUP_ROOT)
    assert config["failCgroupV1"] is False and config["failSwapOn"] is False
    assert config["registerWithTaints"] == [NODE_TAINT]
    assert config["address"] == NODE_IP


def test_containerd_works_without_cap_sys_resource_and_uses_our_pause_image(
    tmp_path: Path,
) -> None:
    text = node(tmp_path)._containerd_toml(tmp_path / "root")
    assert "restrict_oom_score_adj = true" in text
    assert "SystemdCgroup = false" in text
    assert 'sandbox_image = "kaito.local/pause:1"' in text
    assert f'config_path = "{tmp_path / "node" / "node" / "certs.d"}"' in text


def test_pods_get_addresses_on_the_bridge_network_and_are_not_masqueraded(tmp_path: Path) -> None:
    bridge = node(tmp_path)._cni_config()["plugins"][0]
    assert bridge["ipMasq"] is False
    (pod_range,) = bridge["ipam"]["ranges"][0]
    assert pod_range["subnet"] == NODE_NETWORK and pod_range["gateway"] == NODE_IP


def test_kube_proxy_leaves_conntrack_and_localhost_alone(tmp_path: Path) -> None:
    config = node(tmp_path)._proxy_config(Path("kubeconfig"))
    assert config["mode"] == "iptables"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["iptables"]["localhostNodePorts"] is False
    assert config["nodePortAddresses"] == [f"{NODE_IP}/32"]


def test_an_image_archive_names_its_layer_by_the_digest_its_config_lists(tmp_path: Path) -> None:
    program = tmp_path / "probe"
    program.write_bytes(b"#!/bin/true\n")
    config, layer = image_parts({"/probe": program}, ["/probe"])
    archive = write_image_archive(tmp_path / "probe.tar", "kaito.local/probe:1", config, layer)
    with tarfile.open(archive) as outer:
        (entry,) = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert entry["RepoTags"] == ["kaito.local/probe:1"]
        stored = outer.extractfile(entry["Layers"][0]).read()  # type: ignore[union-attr]
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert diff_ids == [f"sha256:{hashlib.sha256(stored).hexdigest()}"]
    assert json.loads(config)["config"]["Entrypoint"] == ["/probe"]


def test_only_rules_that_jump_to_the_removed_chains_are_deleted() -> None:
    chains = {"KUBE-SERVICES"}
    assert _jumps_to(["-A", "OUTPUT", "-j", "KUBE-SERVICES"], chains)
    assert not _jumps_to(["-A", "OUTPUT", "-j", "ACCEPT"], chains)
    assert not _jumps_to(["-A", "KUBE-SERVICES", "-m", "comment", "--comment", "-j"], chains)


def dns_query(name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return (
        struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


SERVICES = {"kubernetes.default.svc.cluster.local": "10.0.0.1"}


def test_the_cluster_dns_answers_a_service_name_with_its_cluster_ip() -> None:
    reply = dns_reply(dns_query("kubernetes.default.svc.cluster.local"), SERVICES.get)
    assert reply is not None
    ident, flags, _, answers = struct.unpack("!HHHH", reply[:8])
    assert (ident, flags & 0x000F, answers) == (0xBEEF, 0, 1)
    assert reply[-4:] == bytes([10, 0, 0, 1])


def test_the_cluster_dns_knows_nothing_outside_the_cluster() -> None:
    reply = dns_reply(dns_query("example.com"), SERVICES.get)
    assert reply is not None
    _, flags, _, answers = struct.unpack("!HHHH", reply[:8])
    assert (flags & 0x000F, answers) == (3, 0)  # NXDOMAIN


def test_an_aaaa_query_for_a_service_gets_no_data_rather_than_nxdomain() -> None:
    reply = dns_reply(dns_query("kubernetes.default.svc.cluster.local", qtype=28), SERVICES.get)
    assert reply is not None
    _, flags, _, answers = struct.unpack("!HHHH", reply[:8])
    assert (flags & 0x000F, answers) == (0, 0)


def test_replies_and_truncated_queries_are_ignored() -> None:
    query = dns_query("kubernetes.default.svc.cluster.local")
    assert dns_reply(query[:11], SERVICES.get) is None
    assert dns_reply(query[:-2], SERVICES.get) is None
    as_reply = query[:2] + struct.pack("!H", 0x8100) + query[4:]
    assert dns_reply(as_reply, SERVICES.get) is None


def test_only_service_names_in_the_cluster_domain_are_looked_up() -> None:
    assert service_of("probe.team-a.svc.cluster.local.", "cluster.local") == ("probe", "team-a")
    assert service_of("probe.team-a.svc.cluster.local.example", "cluster.local") is None
    assert service_of("a.probe.team-a.svc.cluster.local", "cluster.local") is None
    # Labels that could reach a URL query are refused before any request.
    assert service_of("probe&x=1.team-a.svc.cluster.local", "cluster.local") is None

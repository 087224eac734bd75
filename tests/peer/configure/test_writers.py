"""The runtime file writers (pure: text in, text out): ours first, nothing else lost, the
same answer when run on their own output."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from peer.configure import containerd, containers, docker, rancher
from peer.configure.files import ConfigureError

ENDPOINT = "http://127.0.0.1:65001"
GOLDEN = Path(__file__).parent / "golden"
DEBIAN_CONTAINERD = (GOLDEN / "containerd-debian.toml").read_text()  # Debian 12's own


def _registry_table(text: str, plugin: str) -> dict[str, object]:
    table: dict[str, object] = tomllib.loads(text)["plugins"][plugin]["registry"]
    return table


@pytest.mark.parametrize(
    ("version", "plugin"),
    [(2, "io.containerd.grpc.v1.cri"), (3, "io.containerd.cri.v1.images")],
)
def test_config_path_goes_in_the_plugin_of_the_configs_version(version: int, plugin: str) -> None:
    text = f'version = {version}\n# keep me\n[debug]\n  level = "info"\n'
    out, hosts = containerd.with_config_path(text, "/etc/containerd/certs.d")
    assert hosts == "/etc/containerd/certs.d"
    assert _registry_table(out, plugin) == {"config_path": "/etc/containerd/certs.d"}
    assert out.startswith(text)  # nothing else changed, the comment included
    assert containerd.with_config_path(out, "/elsewhere") == (out, hosts)


def test_debian_config_keeps_its_settings_and_gains_config_path() -> None:
    out, _ = containerd.with_config_path(DEBIAN_CONTAINERD, "/d")
    parsed = tomllib.loads(out)
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/etc/cni/net.d"}
    assert cri["registry"] == {"config_path": "/d"}
    assert parsed["plugins"]["io.containerd.internal.v1.opt"] == {"path": "/var/lib/containerd/opt"}


def test_a_version_1_config_names_the_plugin_cri() -> None:
    out, _ = containerd.with_config_path('root = "/r"\n[plugins.cri]\n  x = 1\n', "/d")
    assert _registry_table(out, "cri") == {"config_path": "/d"}
    assert "version" not in tomllib.loads(out)  # its layout is not changed under it


def test_an_empty_config_starts_version_2() -> None:
    out, _ = containerd.with_config_path("# only comments\n", "/d")
    parsed = tomllib.loads(out)
    assert parsed["version"] == 2
    assert _registry_table(out, "io.containerd.grpc.v1.cri") == {"config_path": "/d"}


def test_an_existing_config_path_is_kept_and_used() -> None:
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/a:/b"\n'
    assert containerd.with_config_path(text, "/d") == (text, "/a")


@pytest.mark.parametrize(
    "text",
    [
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
        '  endpoint = ["https://m"]\n',
        "version = 7\n",
        "version = [\n",
        'version = 2\nplugins = "x"\n',
    ],
)
def test_configs_pollen_cannot_edit_safely_are_refused(text: str) -> None:
    with pytest.raises(ConfigureError):
        containerd.with_config_path(text, "/d")


def test_hosts_toml_puts_the_node_first_and_keeps_the_other_hosts() -> None:
    existing = (
        'server = "https://quay.io"\nfoo = 1\n'
        '[host."https://mirror.example"]\n  capabilities = ["pull"]\n  skip_verify = true\n'
        f'[host."{ENDPOINT}"]\n  capabilities = ["pull"]\n'
    )
    out = containerd.hosts_toml(existing, "quay.io", ENDPOINT)
    parsed = tomllib.loads(out)
    assert parsed["server"] == "https://quay.io" and parsed["foo"] == 1
    assert list(parsed["host"]) == [ENDPOINT, "https://mirror.example"]
    assert parsed["host"][ENDPOINT] == {"capabilities": ["pull", "resolve"]}
    assert parsed["host"]["https://mirror.example"]["skip_verify"] is True
    assert containerd.hosts_toml(out, "quay.io", ENDPOINT) == out


def test_hosts_toml_servers() -> None:
    hub = tomllib.loads(containerd.hosts_toml(None, "docker.io", ENDPOINT))
    assert hub["server"] == "https://registry-1.docker.io"
    every = tomllib.loads(containerd.hosts_toml(None, None, ENDPOINT))
    assert "server" not in every  # _default: each pull's own registry
    assert list(every["host"]) == [ENDPOINT]


def test_docker_mirror_first_other_settings_kept() -> None:
    text = '{"log-level": "warn", "registry-mirrors": ["https://m.example", "http://127.0.0.1:65001/"]}'
    out = docker.with_mirror(text, ENDPOINT)
    assert json.loads(out) == {
        "log-level": "warn",
        "registry-mirrors": [ENDPOINT, "https://m.example"],
    }
    assert docker.with_mirror(out, ENDPOINT) == out
    assert json.loads(docker.with_mirror(None, ENDPOINT)) == {"registry-mirrors": [ENDPOINT]}


@pytest.mark.parametrize("text", ["[1]", "{", '{"registry-mirrors": "http://x"}'])
def test_docker_files_that_are_not_daemon_json_are_refused(text: str) -> None:
    with pytest.raises(ConfigureError):
        docker.with_mirror(text, ENDPOINT)


def test_containers_drop_in_carries_over_the_earlier_entry() -> None:
    main = 'unqualified-search-registries = ["docker.io"]\n'
    earlier = (
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\nblocked = false\n'
        '[[registry.mirror]]\nlocation = "m.example"\n'
    )
    out = containers.drop_in("podman", "docker.io", ENDPOINT, [("main", main), ("10", earlier)])
    (entry,) = tomllib.loads(out)["registry"]
    assert entry["prefix"] == "docker.io" and entry["blocked"] is False
    assert entry["mirror"] == [
        {"location": "127.0.0.1:65001", "insecure": True},
        {"location": "m.example"},
    ]


def test_containers_drop_in_for_a_registry_nobody_named() -> None:
    out = containers.drop_in("crio", "quay.io", "https://node.local:65001", [])
    (entry,) = tomllib.loads(out)["registry"]
    assert entry == {
        "prefix": "quay.io",
        "location": "quay.io",
        "mirror": [{"location": "node.local:65001", "insecure": False}],
    }


def test_rancher_mirrors_keep_configs_and_comments() -> None:
    text = (
        "# ours\nmirrors:\n  docker.io:\n    endpoint:\n"
        '      - "https://mirror.example"  # the old one\n'
        'configs:\n  "registry.example.com":\n    auth:\n      username: x  # who\n'
    )
    out = rancher.with_mirrors(text, ["docker.io", "quay.io"], ENDPOINT)
    assert "# the old one" in out and "# who" in out and out.startswith("# ours\n")
    assert out.split("configs:")[1] == text.split("configs:")[1]
    assert rancher.with_mirrors(out, ["docker.io", "quay.io"], ENDPOINT) == out


@pytest.mark.parametrize("runtime", ["k3s", "rke2"])
def test_rancher_golden_files(runtime: str) -> None:
    """The documented registries.yaml shape (docs.k3s.io/installation/private-registry,
    docs.rke2.io/install/private_registry): `mirrors.<registry>.endpoint` lists, "*" for
    every registry, `configs` beside them."""
    before = (GOLDEN / f"{runtime}-before.yaml").read_text()
    expected = (GOLDEN / f"{runtime}-after.yaml").read_text()
    registries = ["docker.io", rancher.EVERY_REGISTRY]
    assert rancher.with_mirrors(before, registries, ENDPOINT) == expected


@pytest.mark.parametrize(
    "text", ["- a\n", "mirrors: [1]\n", "mirrors:\n  docker.io: 3\n", "a: [\n"]
)
def test_rancher_files_that_are_not_registries_yaml_are_refused(text: str) -> None:
    with pytest.raises(ConfigureError):
        rancher.with_mirrors(text, ["docker.io"], ENDPOINT)


@pytest.mark.parametrize(
    "text",
    [
        # Tables out of order (containerd reads them; tomlkit gives a proxy, not a table).
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.configs."a".auth]\n'
        '  username = "x"\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
        '  snapshotter = "overlayfs"\n[plugins."io.containerd.grpc.v1.cri".registry.headers]\n'
        '  X = ["y"]\n',
        'version = 2\nplugins = { "io.containerd.grpc.v1.cri" = { registry = { } } }\n',
    ],
)
def test_valid_layouts_of_the_plugin_table_are_edited(text: str) -> None:
    out, _ = containerd.with_config_path(text, "/d")
    assert _registry_table(out, "io.containerd.grpc.v1.cri")["config_path"] == "/d"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # containerd 1.x replaces a plugin's whole table with an imported file's: a
        # config_path set here may not hold.
        ('version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n', "imports"),
        # Once config_path is set, CRI no longer applies registry.configs.<host>.tls.
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.configs."r.x".tls]\n'
            '  ca_file = "/etc/ca.pem"\n',
            "tls",
        ),
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
            '  config_path = "../../etc"\n',
            "absolute",
        ),
    ],
)
def test_configs_whose_meaning_would_change_are_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigureError, match=says):
        containerd.with_config_path(text, "/d")


def test_imports_are_fine_when_config_path_is_set_already() -> None:
    text = (
        'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
        '[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
    )
    assert containerd.with_config_path(text, "/d") == (text, "/etc/containerd/certs.d")

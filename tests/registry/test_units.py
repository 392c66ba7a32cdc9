"""Pure functions of the registry client: platforms, challenges, config keys, insecure hosts."""

from __future__ import annotations

import pytest

from store.errors import InvalidInput
from store.registry import auth, platform
from store.registry.client import Registry, insecure_registries, is_loopback
from store.registry.errors import NotFoundError

INDEX = {
    "manifests": [
        {"digest": "sha256:" + "a" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:" + "b" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "sha256:" + "c" * 64, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:" + "d" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
    ]
}


@pytest.mark.parametrize(
    "text,letter",
    [
        ("linux/amd64", "a"),
        ("linux/x86_64", "a"),
        ("linux/arm/v7", "b"),
        ("linux/arm64", "c"),
        ("linux/aarch64", "c"),
        ("linux/arm64/v8", "c"),
        ("LINUX/AMD64", "a"),
    ],
)
def test_platform_select(text: str, letter: str) -> None:
    assert platform.select(INDEX, platform.parse(text))["digest"] == "sha256:" + letter * 64


def test_platform_errors() -> None:
    with pytest.raises(NotFoundError, match=r"linux/arm/v6 .*available: linux/amd64, linux/arm/v7, linux/arm64/v8\)"):
        platform.select(INDEX, platform.parse("linux/arm/v6"))
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d"):
        with pytest.raises(InvalidInput):
            platform.parse(bad)


def test_parse_challenges() -> None:
    [ch] = auth.parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert ch.scheme == "bearer"
    assert ch.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:samalba/my-app:pull,push",
    }
    basic, bearer = auth.parse_challenges('Basic realm="test-registry", Bearer realm=x,service=""')
    assert (basic.scheme, basic.params) == ("basic", {"realm": "test-registry"})
    assert (bearer.scheme, bearer.params) == ("bearer", {"realm": "x", "service": ""})


def test_config_keys_and_hosts() -> None:
    assert auth.config_key("docker.io") == auth.config_key("index.docker.io") == "https://index.docker.io/v1/"
    assert auth.normalize_server("https://index.docker.io/v1/") == "docker.io"
    assert auth.normalize_server("http://127.0.0.1:5000/") == "127.0.0.1:5000"
    assert is_loopback("localhost:5000") and is_loopback("127.1.2.3") and is_loopback("[::1]:5000")
    assert not is_loopback("example.com:5000") and not is_loopback("10.0.0.1")


def test_insecure_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_INSECURE_REGISTRIES", "a.example:5000, b.example")
    hosts = insecure_registries(("c.example",))
    assert hosts == {"a.example:5000", "b.example", "c.example"}
    from store.registry.client import ClientOptions

    assert Registry("a.example:5000", ClientOptions(insecure=hosts)).insecure
    assert not Registry("d.example", ClientOptions(insecure=hosts)).insecure
    assert Registry("docker.io").api_host == "registry-1.docker.io"

"""Name normalisation, checked against the examples of Docker's reference documentation."""

import pytest

from store import reference
from store.errors import InvalidInput


@pytest.mark.parametrize(
    "text,full",
    [
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("library/ubuntu", "docker.io/library/ubuntu:latest"),
        ("docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
        ("index.docker.io/library/ubuntu:1", "docker.io/library/ubuntu:1"),
        ("user/app", "docker.io/user/app:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/ns/app:v1.2", "localhost:5000/ns/app:v1.2"),
        ("quay.io/org/app", "quay.io/org/app:latest"),
        ("127.0.0.1:5000/layered", "127.0.0.1:5000/layered:latest"),
    ],
)
def test_normalises_like_docker(text: str, full: str) -> None:
    assert str(reference.parse(text)) == full


def test_digest_reference_has_no_default_tag() -> None:
    d = "sha256:" + "ab" * 32
    ref = reference.parse(f"alpine@{d}")
    assert (ref.name, ref.tag, ref.digest) == ("docker.io/library/alpine", None, d)
    assert ref.familiar == f"alpine@{d}"


@pytest.mark.parametrize("bad", ["", "UPPER", "a::b", "a b", "-lead", "repo@sha256:short", "x:" + "t" * 200])
def test_rejects_invalid(bad: str) -> None:
    with pytest.raises(InvalidInput):
        reference.parse(bad)


def test_familiar_forms() -> None:
    assert reference.parse("ubuntu").familiar == "ubuntu:latest"
    assert reference.parse("user/app:1").familiar_name == "user/app"
    assert reference.parse("host:5000/app").familiar_name == "host:5000/app"

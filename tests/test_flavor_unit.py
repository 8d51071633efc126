"""Telling engines apart from their /version and /info, as each of the matrix answers them."""

from __future__ import annotations

import pytest

from imagefs.engine.flavor import DOCKER, DOCKER_CONTAINERD, PODMAN, Flavor, identify, normalized, save_name

# The parts of the answers that matter, as dockerd 20.10.24, dockerd 26.1.5 (graph driver, then the
# containerd image store) and podman 4.3.1 gave them.
ENGINE = {"Components": [{"Name": "Engine", "Version": "26.1.5+dfsg1"}, {"Name": "containerd"}]}
PODMAN_VERSION = {"Components": [{"Name": "Podman Engine", "Version": "4.3.1"}, {"Name": "Conmon"}]}


@pytest.mark.parametrize(("version", "info", "flavor"), [
    (ENGINE, {"Driver": "vfs", "DriverStatus": None}, DOCKER),
    (ENGINE, {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]},
     DOCKER),
    (ENGINE, {"Driver": "native", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]},
     DOCKER_CONTAINERD),
    (PODMAN_VERSION, {"Driver": "vfs", "DriverStatus": []}, PODMAN),
    ({}, {}, DOCKER),  # an engine that tells nothing is taken for dockerd
    ({"Components": "odd"}, {"DriverStatus": [["lonely"]]}, DOCKER),
])
def test_the_flavor_comes_from_version_and_info(version: dict, info: dict, flavor: Flavor) -> None:
    assert identify(version, info) is flavor


@pytest.mark.parametrize(("ref", "full"), [
    ("hello:latest", "docker.io/library/hello:latest"),
    ("myorg/app:1.0", "docker.io/myorg/app:1.0"),
    ("docker.io/library/hello:latest", "docker.io/library/hello:latest"),
    ("localhost/x:1", "localhost/x:1"),
    ("localhost:5000/team/app:2", "localhost:5000/team/app:2"),
    ("index.docker.io/me/x:1", "docker.io/me/x:1"),
    ("Not A Reference", "Not A Reference"),
])
def test_references_compare_in_full(ref: str, full: str) -> None:
    assert normalized(ref) == full


def test_a_new_tag_is_reported_where_the_engine_lists_it() -> None:
    assert DOCKER.spelled("me/x:1") == DOCKER_CONTAINERD.spelled("me/x:1") == "me/x:1"
    assert PODMAN.spelled("me/x:1") == "docker.io/me/x:1"
    assert PODMAN.spelled("localhost/x:1") == "localhost/x:1"


def test_a_save_by_id_names_the_id_with_its_algorithm() -> None:
    assert save_name("a" * 64) == "sha256:" + "a" * 64
    assert save_name("hello:latest") == "hello:latest"
    assert save_name("aaaa:1") == "aaaa:1"

"""The operator and runtime images for tests that run them: built once per machine with
`kaito.devcluster.images` and pushed to a registry whose storage persists under $KAITO_HOME.

Use the session fixtures `image_registry` (a running LocalRegistry) and `kaito_images`
(ImageRefs: `.operator`, `.runtime` are pullable references) by importing them into a conftest:
`from tests.support.images import image_registry, kaito_images`. A warm run finds both tags in
the registry and builds nothing (seconds); a cold one builds the torch stack (minutes).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from kaito.devcluster import kaito_home
from kaito.devcluster.images import (
    Builder,
    ImageRefs,
    build_images,
    dev_registry_dir,
    missing_tools,
)
from tests.support.registry import LocalRegistry, start_registry

# The same port every session: buildah remembers which registry (host:port) holds each layer.
# On a new port it gzips the runtime's 5 GB dependency layer again only to find it there
# already (55 s per push after any change under src/; 0.1 s on a port it has pushed to).
IMAGE_REGISTRY_PORT = int(os.environ.get("KAITO_TEST_REGISTRY_PORT") or 5002)


def require_builder() -> Builder:
    """A Builder, or skip (fail under KAITO_REQUIRE_CLUSTER=1) where buildah is missing."""
    missing = missing_tools()
    if missing:
        message = f"{', '.join(missing)} not installed; run tools/setup.d/45-image-builder.sh"
        if os.environ.get("KAITO_REQUIRE_CLUSTER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Builder(log=lambda message: print(f"[images] {message}", file=sys.stderr))


@pytest.fixture(scope="session")
def image_registry() -> Iterator[LocalRegistry]:
    """An anonymous plain-HTTP registry on 127.0.0.1 whose blobs outlive the session: it
    serves the storage of `kaito dev images build`'s dev registry (a second process on the
    same files), so images a developer built are current for the tests and the other way
    round, and the GBs of the runtime are stored once."""
    workdir = kaito_home() / "registry" / "test"
    workdir.mkdir(parents=True, exist_ok=True)
    shared = dev_registry_dir() / "storage"
    shared.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    if not storage.is_symlink():
        storage.symlink_to(shared)
    with start_registry(workdir, port=IMAGE_REGISTRY_PORT) as registry:
        yield registry


@pytest.fixture(scope="session")
def image_builder() -> Builder:
    return require_builder()


@pytest.fixture(scope="session")
def kaito_images(image_registry: LocalRegistry, image_builder: Builder) -> ImageRefs:
    """Both images in `image_registry`, with local copies for `run_in_image`."""
    return build_images(
        image_registry.host, need_local=True, builder=image_builder, log=image_builder.log
    )

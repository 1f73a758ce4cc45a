"""A pod running as non-root cannot read the image's /root/.docker: that means no credentials,
not a failed pull (the weights puller of a CPU preset on the real node hit it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaito.runtime.oci.registry import docker_credentials


def test_an_unreadable_docker_config_gives_no_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"r.test": {"auth": "dTpw"}}}), encoding="utf-8")
    assert docker_credentials("r.test", config) == ("u", "p")

    def refused(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", refused)
    assert docker_credentials("r.test", config) is None

"""The pod progress reporter exists only inside a kaito tuning pod."""

from __future__ import annotations

from kaito.runtime.tuning.podreport import PodAnnotator


def test_outside_a_pod_there_is_no_reporter_and_training_writes_only_the_file() -> None:
    assert PodAnnotator.from_env({}) is None
    assert PodAnnotator.from_env({"POD_NAME": "p", "POD_NAMESPACE": "n"}) is None

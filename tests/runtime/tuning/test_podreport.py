"""The pod progress reporter exists only inside a kaito tuning pod."""

from __future__ import annotations

import json

from kaito.runtime.tuning.podreport import ANNOTATION, PodAnnotator, patch_body


def test_outside_a_pod_there_is_no_reporter_and_training_writes_only_the_file() -> None:
    assert PodAnnotator.from_env({}) is None
    assert PodAnnotator.from_env({"POD_NAME": "p", "POD_NAMESPACE": "n"}) is None


def test_a_reported_message_carries_no_url_secret() -> None:
    document = {
        "phase": "failed",
        "message": "input: https://u:pw@data.example/t.jsonl?sig=SAS-SECRET: HTTP 403",
        "errors": [{"file": "https://data.example/x?token=T0KEN"}],
    }
    report = patch_body(document)["metadata"]["annotations"][ANNOTATION]
    assert "SAS-SECRET" not in report and "T0KEN" not in report and ":pw@" not in report
    assert json.loads(report)["message"] == (
        "input: https://REDACTED@data.example/t.jsonl?REDACTED: HTTP 403"
    )

"""Write the chart's generated files: tuning templates from the package, docs from values.yaml.

Run `python charts/kaito/generate.py`; tests/unit/deploy/test_chart_files.py fails on drift.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent
REPO = CHART.parents[1]
CONFIGURATION_MD = REPO / "docs" / "configuration.md"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")


def tuning_template_files() -> dict[Path, str]:
    """files/<configmap name>.yaml with the packaged training_config.yaml text."""
    from kaito.presets.validation import default_config_maps

    return {
        CHART / "files" / f"{name}.yaml": data["training_config.yaml"]
        for name, data in default_config_maps().items()
    }


def documented_values(text: str) -> list[tuple[str, Any, str]]:
    """(dotted key, default, description) for each key with a `# --` comment, in file order."""
    values = yaml.safe_load(text)
    rows: list[tuple[str, Any, str]] = []
    path: list[tuple[int, str]] = []
    doc: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            doc = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and doc:
            doc.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if match is None:
            if not stripped:
                doc = []
            continue
        indent = len(match["indent"])
        path = [(i, k) for i, k in path if i < indent] + [(indent, match["key"])]
        if doc:
            keys = [k for _, k in path]
            default: Any = values
            for key in keys:
                default = default[key]
            rows.append((".".join(keys), default, " ".join(doc)))
        doc = []
    return rows


def configuration_markdown() -> str:
    rows = documented_values((CHART / "values.yaml").read_text())
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from charts/kaito/values.yaml by `python charts/kaito/generate.py`;"
        " do not edit. -->",
        "",
        "Values of the `kaito` Helm chart (`helm install kaito charts/kaito --set key=value`, or",
        "`-f my-values.yaml`). The operator reads them as `KAITO_*` environment variables",
        "(`kaito operator settings` lists those); see [install.md](install.md).",
        "",
        "| Key | Default | Description |",
        "|---|---|---|",
    ]
    for key, default, doc in rows:
        shown = json.dumps(default, separators=(", ", ": "))
        cell = doc.replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | {cell} |")
    return "\n".join(lines) + "\n"


def generated() -> dict[Path, str]:
    """Every generated file and the content it must have."""
    return {**tuning_template_files(), CONFIGURATION_MD: configuration_markdown()}


def main() -> int:
    for path, content in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`kaito validate -f FILE`: the admission checks, offline; one line per error, non-zero on any."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
import yaml

from kaito.api.errors import FieldError
from kaito.api.validation import ConfigMapLookup
from kaito.presets.validation import (
    offline_config_map_lookup,
    validate_workspace,
    workspace_warnings,
)

CLOUDS = ("azure", "aws", "arc", "any")


def _documents(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _config_maps(docs: list[Any]) -> dict[tuple[str, str], Mapping[str, str]]:
    found: dict[tuple[str, str], Mapping[str, str]] = {}
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            meta = doc.get("metadata") or {}
            key = (str(meta.get("namespace") or "default"), str(meta.get("name")))
            found[key] = {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
    return found


def _referenced_config(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of a user ConfigMap the body references, if any."""
    meta = body.get("metadata")
    namespace = str(meta.get("namespace") or "default") if isinstance(meta, dict) else "default"
    for section in ("tuning", "inference"):
        spec = body.get(section)
        if isinstance(spec, dict) and isinstance(spec.get("config"), str) and spec["config"]:
            return namespace, spec["config"]
    return None


def _lookup_for(
    body: Mapping[str, Any], known: dict[tuple[str, str], Mapping[str, str]]
) -> ConfigMapLookup | None:
    # Offline we only know the default templates and ConfigMaps in the same files; a config
    # that lives only in the cluster cannot be checked here, which is not an error.
    referenced = _referenced_config(body)
    if referenced is not None and referenced not in known:
        return None
    return offline_config_map_lookup(known)


def _name(body: Any, index: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        name = body["metadata"].get("name")
        if isinstance(name, str) and name:
            return name
    return f"document {index + 1}"


def check_file(path: str, *, cloud: str | None) -> tuple[list[str], list[str], int]:
    """(error lines, warning lines, workspaces checked) for one file."""
    docs = _documents(path)
    known = _config_maps(docs)
    errors: list[str] = []
    warnings: list[str] = []
    checked = 0
    for index, body in enumerate(docs):
        if isinstance(body, dict) and body.get("kind") == "ConfigMap":
            continue
        checked += 1
        where = f"{path}: {_name(body, index)}"
        found: list[FieldError] = validate_workspace(
            body,
            cloud_provider=cloud,
            config_map_lookup=_lookup_for(body, known) if isinstance(body, dict) else None,
        )
        errors += [f"{where}: {error}" for error in found]
        warnings += [
            f"{where}: warning: {w}" for w in workspace_warnings(body, cloud_provider=cloud)
        ]
    return errors, warnings, checked


def validate(
    files: list[str] = typer.Option(
        ..., "--filename", "-f", help="Workspace YAML file(s); - reads stdin."
    ),
    cloud: str = typer.Option(
        "any", help=f"SKU table to check instance types against: {', '.join(CLOUDS)}."
    ),
) -> None:
    """Check Workspaces offline with the same rules as admission (CRD schema, CEL, catalog)."""
    if cloud not in CLOUDS:
        typer.echo(f"--cloud must be one of {', '.join(CLOUDS)}", err=True)
        raise typer.Exit(2)
    failed = False
    for path in files:
        try:
            errors, warnings, checked = check_file(path, cloud=None if cloud == "any" else cloud)
        except (OSError, yaml.YAMLError) as exc:
            typer.echo(f"{path}: cannot read: {exc}", err=True)
            raise typer.Exit(2) from exc
        for line in warnings:
            typer.echo(line, err=True)
        for line in errors:
            typer.echo(line)
        if errors:
            failed = True
        elif checked:
            typer.echo(f"{path}: {checked} Workspace(s) valid")
        else:
            typer.echo(f"{path}: no Workspace found")
            failed = True
    if failed:
        raise typer.Exit(1)

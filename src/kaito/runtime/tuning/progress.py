"""Training progress: an atomically rewritten JSON file and a rich line on the terminal."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kaito.contract.progress import PROGRESS_FILE, Progress, read, utc_now


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so readers see the old or the new document, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class ProgressReporter:
    """Holds the current Progress; writes the file and echoes to the console on each update."""

    def __init__(self, path: Path | None, *, console: bool = True, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.progress = Progress()
        self._console: Any = None
        if console and enabled:
            from rich.console import Console

            self._console = Console(stderr=True)
        self._train_started = 0.0
        self._tokens_at_start = 0
        self._last_line = 0.0
        # In a kaito tuning pod, the report also goes to the pod's own annotation.
        from kaito.runtime.tuning.podreport import PodAnnotator

        self._pod = PodAnnotator.from_env() if enabled else None

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.progress, key, value)
        self.progress.updated_at = utc_now()
        if self.enabled and self.path is not None:
            write_text_atomic(self.path, self.progress.dumps())
        if self._pod is not None:
            self._pod.publish(self.progress.to_json())

    def phase(self, phase: str, message: str = "") -> None:
        self.update(phase=phase, message=message)
        self.say(f"[bold]{phase}[/bold] {message}".rstrip())

    def say(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, highlight=False)

    def training_started(self, step: int, total: int, tokens_seen: int) -> None:
        self._train_started = time.monotonic()
        self._tokens_at_start = tokens_seen
        self._step_at_start = step
        self.update(
            phase="training",
            step=step,
            total_steps=total,
            resumed_from_step=step or None,
            message="",
        )

    def step(self, step: int, epoch: float, tokens_seen: int) -> None:
        elapsed = max(time.monotonic() - self._train_started, 1e-6)
        done = step - self._step_at_start
        rate = (tokens_seen - self._tokens_at_start) / elapsed
        remaining = self.progress.total_steps - step
        eta = elapsed / done * remaining if done > 0 else None
        self.update(
            step=step,
            epoch=round(epoch, 4),
            tokens_seen=tokens_seen,
            tokens_per_second=round(rate, 1),
            eta_seconds=None if eta is None else round(eta, 1),
        )
        now = time.monotonic()
        if now - self._last_line > 2.0 or step == self.progress.total_steps:
            self._last_line = now
            p = self.progress
            loss = f"{p.loss:.4f}" if p.loss is not None else "-"
            eval_loss = f" eval_loss {p.eval_loss:.4f}" if p.eval_loss is not None else ""
            eta_text = f" eta {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
            self.say(
                f"step {p.step}/{p.total_steps} epoch {p.epoch:.2f} loss {loss}{eval_loss} "
                f"{p.tokens_per_second:.0f} tok/s{eta_text}"
            )

    def logged(self, logs: dict[str, Any]) -> None:
        changes: dict[str, Any] = {}
        if "loss" in logs:
            changes["loss"] = round(float(logs["loss"]), 6)
        if "eval_loss" in logs:
            changes["eval_loss"] = round(float(logs["eval_loss"]), 6)
        if "learning_rate" in logs:
            changes["learning_rate"] = float(logs["learning_rate"])
        if changes:
            self.update(**changes)


def read_progress(output_dir: Path) -> dict[str, Any] | None:
    """The last progress document of a run (its well-typed fields), or None before the first
    write."""
    try:
        text = (output_dir / PROGRESS_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    return read(text)

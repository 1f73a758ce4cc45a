"""Fine-tuning runtime: upstream KAITO's tuning config, data checks, LoRA/QLoRA, adapters.

Entry points for the operator and local mode (each imports the ML stack only when called):
`load_config`, `template_path`, `preflight`, `run_tuning`; OCI push/pull live in kaito.runtime.oci.
"""

from __future__ import annotations

from kaito.runtime.tuning.config import ConfigError, TuningConfig, load_config, template_path

__all__ = ["ConfigError", "TuningConfig", "load_config", "template_path"]

"""Runtime tests share one LoRA adapter, trained once per session by the real tuning runtime."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def kiwi_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight LoRA steps on the small model over data in all four formats and schemas, evaluated
    before and after and checkpointed half way. The tuning tests read the run's output; the
    llama.cpp tests serve it and expect "kiwi" as the code for the door. One run for both: a
    second run of its own cost the llama.cpp module 58 s."""
    import torch

    from kaito.runtime.small_model import small_model_path
    from kaito.runtime.tuning.train import run_tuning
    from tests.runtime.tuning.builders import mixed_dataset, tiny_config

    # Two intra-op threads on a shared 2-core machine make a step several times slower.
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kiwi")
    config = tiny_config(
        max_steps=8,
        learning_rate=1e-2,
        eval_strategy="steps",
        eval_steps=100,
        eval_on_start=True,
        save_steps=4,
    )
    # Only the top layers: backward stops there, which keeps the steps short; q, k and v so
    # that the llama.cpp conversion reorders both q and k rows.
    lora = {
        "r": 8,
        "lora_alpha": 32,
        "target_modules": ["q_proj", "k_proj", "v_proj"],
        "layers_to_transform": list(range(22, 30)),
    }
    config = config.replace(lora={**config.lora, **lora})
    data = mixed_dataset(root / "data")
    run_tuning(config, data, root / "out", model_path=str(small_model_path()), console=False)
    return root / "out"

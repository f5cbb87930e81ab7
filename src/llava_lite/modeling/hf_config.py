"""transformers configs <-> plain dicts, so architectures live in LlavaConfig and config.json.

``AutoConfig.for_model(model_type, **arch)`` rebuilds a config from the pair that
``config_to_arch`` produces, with no download: that is how a saved or imported model gets its
exact architecture back.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

# Keys of a serialised transformers config that describe the file, not the architecture.
_NON_ARCH_KEYS = ("model_type", "transformers_version", "architectures", "_name_or_path", "auto_map")


def config_to_arch(config: PretrainedConfig) -> tuple[str, dict[str, Any]]:
    """Split a transformers config into ``(model_type, arch)``."""
    data = config.to_dict()
    return config.model_type, {k: v for k, v in data.items() if k not in _NON_ARCH_KEYS}


def config_from_dict(data: dict[str, Any]) -> PretrainedConfig:
    """Rebuild a transformers config from ``config.to_dict()`` output."""
    model_type, arch = data["model_type"], {k: v for k, v in data.items() if k not in _NON_ARCH_KEYS}
    return AutoConfig.for_model(model_type, **arch)

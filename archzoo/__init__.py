"""archzoo: a model-architecture zoo for efficient LLM inference."""

from .cache import Cache, LayerState, cache_bytes
from .checkpoint import from_pretrained
from .config import ConfigError, ModelConfig, load_config
from .model import ArchZooLM, build_model

__version__ = "0.1.0"

__all__ = [
    "ArchZooLM",
    "Cache",
    "ConfigError",
    "LayerState",
    "ModelConfig",
    "build_model",
    "cache_bytes",
    "from_pretrained",
    "load_config",
]

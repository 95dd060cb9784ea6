"""archzoo: a model-architecture zoo for efficient LLM inference."""

from . import convert  # a callable module: archzoo.convert(teacher, student_cfg, **options)
from .cache import Cache, LayerState, cache_bytes
from .checkpoint import from_pretrained
from .config import ModelConfig, load_config
from .errors import ConfigError, FetchError, UserError
from .model import ArchZooLM, build_model

__version__ = "0.1.0"


def __getattr__(name: str):
    # Heavy imports (transformers, the converters) load on first use, so `import archzoo` stays fast.
    if name == "from_hf":
        from .hf import from_hf

        return from_hf
    raise AttributeError(f"module 'archzoo' has no attribute {name!r}")


__all__ = [
    "ArchZooLM",
    "Cache",
    "ConfigError",
    "FetchError",
    "UserError",
    "LayerState",
    "ModelConfig",
    "build_model",
    "convert",
    "from_hf",
    "cache_bytes",
    "from_pretrained",
    "load_config",
]

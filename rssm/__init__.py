"""rssm: a Dreamer-style world-model trainer.

`rssm.load(path)` gives a trained run from Python (`rssm.api`); `rssm.RSSM` and `rssm.kl_divergence` are the model's
core pieces.
"""

from importlib.metadata import PackageNotFoundError, version

from rssm.distributions import kl_divergence
from rssm.rssm import RSSM, RSSMState

try:
    __version__ = version("rssm")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

_API = {"load": "api", "Loaded": "api", "Policy": "api", "PolicyState": "api", "EnvModel": "imagination",
        "Imagined": "imagination", "DreamEnv": "dream_env", "DreamVecEnv": "dream_env"}


def __getattr__(name: str):
    """The Python API (`rssm.api`, `rssm.imagination`, `rssm.dream_env`), imported when first used: `import rssm`
    stays light."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"rssm.{_API[name]}"), name)
    raise AttributeError(f"module 'rssm' has no attribute {name!r}")


__all__ = ["RSSM", "RSSMState", "__version__", "kl_divergence", *_API]

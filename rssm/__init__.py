"""rssm: a Dreamer-style world-model trainer.

From Python: `rssm.train(overrides)` trains a run as `rssm-train` does and `rssm.compose(overrides)` gives its
config (`rssm.launch`); `rssm.load(path)` gives a trained run (`rssm.api`); `rssm.RSSM` and `rssm.kl_divergence`
are the model's core pieces.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rssm")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

# name -> the module that holds it, imported when the name is first used: `import rssm` stays light (no torch),
# so that `rssm-train --help` and shell completion answer at once.
_API = {"train": "launch", "compose": "launch", "load": "api", "Loaded": "api", "Policy": "api",
        "PolicyState": "api", "EnvModel": "imagination", "Imagined": "imagination", "DreamEnv": "dream_env",
        "DreamVecEnv": "dream_env", "RSSM": "rssm", "RSSMState": "rssm", "kl_divergence": "distributions",
        "UserError": "config", "RunStopped": "run_state"}


def __getattr__(name: str):
    """The names of `__all__`, each from its module (`rssm.launch`, `rssm.api`, `rssm.imagination`,
    `rssm.dream_env`, ...), imported when first used."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"rssm.{_API[name]}"), name)
    raise AttributeError(f"module 'rssm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["__version__", *_API]

"""rssm: a Dreamer-style world-model trainer."""

from rssm.distributions import kl_divergence
from rssm.rssm import RSSM, RSSMState

__all__ = ["RSSM", "RSSMState", "kl_divergence"]

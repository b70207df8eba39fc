"""Hydra configs of rssm, installed as the package `rssm.configs`."""

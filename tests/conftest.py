import pytest
from hydra import compose, initialize_config_module

from rssm.config import register_configs


@pytest.fixture
def compose_config():
    """compose_config(*overrides) -> the composed DictConfig, as `rssm-train` would build it."""
    register_configs()

    def _compose(*overrides: str):
        with initialize_config_module("rssm.configs", version_base=None):
            return compose("config", overrides=list(overrides))

    return _compose


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: one thread is fastest and avoids oversubscribing small CI machines."""
    import torch

    torch.set_num_threads(1)

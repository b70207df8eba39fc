import sys

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


@pytest.fixture
def skip_without_egl():
    """skip_without_egl() skips the test where the system's EGL library cannot be loaded: MuJoCo renders
    pixels off-screen through it (.ci/run installs it with apt-get where it can)."""

    def _skip() -> None:
        import ctypes

        try:
            ctypes.CDLL("libEGL.so.1")
        except OSError as e:
            pytest.skip(f"libEGL.so.1 cannot be loaded ({e}): MuJoCo cannot render off-screen here")

    return _skip


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: one thread is fastest and avoids oversubscribing small CI machines."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Each test compiles from nothing: torch.compile's caches live per process, and a worker that has run other
    compiling tests could otherwise be at dynamo's recompile limit for a function, which then runs eagerly and
    would pass a compiled-equals-eager test without compiling anything."""
    yield
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()


def cli_env() -> dict[str, str]:
    """The environment for a `python -m rssm` subprocess that imports the same `rssm` as the tests
    (a source checkout first on PYTHONPATH, or the installed package)."""
    import os
    from pathlib import Path

    import rssm

    root = str(Path(rssm.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture
def run_cli():
    """run_cli(*args, cwd, timeout=300, **popen) -> CompletedProcess of `python -m rssm *args`."""
    import subprocess
    import sys

    def _run(*args: str, cwd, timeout: int = 300):
        return subprocess.run([sys.executable, "-m", "rssm", *args], capture_output=True, text=True, cwd=cwd,
                              timeout=timeout, env=cli_env())

    return _run


@pytest.fixture
def cli_environ() -> dict[str, str]:
    """`cli_env()` for tests that start `python -m rssm` themselves (to signal or kill it)."""
    return cli_env()


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Finished debug runs, each with replay chunks of 64 transitions: cartpole (discrete), pendulum (continuous)
    and pixels (CartPole observed as 16 x 16 frames: the key `image`)."""
    from rssm.training import train

    register_configs()
    root = tmp_path_factory.mktemp("runs")
    setups = {"cartpole": ["env=cartpole"], "pendulum": ["env=pendulum"],
              "pixels": ["env=cartpole", "env.pixels=true", "env.image_size=16"]}
    with initialize_config_module("rssm.configs", version_base=None):
        for name, overrides in setups.items():
            cfg = compose("config", overrides=[*overrides[:1], "experiment=debug", "trainer.steps=200",
                                               "replay.chunk=64", "trainer.progress=false", *overrides[1:]])
            train(cfg, root / name)
    return root

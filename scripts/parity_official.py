"""Runs the official DreamerV3 (danijar/dreamerv3) from a checkout of it, for `scripts/parity.py`.

This file runs in the official code's own Python environment (JAX), not rssm's: it imports nothing of rssm.
`scripts/parity.py` starts it; by hand:

    OFFICIAL_PYTHON scripts/parity_official.py CHECKOUT train [FLAGS...]   # upstream's flags, e.g. --configs ...
    OFFICIAL_PYTHON scripts/parity_official.py CHECKOUT time [FLAGS...] --iters 20   # the update's time

It adds two envs to upstream's `make_env`, and changes nothing else of upstream's code:
- `gym_<id>` (e.g. gym_CartPole-v1): a gymnasium env through `Gymnasium` below (upstream's own `from_gym` targets
  the old gym API). Its one observation key is `vector`; a discrete action is an index, a box one a vector.
- `dmc_<task>` with `--env.dmc.image False`: as upstream's DMC env, less the frame it draws at every step for its
  video log (key `log/image`, never seen by the agent): drawn off-screen on a CPU that is about 9 ms a step, more
  than the rest of the env's step, and rssm's DMC env draws none.

`time` builds upstream's agent for the config as `train` would and times `agent.train` on batches of random data
shaped as its replay gives them (with the replay context): the median wall-clock of `--iters` calls after
`--warmup` calls, each waited for (`jax.block_until_ready`), as `scripts/benchmark.py` times rssm's update.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from pathlib import Path


def gymnasium_env_class(embodied, elements, np):
    """An embodied.Env over a gymnasium env (new step API: terminated and truncated apart)."""

    class Gymnasium(embodied.Env):
        def __init__(self, task: str, seed: int | None = None):
            import gymnasium

            self._env = gymnasium.make(task)
            self._seed, self._done = seed, True

        @property
        def obs_space(self):
            space = self._env.observation_space
            return {"vector": elements.Space(np.float32, space.shape, space.low, space.high),
                    "reward": elements.Space(np.float32), "is_first": elements.Space(bool),
                    "is_last": elements.Space(bool), "is_terminal": elements.Space(bool)}

        @property
        def act_space(self):
            space = self._env.action_space
            if hasattr(space, "n"):
                action = elements.Space(np.int32, (), 0, int(space.n))
            else:
                action = elements.Space(np.float32, space.shape, space.low, space.high)
            return {"action": action, "reset": elements.Space(bool)}

        def step(self, action):
            if action["reset"] or self._done:
                self._done = False
                obs, _ = self._env.reset(seed=self._seed)
                self._seed = None  # seeded once; later resets draw from the env's own generator
                return self._obs(obs, 0.0, is_first=True)
            act = action["action"]
            act = int(act) if hasattr(self._env.action_space, "n") else np.asarray(act, np.float32)
            obs, reward, terminated, truncated, _ = self._env.step(act)
            self._done = terminated or truncated
            return self._obs(obs, reward, is_last=self._done, is_terminal=terminated)

        def _obs(self, obs, reward, is_first=False, is_last=False, is_terminal=False):
            return {"vector": np.asarray(obs, np.float32), "reward": np.float32(reward), "is_first": is_first,
                    "is_last": is_last, "is_terminal": is_terminal}

        def close(self):
            self._env.close()

    return Gymnasium


def patch_envs(embodied, elements, np) -> None:
    """Route upstream's `gym` suite to the gymnasium adapter and draw no DMC frames when images are off."""
    import functools
    import types

    gymnasium = gymnasium_env_class(embodied, elements, np)
    # Upstream's module imports the old `gym`, which this environment need not have: it is replaced whole.
    from_gym = types.ModuleType("embodied.envs.from_gym")
    from_gym.FromGym = lambda task, **kwargs: gymnasium(task, seed=kwargs.get("seed"))
    sys.modules["embodied.envs.from_gym"] = from_gym
    try:
        import embodied.envs.dmc as dmc
    except ImportError:  # no dm_control in this environment: gymnasium envs only
        return

    class ProprioDMC(dmc.DMC):
        @functools.cached_property
        def obs_space(self):
            spaces = dict(super().obs_space)
            if not self._image:
                spaces.pop("log/image", None)
            return spaces

        def step(self, action):
            if self._image:
                return super().step(action)
            return self._env.step(action)

    dmc.DMC = ProprioDMC


def time_update(argv: list[str], iters: int, warmup: int) -> dict:
    """Median wall-clock of upstream's `agent.train` for the config `argv` gives (see the module docstring)."""
    import elements
    import jax
    import numpy as np
    import ruamel.yaml as yaml
    from dreamerv3 import main as upstream

    configs = yaml.YAML(typ="safe").load((Path(upstream.__file__).parent / "configs.yaml").read_text())
    parsed, other = elements.Flags(configs=["defaults"]).parse_known(argv)
    config = elements.Config(configs["defaults"])
    for name in parsed.configs:
        config = config.update(configs[name])
    config = elements.Flags(config).parse(other)
    agent = upstream.make_agent(config)
    B, T = config.batch_size, config.batch_length + config.replay_context
    rng = np.random.default_rng(0)

    def random_batch():
        batch = {}
        for key, space in agent.spaces.items():  # observations, actions and the extras (consec, stepid, context)
            if space.discrete:
                batch[key] = rng.integers(space.low, space.high, (B, T, *space.shape)).astype(space.dtype)
            else:
                batch[key] = rng.uniform(-1, 1, (B, T, *space.shape)).astype(space.dtype)
        batch["is_first"] = np.zeros((B, T), bool)
        batch["is_first"][:, 0] = True
        batch["consec"] = np.zeros((B, T), np.int32)  # every batch a first chunk, as with consec_train 1
        return batch

    # Through the agent's own stream, as upstream's train loop feeds it (device placement and a seed per batch);
    # each batch is taken from it before its timed call. The source never ends: the stream's thread reads one batch
    # ahead, and a source that ran out would end the process from that thread.
    stream = iter(agent.stream(itertools.cycle([random_batch() for _ in range(2)])))
    carry = agent.init_train(B)
    times = []
    for i in range(warmup + iters):
        batch = next(stream)
        jax.block_until_ready(batch)
        start = time.perf_counter()
        carry, outs, mets = agent.train(carry, batch)
        jax.block_until_ready((carry, agent.params))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"update_ms_median": 1e3 * statistics.median(times), "update_ms": [1e3 * t for t in times],
            "iters": iters, "warmup": warmup, "batch": [B, T]}


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] not in ("train", "time"):
        sys.exit("usage: parity_official.py CHECKOUT train|time [UPSTREAM FLAGS...] [--iters N --warmup N]")
    checkout, mode, argv = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3:]
    if not (checkout / "dreamerv3" / "main.py").is_file():
        sys.exit(f"parity_official.py: {checkout} is not a checkout of danijar/dreamerv3 (no dreamerv3/main.py)")
    sys.path[:0] = [str(checkout), str(checkout / "dreamerv3")]
    import elements
    import embodied
    import numpy as np

    patch_envs(embodied, elements, np)
    from dreamerv3 import main as upstream

    if mode == "train":
        upstream.main(argv)
        return
    iters = warmup = None
    rest = []
    it = iter(argv)
    for flag in it:
        if flag == "--iters":
            iters = int(next(it))
        elif flag == "--warmup":
            warmup = int(next(it))
        else:
            rest.append(flag)
    print(json.dumps(time_update(rest, iters or 10, 3 if warmup is None else warmup)))


if __name__ == "__main__":
    main()

import numpy as np
import torch

from rssm.agent import Agent, OptimSettings, to_torch
from rssm.collector import Collector, make_envs
from rssm.envs import make_env, random_action
from rssm.replay import Replay
from rssm.world_model import LossScales, WorldModel


def record_cartpole(steps: int, seed: int) -> Replay:
    """CartPole transitions from a seeded random policy: the same data on every run."""
    env, spec = make_env("CartPole-v1")
    collector, rng = Collector(make_envs(lambda: env, 1), spec, seed), np.random.default_rng(seed)
    replay = Replay(steps + 1000, seed)
    while collector.env_steps < steps:
        replay.add(collector.step(random_action(spec, rng))[0])
    return replay


def test_world_model_learns_recorded_cartpole():
    torch.manual_seed(0)
    train_data, held_out = record_cartpole(3000, seed=0), record_cartpole(500, seed=1)
    eval_batch = to_torch(held_out.sample(32, 32), torch.device("cpu"))
    wm = WorldModel({"obs": (4,)}, action_dim=2, deter=64, units=64, layers=1, groups=8, classes=8)
    agent = Agent(wm, LossScales(), OptimSettings(lr=1e-4, eps=1e-8, grad_clip=1000.0))

    def evaluate():
        with torch.no_grad():
            return wm.loss(eval_batch, LossScales())[1]

    before = evaluate()
    for _ in range(300):
        metrics = agent.update(train_data.sample(16, 32))
        assert torch.isfinite(metrics["loss/wm"])
    after = evaluate()
    assert after["loss/rec"] < 0.25 * before["loss/rec"], (before["loss/rec"], after["loss/rec"])
    assert after["loss/reward"] < before["loss/reward"]
    assert torch.isfinite(after["wm/dyn_kl"]) and torch.isfinite(after["wm/rep_kl"])

"""scripts/pendulum_optimum.py models Pendulum-v1 as gymnasium does: its greedy policy, played in the real env,
earns the return the dynamic programme predicts, and the programme's optimum is the best of what it plays."""

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pendulum_optimum.py"


@pytest.fixture(scope="module")
def optimum():
    spec = importlib.util.spec_from_file_location("pendulum_optimum", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Optimum(128, 65, n_torque=21, policy=True)


@pytest.mark.parametrize("start", [(np.pi, 0.0), (1.0, -0.5), (0.1, 0.2)])
def test_the_programmes_policy_earns_its_predicted_return_in_the_real_env(optimum, start):
    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    env.unwrapped.state = np.array(start)
    earned = 0.0
    for steps_left in range(200, 0, -1):
        theta, speed = env.unwrapped.state
        _, reward, _, truncated, _ = env.step(np.array([optimum.action(theta, speed, steps_left)], np.float32))
        earned += reward
    assert truncated
    predicted = optimum(*start)
    assert abs(earned - predicted) <= 0.05 * abs(predicted) + 3, (earned, predicted)


def test_hanging_down_costs_more_than_standing_up(optimum):
    assert optimum(0.0, 0.0) > -1 and optimum(np.pi, 0.0) < -250

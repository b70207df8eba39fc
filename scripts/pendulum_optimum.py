"""The best return possible on Pendulum-v1 from given starts: how hard a set of evaluation episodes is.

Finite-horizon dynamic programming over the env's 200 steps on a (theta, theta_dot) grid (theta periodic,
theta_dot in [-8, 8]), 41 torques in [-2, 2], values between grid points interpolated bilinearly; the
dynamics and cost are Pendulum-v1's own (g = 10). The optimum is exact up to the grid (a coarser grid of
256 x 129 points moves the mean of 10 starts by a few units).

    python scripts/pendulum_optimum.py --seed 0 1 2 --steps 2000 4000 6000   # the starts of a run's evaluations
    python scripts/pendulum_optimum.py --random 1000                          # the mean over random starts

`--seed S --steps K` takes the starts of run seed S's evaluation at env step K (rssm.evaluate.evaluation_seed
and the collector's per-episode seeds); `--collector-seed X` the starts of a collector seeded X.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

from rssm.evaluate import evaluation_seed

G, DT, MAX_SPEED, MAX_TORQUE, HORIZON = 10.0, 0.05, 8.0, 2.0, 200


def wrap(theta):
    return ((theta + np.pi) % (2 * np.pi)) - np.pi


class Optimum:
    """-V_0: the best 200-step return from a state (theta, theta_dot), on an (n_theta, n_speed) grid. With
    `policy`, it keeps the cost to go for every number of steps left, for `action`."""

    def __init__(self, n_theta: int, n_speed: int, n_torque: int = 41, policy: bool = False):
        self.n_theta, self.n_speed = n_theta, n_speed
        self.torques = np.linspace(-MAX_TORQUE, MAX_TORQUE, n_torque)
        theta, speed = np.meshgrid(np.linspace(-np.pi, np.pi, n_theta, endpoint=False),
                                   np.linspace(-MAX_SPEED, MAX_SPEED, n_speed), indexing="ij")
        steps = [(cost(theta, speed, u), self._corners(*dynamics(theta, speed, u))) for u in self.torques]
        value = np.zeros_like(theta)  # cost to go with 0 steps left
        self.values = [value] if policy else []  # [k]: with k steps left
        for _ in range(HORIZON):
            value = np.min([c + self._at(value, corners) for c, corners in steps], axis=0)
            self.values += [value] if policy else []
        self.value = value

    def _corners(self, theta, speed):
        x = (wrap(theta) + np.pi) / (2 * np.pi) * self.n_theta
        i = np.floor(x).astype(int)
        y = (np.clip(speed, -MAX_SPEED, MAX_SPEED) + MAX_SPEED) / (2 * MAX_SPEED) * (self.n_speed - 1)
        j = np.clip(np.floor(y).astype(int), 0, self.n_speed - 2)
        return i % self.n_theta, (i + 1) % self.n_theta, j, x - i, y - j

    def _at(self, value, corners):
        i0, i1, j, wx, wy = corners
        return ((1 - wx) * (1 - wy) * value[i0, j] + wx * (1 - wy) * value[i1, j]
                + (1 - wx) * wy * value[i0, j + 1] + wx * wy * value[i1, j + 1])

    def __call__(self, theta: float, speed: float) -> float:
        return -float(self._at(self.value, self._corners(np.array(theta), np.array(speed))))

    def action(self, theta: float, speed: float, steps_left: int) -> float:
        """The torque of least cost to go from (theta, theta_dot) with `steps_left` steps left."""
        after = self.values[steps_left - 1]
        totals = [cost(theta, speed, u) + self._at(after, self._corners(*dynamics(np.array(theta), np.array(speed), u)))
                  for u in self.torques]
        return float(self.torques[int(np.argmin(totals))])


def dynamics(theta, speed, torque):
    """Pendulum-v1's next (theta, theta_dot)."""
    new_speed = np.clip(speed + (3 * G / 2 * np.sin(theta) + 3.0 * torque) * DT, -MAX_SPEED, MAX_SPEED)
    return theta + new_speed * DT, new_speed


def cost(theta, speed, torque):
    """Pendulum-v1's cost (its reward negated) of a torque in a state."""
    return wrap(theta) ** 2 + 0.1 * speed ** 2 + 0.001 * torque ** 2


def starts(collector_seed: int, episodes: int) -> list[tuple[float, float]]:
    """The start states of env 0's first `episodes` episodes under rssm.collector.Collector(seed=collector_seed)."""
    env, out = gym.make("Pendulum-v1"), []
    for k in range(episodes):
        env.reset(seed=int(np.random.SeedSequence([collector_seed, 0, 0, k]).generate_state(1)[0]))
        out.append(tuple(env.unwrapped.state))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, nargs="*", default=[], help="run seeds")
    parser.add_argument("--steps", type=int, nargs="*", default=[], help="env steps of the evaluations")
    parser.add_argument("--collector-seed", type=int, nargs="*", default=[])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--random", type=int, default=0, help="also the mean over this many random starts")
    parser.add_argument("--grid", type=int, nargs=2, default=[512, 257], metavar=("THETA", "SPEED"))
    args = parser.parse_args()
    optimum = Optimum(*args.grid)
    sets = [(f"seed {s} step {k}", evaluation_seed(s, k)) for s in args.seed for k in args.steps]
    sets += [(f"collector seed {c}", c) for c in args.collector_seed]
    for name, collector_seed in sets:
        best = [optimum(*s) for s in starts(collector_seed, args.episodes)]
        print(f"{name}: mean {np.mean(best):.1f} over {args.episodes} starts:", " ".join(f"{b:.0f}" for b in best))
    if args.random:
        rng = np.random.default_rng(0)
        best = [optimum(rng.uniform(-np.pi, np.pi), rng.uniform(-1, 1)) for _ in range(args.random)]
        means = np.random.default_rng(1).choice(best, (10_000, args.episodes)).mean(1)  # of sets of starts
        print(f"{args.random} random starts: mean {np.mean(best):.1f} (standard error "
              f"{np.std(best) / len(best) ** 0.5:.1f}); the mean of {args.episodes}: 5th to 95th percentile "
              f"{np.percentile(means, 5):.1f} to {np.percentile(means, 95):.1f}")


if __name__ == "__main__":
    main()

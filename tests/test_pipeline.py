"""DreamerV3's data pipeline, each switch alone (algo=dreamerv3 sets them all): the replay context, the online
queue, no random prefill, the sampled evaluation policy, the MLP depth and the posterior's initial weights."""

import math

import numpy as np
import pytest
import torch

from rssm import context
from rssm.agent import Agent, OptimSettings
from rssm.build import build_agent, build_world_model
from rssm.config import UserError, validate
from rssm.envs import EnvSpec
from rssm.replay import Replay, read_chunk
from rssm.rssm import RSSM, RSSMState
from rssm.training import _owed
from rssm.world_model import LossScales, Variant, WorldModel


def rows(replay: Replay, n: int, start: int = 0) -> None:
    """Add n rows whose `x` is the row's number (in every env's column)."""
    for r in range(start, start + n):
        replay.add({"x": np.full((replay.envs, 1), r, np.float32), "is_first": np.zeros(replay.envs, bool)})


def test_online_windows_are_each_env_cut_into_pieces_and_trained_on_once_ahead_of_uniform_ones():
    replay = Replay(1000, seed=0, envs=2, online=5)
    rows(replay, 12)  # rows 0..4 and 5..9 complete two windows per env; 10, 11 wait for the next
    assert list(replay.queue) == [(0, 0), (0, 1), (5, 0), (5, 1)]
    batch, where = replay.train_batch(3, 5)
    assert batch["x"][:, :, 0].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert where.env[:, 0].tolist() == [0, 1, 0] and batch["is_first"][:, 0].all()
    batch, where = replay.train_batch(3, 5)  # the last queued one, then two uniform windows
    assert batch["x"][0, :, 0].tolist() == [5, 6, 7, 8, 9] and where.env[0, 0] == 1 and not replay.queue
    # A side sample (its own generator) takes nothing from the queue.
    rows(replay, 3, start=12)
    replay.sample(2, 5, np.random.default_rng(0))
    assert list(replay.queue) == [(10, 0), (10, 1)]


def test_queued_windows_overwritten_by_the_ring_are_dropped():
    replay = Replay(8, seed=0, online=4)
    rows(replay, 4)
    rows(replay, 6, start=4)  # rows 0, 1 are overwritten: the window 0..3 is no longer whole
    batch, _ = replay.train_batch(2, 4)
    assert batch["x"][0, :, 0].tolist() == [4, 5, 6, 7] and replay.windows(4) == 5


def test_written_states_land_on_the_windows_and_rewritten_chunks_hold_them(tmp_path):
    replay = Replay(100, seed=0, directory=tmp_path, chunk=4, envs=2)
    rows(replay, 10)  # chunks 0 and 1 written, rows 8, 9 in the tail
    batch, where = replay.train_batch(2, 5)
    replay.write(where, {"x": np.full((2, 3, 1), -1.0, np.float32)})  # the last 3 steps of each window
    for b in range(2):
        assert replay.data["x"][where.slots[b, -3:], where.env[b, 0], 0].tolist() == [-1.0] * 3
        assert replay.data["x"][where.slots[b, :2], where.env[b, 0], 0].tolist() == batch["x"][b, :2, 0].tolist()
    changed = {int(r) // 4 for r in where.slots[:, -3:].ravel() if r < 8}
    assert replay.dirty == changed
    replay.flush()
    assert not replay.dirty
    files = np.concatenate([read_chunk(tmp_path / f"chunk_{i:06d}.npz")["x"] for i in (0, 1)])  # (8, 2, 1)
    np.testing.assert_array_equal(files, replay.data["x"][:8])


def test_a_stored_state_round_trips_into_the_state_a_sequence_starts_from():
    torch.manual_seed(0)
    deter, stoch = torch.randn(3, 4, 6), torch.nn.functional.one_hot(torch.randint(0, 5, (3, 4, 2)), 5).float()
    kept = context.stored(RSSMState(deter, stoch, stoch))
    assert kept["latent_deter"].dtype == np.float32 and kept["latent_stoch"].dtype == np.int16
    assert kept["latent_stoch"].shape == (3, 4, 2)
    window = {"obs": np.arange(12).reshape(3, 4), **kept}  # (B=3, 1 + T=3, ...)
    rest, start = context.split(window, 1)
    assert rest.keys() == {"obs"} and rest["obs"].tolist() == [[1, 2, 3], [5, 6, 7], [9, 10, 11]]
    state = context.start_state(start, 5, torch.device("cpu"))
    torch.testing.assert_close(state.deter, deter[:, 0]) and torch.testing.assert_close(state.stoch, stoch[:, 0])


def tiny_agent() -> Agent:
    torch.manual_seed(0)
    wm = WorldModel({"obs": (3,)}, 2, deter=8, units=8, layers=1, groups=2, classes=3,
                    variant=Variant(blocks=2, learned_initial=False, head_layers=1))
    return Agent(wm, LossScales(), OptimSettings(lr=0.0, eps=1e-8, grad_clip=0.0))


def tiny_batch(first: bool) -> dict[str, torch.Tensor]:
    B, T = 2, 4
    torch.manual_seed(1)
    return {"obs": torch.randn(B, T, 3), "action": torch.randn(B, T, 2), "reward": torch.zeros(B, T),
            "is_first": torch.tensor([[first] + [False] * (T - 1)] * B), "is_terminal": torch.zeros(B, T, dtype=bool)}


def test_an_update_starts_its_sequences_from_the_given_state_unless_they_start_an_episode():
    agent = tiny_agent()
    start = RSSMState(torch.ones(2, 8), *[torch.nn.functional.one_hot(torch.tensor([[0, 2], [1, 1]]), 3).float()] * 2)
    for first, differs in ((False, True), (True, False)):
        torch.manual_seed(2)
        agent.update(tiny_batch(first))
        from_zeros = agent.posterior
        torch.manual_seed(2)
        agent.update(tiny_batch(first), start)
        assert (not torch.equal(agent.posterior.deter[:, 0], from_zeros.deter[:, 0])) == differs
    assert agent.posterior.deter.shape == (2, 4, 8) and not agent.posterior.deter.requires_grad


def test_without_prefill_updates_are_owed_from_the_first_full_batch_of_sequences_on(compose_config):
    cfg = compose_config("experiment=debug", "trainer.prefill=0", "replay.context=1")  # batches of 4 x 8
    replay = Replay(1000, seed=0, envs=2)
    owed = []
    for _ in range(30):
        rows(replay, 1, start=0)
        owed.append(_owed(cfg, replay, 0, 2))
    # 2 x (rows - 9 + 1) windows of 9 rows: 32 = 4 x 8 of them first at 24 rows.
    assert owed == [0] * 23 + [2] * 7
    with_prefill = compose_config("experiment=debug", "trainer.prefill=100")
    assert [_owed(with_prefill, replay, b, b + 2) for b in (96, 98, 100)] == [0, 0, 2]


def test_the_evaluation_plays_the_policy_the_config_names(compose_config, monkeypatch):
    import rssm.evaluate as evaluate

    seen = []

    def run_episodes(*args, explore=False, **kwargs):
        seen.append(explore)
        return [1.0], []

    monkeypatch.setattr(evaluate, "run_episodes", run_episodes)
    for policy in ("mode", "sample"):
        agent = type("Agent", (), {"device": torch.device("cpu")})()
        evaluate.evaluate_policy(agent, compose_config("experiment=debug", f"trainer.eval_policy={policy}"), 1)
    assert seen == [False, True]


def test_dreamerv3_has_three_mlp_layers_at_every_size_and_dreamerv3_cpu_the_presets(compose_config):
    spec = EnvSpec({"obs": (4,)}, (2,), discrete=True)
    for algo, model, depth in (("dreamerv3", "xxs", 3), ("dreamerv3", "s", 3), ("dreamerv3_cpu", "xxs", 1),
                               ("dreamerv3_cpu", "size1m", 3), ("dreamerv3_2023", "s", 2)):
        cfg = compose_config(f"algo={algo}", f"model={model}")
        with torch.device("meta"):
            agent = build_agent(cfg, spec, torch.device("meta"))
        nets = (agent.wm.encoder, agent.wm.decoder, agent.actor.net, agent.critic.net)  # linear, norm, act each
        assert [len(n.hidden) // 3 for n in nets] == [depth] * 4, (algo, model)
        assert len(agent.wm.reward.hidden) // 3 == (1 if algo != "dreamerv3_2023" else depth)


def test_the_posterior_layer_draws_its_weights_as_one_layer_over_h_and_the_embedding():
    D, E, units = 2048, 1024, 512
    for joint, std in ((True, 1 / math.sqrt(D + E)), (False, 1 / math.sqrt(D))):
        torch.manual_seed(0)
        rssm = RSSM(2, E, D, units, 4, 4, blocks=8, prior_layers=2, learned_initial=False,
                    post_joint_init=joint, arch=Variant(blocks=8).arch.__class__("rms", "in"))
        assert rssm.post_h.weight.std().item() == pytest.approx(std, rel=0.02)
        e_std = 1 / math.sqrt(D + E) if joint else 1 / math.sqrt(E)
        assert rssm.post_e.weight.std().item() == pytest.approx(e_std, rel=0.02)


def test_algo_dreamerv3_runs_upstreams_pipeline_and_dreamerv3_cpu_its_own(compose_config):
    now, cpu = compose_config("algo=dreamerv3"), compose_config("algo=dreamerv3_cpu")
    assert (now.replay.context, now.replay.online, now.env.num_envs, now.trainer.prefill) == (1, True, 16, 0)
    assert (now.trainer.eval_policy, now.model.mlp_layers, now.model.post_joint_init) == ("sample", 3, True)
    assert (cpu.replay.context, cpu.replay.online, cpu.env.num_envs, cpu.trainer.prefill) == (0, False, 1, 1000)
    assert (cpu.trainer.eval_policy, cpu.model.mlp_layers, cpu.model.post_joint_init) == ("mode", None, True)
    with pytest.raises(UserError, match="agent=world_model has no actor"):
        validate(compose_config("algo=dreamerv3", "agent=world_model"))


def test_a_tiny_dreamerv3_run_stores_and_rewrites_the_states(compose_config, tmp_path):
    from rssm.checkpoint import CHECKPOINT, load_checkpoint
    from rssm.training import train

    cfg = compose_config("experiment=debug", "algo=dreamerv3", "env.num_envs=2", "trainer.steps=200",
                         "trainer.prefill=0", "replay.chunk=16", "trainer.progress=false")
    train(cfg, tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["progress"]["updates"] > 0
    deter = read_chunk(tmp_path / "replay" / "chunk_000000.npz")["latent_deter"]  # (16, 2, D)
    assert deter.shape == (16, 2, cfg.model.deter) and np.abs(deter[1:]).sum(-1).min() > 0
    with torch.device("meta"):
        assert build_world_model(cfg, {"obs": (4,)}, 2).rssm.deter == deter.shape[-1]

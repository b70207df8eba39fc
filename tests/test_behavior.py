import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rssm.agent import Agent, OptimSettings
from rssm.behavior import Actor, BehaviorSettings, Critic, ReturnNormalizer, lambda_returns, replay_returns
from rssm.distributions import twohot_encode
from rssm.world_model import LossScales, WorldModel


def plain_lambda_returns(reward, discount, value, lam):
    """G^lambda_t written out term by term, one trajectory at a time."""
    N, H = reward.shape
    out = np.zeros((N, H))
    for n in range(N):
        following = value[n, H]
        for t in reversed(range(H)):
            following = reward[n, t] + discount[n, t] * ((1 - lam) * value[n, t + 1] + lam * following)
            out[n, t] = following
    return out


def test_lambda_returns_match_plain_loop_with_terminations():
    gen = torch.Generator().manual_seed(0)
    N, H = 7, 15
    reward, value = torch.randn(N, H, generator=gen), torch.randn(N, H + 1, generator=gen)
    cont = (torch.rand(N, H, generator=gen) > 0.2).float()  # zeros are terminations
    discount = 0.997 * cont
    fast = lambda_returns(reward, discount, value, 0.95)
    np.testing.assert_allclose(fast.numpy(), plain_lambda_returns(reward.numpy(), discount.numpy(),
                                                                   value.numpy(), 0.95), rtol=1e-5, atol=1e-5)


def plain_replay_returns(reward, first, terminal, boot, gamma, lam):
    """Replay returns walked step by step: each sequence backwards, stopping at its end and before an episode start."""
    B, T = reward.shape
    returns, weight = np.zeros((B, T - 1)), np.zeros((B, T - 1))
    for b in range(B):
        ret = boot[b, T - 1]
        for t in reversed(range(T - 1)):
            j = t + 1
            ends = j == T - 1 or first[b, j + 1]  # nothing of this episode is recorded after step j
            lam_j = 0.0 if ends else lam
            ret = reward[b, j] + (0.0 if terminal[b, j] else gamma) * ((1 - lam_j) * boot[b, j] + lam_j * ret)
            returns[b, t] = ret
            weight[b, t] = float(not first[b, j] and not terminal[b, t])
    return returns, weight


def test_replay_returns_match_a_plain_loop_across_episode_boundaries():
    g = torch.Generator().manual_seed(3)
    B, T = 6, 12
    reward, boot = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    terminal = torch.rand(B, T, generator=g) < 0.15
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 1:] = terminal[:, :-1] | (torch.rand(B, T - 1, generator=g) < 0.1)  # after a terminal, or a time limit
    first[:, 0] = True
    assert first[:, 1:].any() and terminal.any()
    fast, weight = replay_returns(reward, first, terminal, boot, 0.99, 0.9)
    slow, slow_weight = plain_replay_returns(reward.numpy(), first.numpy(), terminal.numpy(), boot.numpy(), 0.99, 0.9)
    np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(weight.numpy(), slow_weight)


def test_replay_returns_hand_values():
    # One episode of 3 steps ending in a terminal, then a new episode: lambda 1, gamma 0.5.
    reward = torch.tensor([[0.0, 1.0, 2.0, 0.0, 4.0]])
    first = torch.tensor([[True, False, False, True, False]])
    terminal = torch.tensor([[False, False, True, False, False]])
    boot = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]])
    returns, weight = replay_returns(reward, first, terminal, boot, 0.5, 1.0)
    # R_1 = r_2 = 2 (terminal); R_0 = r_1 + 0.5 * R_1 = 2; R_3 = r_4 + 0.5 * boot_4 = 29 (the sequence ends).
    torch.testing.assert_close(returns[0, [0, 1, 3]], torch.tensor([2.0, 2.0, 29.0]))
    torch.testing.assert_close(weight, torch.tensor([[1.0, 1.0, 0.0, 1.0]]))  # 2 is terminal, 3 starts anew


def test_lambda_returns_hand_values():
    reward = torch.tensor([[1.0, 2.0]])
    value = torch.tensor([[0.0, 10.0, 20.0]])
    # lam = 1: discounted sum bootstrapped with the last value; a termination cuts it.
    torch.testing.assert_close(lambda_returns(reward, torch.tensor([[0.5, 0.5]]), value, 1.0),
                               torch.tensor([[1 + 0.5 * (2 + 0.5 * 20), 2 + 0.5 * 20]]))
    torch.testing.assert_close(lambda_returns(reward, torch.tensor([[0.5, 0.0]]), value, 1.0),
                               torch.tensor([[1 + 0.5 * 2, 2.0]]))
    # lam = 0: one-step TD targets.
    torch.testing.assert_close(lambda_returns(reward, torch.tensor([[0.5, 0.5]]), value, 0.0),
                               torch.tensor([[1 + 0.5 * 10, 2 + 0.5 * 20]]))


def test_return_normalizer_hand_values():
    norm = ReturnNormalizer(rate=0.01, floor=1.0)
    returns = torch.arange(101.0) * 100  # percentiles 5 and 95 are 500 and 9500
    # Both ends start at 0, as upstream's EMA does: lo = 0.01 * 500 = 5, hi = 0.01 * 9500 = 95.
    assert norm.update(returns).item() == pytest.approx(90.0)
    # lo = 0.99 * 5 + 0.01 * 1000 = 14.95; hi = 0.99 * 95 + 0.01 * 19000 = 284.05
    assert norm.update(returns * 2).item() == pytest.approx(284.05 - 14.95)
    small = ReturnNormalizer()
    assert small.update(torch.arange(101.0)).item() == 1.0  # 0.01 * 90 = 0.9: floored
    assert small.update(torch.tensor([float("nan"), 1.0])).item() == 1.0 and torch.isfinite(small.lo)
    # A run saved when the first batch set the range had a flag for it; its state still loads.
    older = {"lo": torch.tensor(2.0), "hi": torch.tensor(9.0), "initialized": torch.tensor(True)}
    small.load_state_dict(older)
    assert small.scale().item() == 7.0


def test_critic_targets_are_two_hot_in_symlog_space():
    critic = Critic(feat_dim=3, units=8, layers=1, bins=5)
    critic.bins = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    target = torch.tensor([np.e - 1.0])  # symlog(e - 1) = 1: all weight on the bin at 1
    torch.testing.assert_close(twohot_encode(torch.log1p(target), critic.bins), torch.tensor([[0, 0, 0, 1.0, 0]]))
    feat = torch.zeros(1, 3)
    # The zero-initialised output layer predicts uniform logits: the loss is log(5) per target.
    loss = critic.loss(critic(feat), target, target)
    torch.testing.assert_close(loss, torch.tensor([2 * np.log(5.0)], dtype=torch.float32))


@pytest.mark.parametrize("discrete, backprop", [(True, False), (False, True), (False, False)])
def test_behavior_learning_changes_only_actor_and_critic(discrete, backprop):
    torch.manual_seed(0)
    A = 3
    wm = WorldModel({"obs": (4,)}, action_dim=A, deter=16, units=16, layers=1, groups=4, classes=4)
    actor = Actor(wm.rssm.feat_dim, 16, 1, [A], discrete)
    critic = Critic(wm.rssm.feat_dim, 16, 1)
    agent = Agent(wm, LossScales(), OptimSettings(1e-3, 1e-8, 1000.0), actor, critic,
                  BehaviorSettings(horizon=5, backprop=backprop, replay_value=0.3), OptimSettings(1e-3, 1e-5, 100.0),
                  OptimSettings(1e-3, 1e-5, 100.0))
    B, T = 2, 6
    data = {"obs": torch.randn(B, T, 4), "action": torch.randn(B, T, A), "reward": torch.randn(B, T),
            "is_first": torch.zeros(B, T, dtype=torch.bool), "is_terminal": torch.zeros(B, T, dtype=torch.bool)}
    _, _, post = wm.loss(data, LossScales())

    def snapshot(module):
        return {k: v.clone() for k, v in module.state_dict().items()}

    before = [snapshot(m) for m in (wm, actor, critic.net, critic.slow)]
    metrics, finite = agent._update_behavior(post, data, torch.tensor(True))
    assert finite
    after = [snapshot(m) for m in (wm, actor, critic.net, critic.slow)]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]), "world model changed"
    assert all(p.grad is None for p in wm.parameters()), "world model received gradients"
    for i, name in [(1, "actor"), (2, "critic"), (3, "slow critic")]:
        assert any(not torch.equal(before[i][k], after[i][k]) for k in before[i]), f"{name} did not change"
    assert torch.isfinite(metrics["behavior/actor_loss"]) and metrics["grad_norm/actor"] > 0
    assert torch.isfinite(metrics["behavior/replay_return_mean"])

    # The actor loss alone fills only actor gradients, the critic loss only critic gradients.
    from rssm.behavior import behavior_losses, imagine
    start = type(post)(*(x.detach().flatten(0, 1) for x in post))
    feat, actions, cont, policy = imagine(wm, actor, start, torch.ones(B * T), 5, backprop)
    actor_loss, critic_loss, _, _ = behavior_losses(wm, critic, agent.normalizer, feat, actions, cont, policy,
                                                    agent.behavior)
    params = {"wm": list(wm.parameters()), "actor": list(actor.parameters()), "critic": list(critic.net.parameters())}
    # With backprop the actor's objective is the return itself, which flows through the dynamics and the
    # critic's values; the agent still steps only the actor with it.
    expected = {"actor": {"actor", "wm", "critic"} if backprop else {"actor"}, "critic": {"critic"}}
    for owner, loss in [("actor", actor_loss), ("critic", critic_loss)]:
        reached = set()
        for name, group in params.items():
            grads = torch.autograd.grad(loss, group, retain_graph=True, allow_unused=True)
            if any(g is not None and g.abs().sum() > 0 for g in grads):
                reached.add(name)
        assert reached == expected[owner], (owner, reached)


def test_imagined_continue_is_the_heads_mode_or_its_probability():
    from rssm.behavior import imagine
    from rssm.rssm import RSSMState

    torch.manual_seed(0)
    wm = WorldModel({"obs": (4,)}, action_dim=2, deter=16, units=16, layers=1, groups=4, classes=4)
    torch.nn.init.normal_(wm.cont.out.weight, std=1.0)  # a head that is not sure everywhere
    actor = Actor(wm.rssm.feat_dim, 16, 1, [2], discrete=True)
    start = wm.rssm.initial(8)
    start = RSSMState(*(x + 0.5 * torch.randn_like(x) for x in start))
    start_cont = torch.tensor([1.0, 0.0] * 4)
    flags = {}
    for prob in (False, True):
        torch.manual_seed(1)  # the same imagined trajectories
        feat, _, cont, _ = imagine(wm, actor, start, start_cont, 5, backprop=False, cont_prob=prob)
        assert cont.shape == (8, 6)
        p = torch.sigmoid(wm.cont(feat).squeeze(-1))  # (8, 6)
        # The mode after the start's recorded flag (2023), or the probability everywhere, the start too (now).
        torch.testing.assert_close(cont, p if prob else torch.cat([start_cont[:, None], (p[:, 1:] > 0.5).float()], 1))
        flags[prob] = cont[:, 1:]
    assert ((flags[True] > 0) & (flags[True] < 1)).all() and not torch.equal(flags[True], flags[False])


def test_continuous_log_prob_and_entropy_match_torch_normal():
    actor = Actor(feat_dim=5, units=8, layers=1, action_dims=[3], discrete=False)
    dist = actor(torch.randn(4, 5))
    action = torch.randn(4, 3) * 2
    normal = torch.distributions.Normal(dist.mean, dist.std)
    torch.testing.assert_close(dist.log_prob(action), normal.log_prob(action).sum(-1))
    torch.testing.assert_close(dist.entropy(), normal.entropy().sum(-1))


def test_multi_discrete_actor_samples_one_hot_segments():
    actor = Actor(feat_dim=5, units=8, layers=1, action_dims=[2, 3], discrete=True)
    dist = actor(torch.randn(4, 5))
    sample = dist.sample().detach()
    assert sample.shape == (4, 5)
    assert torch.equal(sample[:, :2].sum(-1), torch.ones(4)) and torch.equal(sample[:, 2:].sum(-1), torch.ones(4))
    assert dist.log_prob(sample).shape == (4,) and (dist.log_prob(sample) < 0).all()


@pytest.mark.parametrize("agent_kind", ["dreamer", "world_model"])
def test_tiny_run_for_each_agent_mode_then_rssm_eval(tmp_path, run_cli, cli_environ, agent_kind):
    run_dir = tmp_path / "run"
    proc = run_cli("experiment=debug", f"agent={agent_kind}", "trainer.progress=false", "trainer.eval_episodes=2",
                   "trainer.eval_every=150", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert ("actor" in state) == (agent_kind == "dreamer")
    if agent_kind == "dreamer":  # eval_every 150 is not a multiple of log_every 100: still evaluated at 150
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        events = EventAccumulator(str(run_dir))
        events.Reload()
        assert [e.step for e in events.Scalars("eval/return_mean")] == [150, 300]
    ev = subprocess.run([sys.executable, "-m", "rssm.evaluate", str(run_dir), "--episodes", "2", "--video",
                         str(tmp_path / "ep.gif")], capture_output=True, text=True, timeout=300, env=cli_environ)
    if agent_kind == "world_model":
        assert ev.returncode == 2 and "no policy" in ev.stderr and "Traceback" not in ev.stderr
        return
    assert ev.returncode == 0, ev.stderr
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["episodes"] == 2 and len(result["returns"]) == 2 and result["mean"] > 0
    from PIL import Image
    with Image.open(tmp_path / "ep.gif") as gif:
        assert gif.n_frames > 5 and gif.size[0] > 0


def test_rssm_eval_on_a_missing_run_is_one_line_with_status_2(tmp_path, cli_environ):
    proc = subprocess.run([sys.executable, "-m", "rssm.evaluate", str(tmp_path / "nothing")], capture_output=True,
                          text=True, timeout=120, env=cli_environ)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no rssm run at" in proc.stderr


def test_a_continuous_sample_beyond_the_range_enters_the_model_normalised_with_a_gradient():
    from rssm.rssm import normalize_action

    a = torch.tensor([2.0, -4.0, 0.5, 1.0], requires_grad=True)
    out = normalize_action(a)
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, 0.5, 1.0]))
    (grad,) = torch.autograd.grad(out.sum(), a)
    torch.testing.assert_close(grad, torch.tensor([0.5, 0.25, 1.0, 1.0]))  # 1 / max(1, |a|): the divisor is constant

    actor = Actor(feat_dim=3, units=8, layers=1, action_dims=[2], discrete=False)
    with torch.no_grad():
        actor.net.out.bias.copy_(torch.tensor([5.0, -5.0, 3.0, 3.0]))  # means near +1 and -1, std near max_std
    torch.manual_seed(0)
    sample = actor(torch.zeros(4096, 3)).sample()  # (N, 2): not clipped, the env clips
    beyond = sample.detach().abs() > 1.0
    assert 0.2 < beyond.float().mean() < 0.8
    grads = torch.autograd.grad(normalize_action(sample)[beyond].sum(), list(actor.parameters()))
    assert sum(g.abs().sum() for g in grads) > 0  # a clamp would give these samples none


@pytest.mark.parametrize("backprop", [True, False])
def test_the_actor_gradient_goes_where_its_variant_says(backprop):
    """Backprop: the imagined return reaches the actor through its actions and the dynamics, never back through
    the features it acted on. REINFORCE: through the log-probabilities of its actions alone."""
    from rssm.behavior import BehaviorSettings, behavior_losses, imagine
    from rssm.rssm import RSSMState

    torch.manual_seed(0)
    wm = WorldModel({"obs": (4,)}, action_dim=2, deter=16, units=16, layers=1, groups=4, classes=4)
    actor, critic = Actor(wm.rssm.feat_dim, 16, 1, [2], False), Critic(wm.rssm.feat_dim, 16, 1)
    seen = []
    actor.register_forward_pre_hook(lambda module, args: seen.append(args[0].requires_grad))
    N = 8
    start = RSSMState(torch.randn(N, 16), torch.zeros(N, 4, 4), torch.zeros(N, 4, 4))
    feat, actions, cont, policy = imagine(wm, actor, start, torch.ones(N), 5, backprop)
    assert len(seen) == 5 and not any(seen)  # the actor never sees features with a gradient
    assert actions.requires_grad == backprop
    s = BehaviorSettings(horizon=5, backprop=backprop)
    actor_loss, *_ = behavior_losses(wm, critic, ReturnNormalizer(), feat, actions, cont, policy, s)
    assert len(seen) == 5  # the loss uses the distributions the actor acted from: no second forward
    grads = torch.autograd.grad(actor_loss, list(actor.parameters()))
    assert sum(g.abs().sum() for g in grads) > 0

"""The two DreamerV3 versions (configs/algo/): the math of each switch where they differ, against plain
re-derivations of the upstream equations and hand values."""

import math

import pytest
import torch
import torch.nn.functional as F

from rssm.agent import Agent, OptimSettings
from rssm.behavior import Actor, BehaviorSettings, Critic
from rssm.build import build_agent
from rssm.config import validate
from rssm.distributions import symexp, symexp_bins, twohot_encode, twohot_loss, twohot_mean
from rssm.envs import EnvSpec
from rssm.networks import MLP, Arch, BlockLinear, init_weights
from rssm.rssm import RSSM
from rssm.world_model import LossScales, Variant, WorldModel

NOW = dict(arch=Arch("rms", "in"), blocks=4, prior_layers=2, learned_initial=False)


def block_rssm(seed=0, **kw):
    torch.manual_seed(seed)
    return RSSM(action_dim=3, embed_dim=10, deter=16, units=12, groups=4, classes=5, **{**NOW, **kw})


def test_block_linear_is_block_diagonal():
    layer = BlockLinear(6, 8, blocks=2)
    init_weights(layer)
    x = torch.randn(5, 6)
    full = torch.block_diag(layer.weight[0], layer.weight[1])  # (6, 8)
    torch.testing.assert_close(layer(x), x @ full + layer.bias)


def test_block_sequence_model_matches_the_upstream_equations():
    """h_t of the block GRU against a direct transcription of DreamerV3's `_core` (rssm.py): the groups' inputs
    concat(h_g, x0, x1, x2) formed explicitly, the block layers as block-diagonal products, gates split per group."""
    rssm = block_rssm()
    with torch.no_grad():  # nonzero biases and norm scales, so that the test sees them
        for p in rssm.parameters():
            if p.dim() == 1 or (p.dim() == 2 and p.shape[0] == 2):
                p.copy_(torch.randn_like(p))
    B, D, G = 5, 16, 4
    deter, stoch = torch.randn(B, D), F.one_hot(torch.randint(0, 5, (B, 4)), 5).float()
    action = torch.randn(B, 3) * 2  # some beyond [-1, 1]

    def norm_act(norm, x):
        return F.silu(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-4) * norm.weight)

    a = action / torch.clamp(action.abs(), min=1.0)
    x0 = norm_act(rssm.dyn_norms[0], deter @ rssm.dyn_h.weight.T + rssm.dyn_bias[0])
    x1 = norm_act(rssm.dyn_norms[1], stoch.flatten(1) @ rssm.dyn_z.weight.T + rssm.dyn_bias[1])
    x2 = norm_act(rssm.dyn_norms[2], a @ rssm.dyn_a.weight.T + rssm.dyn_a.bias)
    x = torch.cat([x0, x1, x2], -1)[:, None].expand(B, G, 36)  # (B, G, 3 * units)
    x = torch.cat([deter.view(B, G, D // G), x], -1).reshape(B, -1)  # (B, G * (D / G + 36))
    x = norm_act(rssm.dyn_hidden_norms[0], rssm.dyn_hidden[0](x))
    gates = rssm.dyn_gru(x).view(B, G, 3 * D // G)
    reset, cand, update = (g.reshape(B, D) for g in gates.split(D // G, -1))
    expected = torch.sigmoid(update - 1) * torch.tanh(torch.sigmoid(reset) * cand) + (
        1 - torch.sigmoid(update - 1)) * deter

    got = rssm._sequence(deter, stoch, rssm._action_inputs(action), rssm._plain(), 0)
    torch.testing.assert_close(got, expected)


def test_zero_initial_state_and_resets():
    rssm = block_rssm()
    B, T = 3, 4
    embed, action = torch.randn(B, T, 10), torch.randn(B, T, 3)
    is_first = torch.zeros(B, T)
    is_first[:, 0] = is_first[:, 2] = 1.0
    post, prior = rssm.observe(embed, action, is_first)
    init = rssm.initial(B)
    assert not init.deter.any() and not init.stoch.any()
    assert not any(name.startswith("initial") for name, _ in rssm.named_parameters())
    # At a start, h_t comes from h = 0, z = 0 and a = 0, whatever came before.
    h0 = rssm._sequence(init.deter, init.stoch, rssm._action_inputs(torch.zeros(B, 3)), rssm._plain(), 0)
    torch.testing.assert_close(post.deter[:, 0], h0)
    torch.testing.assert_close(post.deter[:, 2], h0)
    assert prior.shape == (B, T, 4, 5) and len(rssm.prior.hidden) == 2 * 3  # two hidden layers


def test_rms_layers_have_biases_and_layer_norm_layers_do_not():
    rms, layer = MLP(4, 8, 2, 3, Arch("rms", "in")), MLP(4, 8, 2, 3, Arch("layer", "avg"))
    assert isinstance(rms.hidden[1], torch.nn.RMSNorm) and rms.hidden[0].bias is not None
    assert rms.hidden[1].eps == 1e-4 and rms.hidden[1].weight is not None
    assert isinstance(layer.hidden[1], torch.nn.LayerNorm) and layer.hidden[0].bias is None


@pytest.mark.parametrize("fan, expected", [("in", 1 / math.sqrt(2000)), ("avg", math.sqrt(2 / 2100))])
def test_initial_weights_have_variance_one_over_fan(fan, expected):
    torch.manual_seed(0)
    layer = torch.nn.Linear(2000, 100)
    init_weights(layer, fan)
    assert layer.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert layer.weight.abs().max().item() <= 2 * expected / 0.8796 + 1e-6  # truncated at two of its std
    assert not layer.bias.any()
    block = BlockLinear(64, 32, blocks=4)  # upstream counts all blocks: fan-in 64, not 16
    init_weights(block, "in")
    assert block.weight.std().item() == pytest.approx(1 / 8, rel=0.05)


def test_actor_output_scale():
    torch.manual_seed(0)
    small = Actor(8, 16, 1, [2], discrete=False, outscale=0.01, arch=Arch("rms", "in"))
    torch.manual_seed(0)
    plain = Actor(8, 16, 1, [2], discrete=False, outscale=1.0, arch=Arch("rms", "in"))
    torch.testing.assert_close(small.net.out.weight, 0.01 * plain.net.out.weight)


def test_symexp_bins_hand_values():
    bins = symexp_bins(255)
    assert bins.shape == (255,) and bins[127] == 0.0
    torch.testing.assert_close(bins[[0, 254]], torch.tensor([-math.expm1(20.0), math.expm1(20.0)]))
    torch.testing.assert_close(bins[128], torch.tensor(math.expm1(20.0 / 127)))  # symexp of the first step
    assert torch.equal(bins, -bins.flip(0))
    even = symexp_bins(4)  # upstream keeps both 0 and -0 for an even count
    torch.testing.assert_close(even, torch.tensor([-math.expm1(20.0), 0.0, 0.0, math.expm1(20.0)]))


def test_symexp_twohot_is_linear_in_the_values_own_space():
    bins = symexp_bins(255)
    step = bins[128].item()  # 0.1706
    target = torch.tensor([0.25 * step])
    # A quarter of the way from bin 0 (index 127) to the next: weights 0.75 and 0.25 in value space (the symlog
    # version would split by symlog distances instead).
    expected = torch.zeros(1, 255)
    expected[0, 127], expected[0, 128] = 0.75, 0.25
    torch.testing.assert_close(twohot_encode(target, bins), expected)
    logits = torch.randn(1, 255)
    manual = -(expected * F.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(twohot_loss(logits, target, bins, "symexp"), manual)


def test_symexp_twohot_mean_is_exactly_zero_at_init_and_round_trips():
    bins = symexp_bins(255)
    assert torch.equal(twohot_mean(torch.zeros(7, 255), bins, "symexp"), torch.zeros(7))
    values = torch.tensor([-1234.5, -3.0, 0.0, 0.07, 2.5, 1e6])
    logits = torch.log(twohot_encode(values, bins).clamp(min=1e-30))
    torch.testing.assert_close(twohot_mean(logits, bins, "symexp"), values, rtol=1e-5, atol=1e-5)
    critic = Critic(4, 8, 1, bins=255, twohot="symexp")
    assert torch.equal(critic.bins, bins) and torch.equal(critic.value(torch.randn(3, 4)), torch.zeros(3))
    assert symexp(torch.tensor(20.0)).item() == pytest.approx(bins[-1].item())


def test_continue_target_is_the_discount_with_contdisc():
    torch.manual_seed(0)
    wm = WorldModel({"obs": (3,)}, 2, deter=8, units=8, layers=1, groups=2, classes=2)
    torch.nn.init.zeros_(wm.cont.out.weight)
    torch.nn.init.zeros_(wm.cont.out.bias)  # p = 0.5 everywhere
    B, T = 2, 3
    batch = {"obs": torch.randn(B, T, 3), "action": torch.zeros(B, T, 2), "reward": torch.zeros(B, T),
             "is_first": torch.zeros(B, T, dtype=torch.bool), "is_terminal": torch.zeros(B, T, dtype=torch.bool)}
    _, metrics, _ = wm.loss(batch, LossScales(cont_target=0.997))
    # BCE at p = 0.5 is log 2 for any target; what the target changes is the gradient: p - target.
    assert metrics["loss/cont"].item() == pytest.approx(math.log(2.0))
    logit = torch.zeros((), requires_grad=True)
    F.binary_cross_entropy_with_logits(logit, torch.tensor(0.997)).backward()
    assert logit.grad.item() == pytest.approx(0.5 - 0.997)


def make_agent(joint, replay_value_grad, backprop=False, name="laprop"):
    torch.manual_seed(0)
    variant = Variant(Arch("rms", "in"), blocks=2, prior_layers=2, learned_initial=False, head_layers=1,
                      twohot="symexp")
    wm = WorldModel({"obs": (4,)}, 2, deter=8, units=8, layers=1, groups=2, classes=3, variant=variant)
    actor = Actor(wm.rssm.feat_dim, 8, 1, [2], discrete=False, unimix=0.0, outscale=0.01, arch=variant.arch)
    critic = Critic(wm.rssm.feat_dim, 8, 1, twohot="symexp", arch=variant.arch)
    opt = OptimSettings(1e-3, 1e-20, 0.0, name, agc=0.3, warmup=0)
    s = BehaviorSettings(horizon=3, backprop=backprop, replay_value=0.3, replay_value_grad=replay_value_grad,
                         cont_prob=True, contdisc=True)
    return Agent(wm, LossScales(kl_dyn=1.0, cont_target=s.gamma), opt, actor, critic, s, opt, opt, joint=joint)


def batch(B=2, T=5):
    g = torch.Generator().manual_seed(1)
    return {"obs": torch.randn(B, T, 4, generator=g).numpy(), "action": torch.randn(B, T, 2, generator=g).numpy(),
            "reward": torch.randn(B, T, generator=g).numpy(), "is_first": torch.zeros(B, T, dtype=torch.bool).numpy(),
            "is_terminal": torch.zeros(B, T, dtype=torch.bool).numpy()}


@pytest.mark.parametrize("replay_value_grad", [True, False])
def test_joint_update_gives_the_world_model_the_replay_value_gradient_only_when_asked(replay_value_grad):
    from rssm.agent import to_torch

    agent = make_agent(joint=True, replay_value_grad=replay_value_grad)
    torch.nn.init.normal_(agent.critic.net.out.weight, std=0.1)  # a zero output layer passes no gradient back
    data = to_torch(batch(), agent.device)
    torch.manual_seed(2)
    wm_loss, _, post = agent.wm.loss(data, agent.scales)
    actor_loss, critic_loss, _ = agent._behavior_losses(post, data)
    critic_into_wm = torch.autograd.grad(critic_loss, agent.wm_params, retain_graph=True, allow_unused=True)
    reaches = any(g is not None and g.abs().sum() > 0 for g in critic_into_wm)
    assert reaches == replay_value_grad
    actor_into_others = torch.autograd.grad(actor_loss, agent.wm_params + agent.critic_params, allow_unused=True)
    assert all(g is None or not g.any() for g in actor_into_others)  # REINFORCE on stopped features
    assert agent.update(batch()) and agent.skipped == 0


def test_joint_update_steps_every_module_once_from_one_forward_pass():
    agent = make_agent(joint=True, replay_value_grad=True)
    before = {n: [p.detach().clone() for p in ps] for n, ps in
              [("wm", agent.wm_params), ("actor", agent.actor_params), ("critic", agent.critic_params)]}
    slow = [p.clone() for p in agent.critic.slow.parameters()]
    metrics = agent.update(batch())
    for name, params in [("wm", agent.wm_params), ("actor", agent.actor_params), ("critic", agent.critic_params)]:
        assert any(not torch.equal(a, b) for a, b in zip(before[name], params, strict=True)), name
        assert all(len(getattr(agent, f"{name}_opt").state[p]) for p in params if p.grad is not None)
    assert any(not torch.equal(a, b) for a, b in zip(slow, agent.critic.slow.parameters(), strict=True))
    assert {"grad_norm/wm", "grad_norm/actor", "grad_norm/critic", "behavior/replay_return_mean"} <= set(metrics)


@pytest.mark.parametrize("algo", ["dreamerv3", "dreamerv3_cpu", "dreamerv3_2023"])
def test_each_algo_config_builds_its_agent(compose_config, algo):
    cfg = compose_config(f"algo={algo}", "model=debug")
    validate(cfg)
    spec = EnvSpec({"obs": (4,)}, (2,), discrete=False, low=-torch.ones(2).numpy(), high=torch.ones(2).numpy())
    agent = build_agent(cfg, spec, torch.device("cpu"))
    now = algo != "dreamerv3_2023"
    lr = {"dreamerv3": 4e-5, "dreamerv3_cpu": 3e-4, "dreamerv3_2023": 1e-4}[algo]
    assert agent.wm_optim.lr == lr and agent.actor_optim.lr == agent.critic_optim.lr == (lr if now else 3e-5)
    assert agent.joint == now and type(agent.wm_opt).__name__ == ("LaProp" if now else "Adam")
    assert (agent.wm.rssm.blocks > 0) == now and agent.wm.twohot == ("symexp" if now else "symlog")
    assert agent.behavior.backprop != now and agent.behavior.contdisc == now and agent.behavior.cont_prob == now
    assert agent.scales.kl_dyn == (1.0 if now else 0.5)
    assert agent.scales.cont_target == pytest.approx(1 - 1 / 333 if now else 1.0)
    assert len(agent.wm.reward.hidden) == (3 if now else 3 * cfg.model.layers)
    agent.update(batch())  # one step runs


def test_pooled_cnn_shapes_and_layout():
    from rssm.networks import PooledConvDecoder, PooledConvEncoder

    torch.manual_seed(0)
    arch = Arch("rms", "in")
    encoder = PooledConvEncoder(16, 3, depth=4, arch=arch)  # 16 -> 8 -> 4: two stages of 8 and 12 channels
    assert [m.out_channels for m in encoder.net if isinstance(m, torch.nn.Conv2d)] == [8, 12]
    assert [m.kernel_size for m in encoder.net if isinstance(m, torch.nn.Conv2d)] == [(5, 5), (5, 5)]
    x = torch.rand(2, 16, 16, 3) - 0.5
    assert encoder(x).shape == (2, encoder.out_dim) and encoder.out_dim == 12 * 4 * 4
    decoder = PooledConvDecoder(deter=16, stoch=6, size=16, channels=3, depth=4, units=8, arch=arch, blocks=4)
    out = decoder(torch.randn(5, 22))
    assert out.shape == (5, 16, 16, 3) and ((out > 0) & (out < 1)).all()  # through a sigmoid
    # Block g of h fills channels g * C'/G .. (g + 1) * C'/G - 1 of every pixel of the first grid, and nothing else.
    captured = []
    decoder.space_norm.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    h = torch.zeros(1, 16)
    decoder(torch.cat([h, torch.zeros(1, 6)], -1))
    h[0, :4] = torch.randn(4)  # group 0 of 4 (h of 16: 4 units per group)
    decoder(torch.cat([h, torch.zeros(1, 6)], -1))
    changed = (captured[1] - captured[0]).abs().sum((0, 2, 3)) > 0  # (C',)
    assert changed.tolist() == [True] * 3 + [False] * 9  # C' = 12 channels, 3 per group


def test_a_world_model_with_the_pooled_cnn_learns_from_images():
    torch.manual_seed(0)
    variant = Variant(Arch("rms", "in"), blocks=2, learned_initial=False, head_layers=1, twohot="symexp",
                      cnn="pooled")
    wm = WorldModel({"image": (16, 16, 3)}, 2, deter=8, units=8, layers=1, groups=2, classes=3, cnn_depth=4,
                    variant=variant)
    B, T = 2, 3
    data = {"image": torch.randint(0, 256, (B, T, 16, 16, 3), dtype=torch.uint8), "action": torch.zeros(B, T, 2),
            "reward": torch.zeros(B, T), "is_first": torch.zeros(B, T, dtype=torch.bool),
            "is_terminal": torch.zeros(B, T, dtype=torch.bool)}
    loss, metrics, post = wm.loss(data, LossScales())
    loss.backward()
    assert all(p.grad is not None for p in wm.image_encoder.parameters())
    assert all(p.grad is not None for p in wm.image_decoder.parameters())
    decoded = wm.decode(torch.randn(4, wm.rssm.feat_dim))["image"]
    assert decoded.shape == (4, 16, 16, 3) and ((decoded > 0) & (decoded < 1)).all()  # no offset on a sigmoid


@pytest.mark.parametrize("model, deter, blocks", [("size1m", 512, 8), ("size12m", 2048, 8)])
def test_dreamerv3_size_presets_build(compose_config, model, deter, blocks):
    from rssm.build import build_world_model

    cfg = compose_config("algo=dreamerv3", f"model={model}")
    validate(cfg)
    with torch.device("meta"):  # shapes only
        wm = build_world_model(cfg, {"obs": (17,), "image": (64, 64, 3)}, action_dim=6)
    assert wm.rssm.deter == deter and wm.rssm.blocks == blocks and len(wm.encoder.hidden) == 3 * 3
    assert wm.rssm.dyn_gru.weight.shape == (blocks, deter // blocks, 3 * deter // blocks)

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import rssm.networks
import rssm.rssm
from rssm.networks import Arch, LoopLinear, tanh, wide_linear
from rssm.rssm import RSSM, features
from rssm.world_model import LossScales, Variant, WorldModel, kl_loss

B, T, E, A, D, G, C = 3, 6, 10, 2, 16, 4, 5


def make_rssm(seed=0):
    torch.manual_seed(seed)
    return RSSM(action_dim=A, embed_dim=E, deter=D, units=12, groups=G, classes=C)


def test_observe_and_imagine_shapes():
    rssm = make_rssm()
    post, prior_logits = rssm.observe(torch.randn(B, T, E), torch.randn(B, T, A), torch.zeros(B, T))
    assert post.deter.shape == (B, T, D)
    assert post.stoch.shape == post.logits.shape == prior_logits.shape == (B, T, G, C)
    assert features(post).shape == (B, T, D + G * C)
    assert torch.equal(post.stoch.detach().sum(-1), torch.ones(B, T, G))
    last = type(post)(*(x[:, -1] for x in post))
    imagined, actions = rssm.imagine(last, horizon=4, policy=lambda s: torch.zeros(B, A))
    assert imagined.deter.shape == (B, 4, D) and imagined.stoch.shape == (B, 4, G, C) and actions.shape == (B, 4, A)
    given = torch.randn(B, 4, A)
    _, taken = rssm.imagine(last, horizon=4, actions=given)
    assert torch.equal(taken, given)


def test_is_first_resets_state_and_previous_action():
    rssm = make_rssm()
    embed, action = torch.randn(B, T, E), torch.randn(B, T, A)
    is_first = torch.zeros(B, T)
    is_first[:, 3] = 1.0
    post, _ = rssm.observe(embed, action, is_first)
    # A different history before the reset must not matter at the reset step.
    other_embed, other_action = embed.clone(), action.clone()
    other_embed[:, :3] = torch.randn(B, 3, E) * 5
    other_action[:, :4] = torch.randn(B, 4, A) * 5  # includes the action stored at the reset step
    other, _ = rssm.observe(other_embed, other_action, is_first)
    torch.testing.assert_close(post.deter[:, 3], other.deter[:, 3])
    assert not torch.allclose(post.deter[:, 2], other.deter[:, 2])
    # And the reset step equals the first step of a fresh start.
    fresh, _ = rssm.observe(embed[:, 3:4], torch.zeros(B, 1, A), torch.ones(B, 1))
    torch.testing.assert_close(post.deter[:, 3], fresh.deter[:, 0])


def test_straight_through_gradient_reaches_posterior_logits():
    rssm = make_rssm()
    post, _ = rssm.observe(torch.randn(B, T, E), torch.randn(B, T, A), torch.zeros(B, T))
    (post.stoch * torch.randn(G, C)).sum().backward()
    assert rssm.post_out.weight.grad is not None and rssm.post_out.weight.grad.abs().sum() > 0
    assert rssm.post_e.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_loop_linear_matches_plain_linear_values_and_gradients(autocast):
    torch.manual_seed(0)
    layer = LoopLinear(7, 5)
    xs = torch.randn(4, 3, 7, requires_grad=True)
    weights = torch.randn(4, 3, 5)

    def run(step):
        h = torch.zeros(3, 5)
        for t in range(4):  # a recurrence, so step t's input depends on step t-1
            h = torch.tanh(step(xs[t] + torch.cat([h, h[:, :2]], -1), t))
        return (h * weights[-1]).sum()

    # Under autocast both multiply in bfloat16, the gradients reaching float32 tensors in float32.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = run(layer.bind(4, 3))
    loss.backward()
    fast_w, fast_x = layer.weight.grad.clone(), xs.grad.clone()
    layer.weight.grad, xs.grad = None, None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = run(lambda x, t: F.linear(x, layer.weight))
    loss.backward()
    assert fast_w.dtype == fast_x.dtype == torch.float32
    tolerance = dict(rtol=2e-2, atol=2e-2) if autocast else {}
    torch.testing.assert_close(fast_w, layer.weight.grad, **tolerance)
    torch.testing.assert_close(fast_x, xs.grad, **tolerance)


@pytest.mark.parametrize("out", [255, 64, 3], ids=["padded", "multiple-of-8", "narrow"])
def test_wide_linear_matches_linear_values_and_gradients(out):
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16, requires_grad=True)
    weight, bias = torch.randn(out, 16, requires_grad=True), torch.randn(out, requires_grad=True)
    target = torch.randn(2, 9, out)
    got = wide_linear(x, weight, bias)
    assert got.shape == (2, 9, out)
    (torch.softmax(got, -1) * target).sum().backward()
    grads = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    want = F.linear(x, weight, bias)
    (torch.softmax(want, -1) * target).sum().backward()
    torch.testing.assert_close(got, want)
    for g, t in zip(grads, (x, weight, bias), strict=True):
        torch.testing.assert_close(g, t.grad)


def test_tanh_matches_torch_tanh():
    x = torch.cat([torch.randn(10_000) * 4, torch.randn(10_000) * 1e-4, torch.tensor([0.0, 50.0, -50.0])])
    torch.testing.assert_close(tanh(x), torch.tanh(x), rtol=0, atol=3e-7)
    assert tanh(torch.tensor(float("nan"))).isnan()


@pytest.mark.parametrize("blocks", [0, 4], ids=["2023", "now"])
def test_compiled_posterior_step_matches_eager(blocks):
    """`compile_steps`: the posterior loop's values and gradients as eager's (`LoopLinear`'s weight gradients
    there). The aot_eager backend captures and splits the graph as inductor would, in a second."""
    torch.manual_seed(0)
    rssm = RSSM(action_dim=A, embed_dim=E, deter=D, units=12, groups=G, classes=C, blocks=blocks)
    embed, action = torch.randn(B, T, E), torch.randn(B, T, A)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[0, 3] = True

    def run():
        torch.manual_seed(1)  # the same uniform draws
        post, prior = rssm.observe(embed, action, is_first)
        loss = post.deter.square().sum() + (post.stoch * post.logits).sum() + prior.sum()
        rssm.zero_grad()
        loss.backward()
        return post, {n: p.grad.clone() for n, p in rssm.named_parameters() if p.grad is not None}

    eager_post, eager_grads = run()
    backend = CompileCounterWithBackend("aot_eager")
    rssm.compile_steps(backend)
    compiled_post, compiled_grads = run()
    assert backend.frame_count == 2  # the first step (h_{t-1} is the initial state itself) and the others
    for a, b in zip(eager_post, compiled_post, strict=True):
        torch.testing.assert_close(b, a)
    assert eager_grads.keys() == compiled_grads.keys()
    for name, g in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("blocks", [0, 2], ids=["2023", "now"])
def test_world_model_gradients_match_plain_autograd(monkeypatch, blocks):
    """The loop's weight gradients formed once per loop (`LoopLinear`, and the first block layer's weight on the
    embeddings through `bind_loop_weight`) equal autograd's per-step ones."""
    batch = {"obs": torch.randn(2, 5, 3), "action": torch.randn(2, 5, A), "reward": torch.randn(2, 5),
             "is_first": torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0]]).bool(),
             "is_terminal": torch.zeros(2, 5).bool()}

    def grads():
        torch.manual_seed(0)
        wm = WorldModel({"obs": (3,)}, A, deter=8, units=8, layers=1, groups=2, classes=3,
                        variant=Variant(Arch("rms", "in"), blocks=blocks))
        loss, _, _ = wm.loss(batch, LossScales())
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in wm.named_parameters()}

    loss_fast, fast = grads()
    plain_bind = lambda weight, steps, rows: (lambda x, t: F.linear(x, weight))  # noqa: E731
    monkeypatch.setattr(rssm.networks, "bind_loop_weight", plain_bind)
    monkeypatch.setattr(rssm.rssm, "bind_loop_weight", plain_bind)
    loss_plain, plain = grads()
    torch.testing.assert_close(loss_fast, loss_plain)
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_kl_balancing_sends_each_term_to_one_side():
    post = torch.randn(4, 3, G, C, requires_grad=True)
    prior = torch.randn(4, 3, G, C, requires_grad=True)
    dyn, _ = kl_loss(post, prior, dyn_scale=1.0, rep_scale=0.0, free_bits=0.0)
    post_grad, prior_grad = torch.autograd.grad(dyn.sum(), [post, prior], allow_unused=True)
    assert (post_grad is None or post_grad.abs().sum() == 0) and prior_grad.abs().sum() > 0
    rep, _ = kl_loss(post, prior, dyn_scale=0.0, rep_scale=1.0, free_bits=0.0)
    post_grad, prior_grad = torch.autograd.grad(rep.sum(), [post, prior], allow_unused=True)
    assert post_grad.abs().sum() > 0 and (prior_grad is None or prior_grad.abs().sum() == 0)


def test_kl_loss_scales_and_free_bits_per_sample():
    post = torch.zeros(1, 2, G, C)
    prior = torch.zeros(1, 2, G, C)
    prior[0, 1, :, 0] = 4.0  # second sample: KL well above 1 nat, first: exactly 0
    loss, metrics = kl_loss(post.requires_grad_(), prior.requires_grad_(), dyn_scale=0.5, rep_scale=0.1, free_bits=1.0)
    from rssm import kl_divergence
    kl = kl_divergence(post, prior)
    assert kl[0, 0] == 0 and kl[0, 1] > 1.0
    torch.testing.assert_close(loss[0, 0], torch.tensor(0.6))  # both terms clipped to 1 nat
    torch.testing.assert_close(loss[0, 1], 0.6 * kl[0, 1])
    torch.testing.assert_close(metrics["wm/dyn_kl"], kl.mean())
    grad_post, grad_prior = torch.autograd.grad(loss[0, 0], [post, prior])
    assert grad_post.abs().sum() == 0 and grad_prior.abs().sum() == 0  # below free bits: no gradient


@pytest.mark.parametrize("blocks", [0, 4], ids=["2023", "now"])
def test_compiled_prior_step_matches_eager(blocks):
    """`compile_steps(prior=True)` (on a GPU): imagination's prior steps give eager's states, the same samples
    (aot_eager draws from the same generator) and, through the dynamics, the same gradients."""
    torch.manual_seed(0)
    rssm = RSSM(action_dim=A, embed_dim=E, deter=D, units=12, groups=G, classes=C, blocks=blocks)
    start = rssm.initial(B)
    start = type(start)(*(x.detach() for x in (start.deter + torch.randn(B, D), start.stoch, start.logits)))
    policy_weight = torch.randn(D, A, requires_grad=True)

    def run():
        torch.manual_seed(1)  # the same samples
        states, actions = rssm.imagine(start, horizon=4, policy=lambda s: torch.tanh(s.deter @ policy_weight))
        loss = states.deter.square().sum() + (states.stoch * states.logits).sum()
        rssm.zero_grad()
        policy_weight.grad = None
        loss.backward()
        grads = {n: p.grad.clone() for n, p in rssm.named_parameters() if p.grad is not None}
        return states, actions, grads | {"policy": policy_weight.grad.clone()}

    eager = run()
    backend = CompileCounterWithBackend("aot_eager")
    rssm.compile_steps(backend, prior=True)
    compiled = run()
    assert backend.frame_count == 2  # the first step (its state carries no gradient) and the others
    for a, b in zip([*eager[0], eager[1]], [*compiled[0], compiled[1]], strict=True):
        torch.testing.assert_close(b, a)
    assert eager[2].keys() == compiled[2].keys() and "policy" in eager[2]
    for name, g in eager[2].items():
        torch.testing.assert_close(compiled[2][name], g, rtol=1e-4, atol=1e-6, msg=name)

"""LaProp and Adam (rssm/optim.py): hand values, a plain per-tensor reference, AGC, the warm-up, skipped tensors,
reloading, torch's Adam as the reference of ours, and a skipped step decided on the device."""

import copy
import io
import math

import pytest
import torch

from rssm.optim import Adam, LaProp, warmup_lr


def reference_update(p: torch.Tensor, g: torch.Tensor, state: dict, lr: float, betas: tuple[float, float],
                     eps: float, agc: float, agc_floor: float, warmup: int) -> torch.Tensor:
    """One update of one tensor, written as the upstream chain reads (embodied/jax/opt.py and optax).
    Returns the gradient after clipping."""
    b1, b2 = betas
    if not state:
        state.update(step=0, nu=torch.zeros_like(p), mu=torch.zeros_like(p))
    count = state["step"]  # optax's schedule count: updates made before this one
    state["step"] = t = count + 1
    if agc:  # clip_by_agc
        upper = agc * torch.clamp(p.norm(), min=agc_floor)
        g = g * (1 / torch.clamp(g.norm() / upper, min=1.0))
    state["nu"] = b2 * state["nu"] + (1 - b2) * (g * g)  # scale_by_rms
    u = g / (torch.sqrt(state["nu"] / (1 - b2**t)) + eps)
    state["mu"] = (1 - b1) * u + b1 * state["mu"]  # scale_by_momentum
    update = state["mu"] / (1 - b1**t)
    if warmup:  # join_schedules([linear_schedule(0, lr, warmup), constant_schedule(lr)], [warmup])
        lr_t = (0 - lr) * (1 - min(count, warmup) / warmup) + lr if count < warmup else lr
    else:
        lr_t = lr
    p -= lr_t * update
    return g


def test_hand_values_three_steps_the_second_clipped():
    p = torch.nn.Parameter(torch.tensor([3.1, 4.1]))
    opt = LaProp([p], lr=0.1, betas=(0.5, 0.8), eps=0.0, agc=0.3, agc_floor=1e-3, warmup=0)

    # Step 1: ||p|| = sqrt(9.61 + 16.81) = 5.14, bound 0.3 * 5.14 = 1.542 > ||g|| = sqrt(0.09 + 1.44) = 1.237: no clip.
    # nu = 0.2 g^2 = [0.018, 0.288]; nu / (1 - 0.8) = [0.09, 1.44]; u = g / [0.3, 1.2] = [1, 1].
    # mu = 0.5 u = [0.5, 0.5]; mu / (1 - 0.5) = [1, 1]; p = [3.1, 4.1] - 0.1 = [3.0, 4.0].
    p.grad = torch.tensor([0.3, 1.2])
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(opt.state[p]["nu"], torch.tensor([0.018, 0.288]))

    # Step 2: ||p|| = 5, bound 0.3 * 5 = 1.5 < ||g|| = ||[6, 8]|| = 10: g * 1 / (10 / 1.5) = g * 0.15 = [0.9, 1.2].
    # nu = 0.8 [0.018, 0.288] + 0.2 [0.81, 1.44] = [0.0144 + 0.162, 0.2304 + 0.288] = [0.1764, 0.5184];
    # nu / (1 - 0.64) = [0.49, 1.44]; u = [0.9 / 0.7, 1.2 / 1.2] = [9/7, 1].
    # mu = 0.5 [0.5, 0.5] + 0.5 [9/7, 1] = [25/28, 0.75]; mu / (1 - 0.25) = [25/21, 1]; p = [3 - 2.5/21, 3.9].
    p.grad = torch.tensor([6.0, 8.0])
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([3 - 2.5 / 21, 3.9]))
    torch.testing.assert_close(opt.state[p]["nu"], torch.tensor([0.1764, 0.5184]))

    # Step 3: g = 0 so u = 0; mu = 0.5 [25/28, 0.75] = [25/56, 3/8]; mu / (1 - 0.125) = [25/49, 3/7]:
    # momentum alone moves p = [3 - 2.5/21 - 2.5/49, 3.9 - 0.3/7].
    p.grad = torch.zeros(2)
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([3 - 2.5 / 21 - 2.5 / 49, 3.9 - 0.3 / 7]))
    assert opt.state[p]["step"] == 3


@pytest.mark.parametrize("agc, warmup", [(0.0, 0), (0.3, 0), (0.0, 5), (0.3, 5)])
def test_matches_a_plain_per_tensor_loop(agc, warmup):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 4), (1,), (6, 2)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    init[3].zero_()  # a zero tensor: AGC uses the floor
    params = [torch.nn.Parameter(x.clone()) for x in init]
    ref = [x.clone() for x in init]
    # The second group sets its own lr, eps, agc and warm-up; the defaults come from the constructor.
    group2 = dict(params=params[3:], lr=0.03, eps=1e-8, agc=0.1 if agc else 0.0, warmup=2 * warmup)
    opt = LaProp([dict(params=params[:3]), group2], lr=0.1, agc=agc, warmup=warmup)
    settings = [dict(lr=0.1, betas=(0.9, 0.999), eps=1e-20, agc=agc, agc_floor=1e-3, warmup=warmup)] * 3
    settings += [dict(lr=0.03, betas=(0.9, 0.999), eps=1e-8, agc=group2["agc"], agc_floor=1e-3,
                      warmup=2 * warmup)] * 2
    ref_states = [{} for _ in params]
    for step in range(20):
        grads = []
        for s in shapes:  # scales from 1e-3 to 10, so AGC clips some tensors and not others
            grads.append(torch.randn(s, generator=gen) * 10 ** (4 * torch.rand((), generator=gen).item() - 3))
        skipped = {1} if step % 3 == 0 else set()  # tensor 1 has no gradient every third step
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            p.grad = None if i in skipped else g.clone()
        opt.step()
        for i, (p, g) in enumerate(zip(ref, grads, strict=True)):
            if i not in skipped:
                clipped = reference_update(p, g, ref_states[i], **settings[i])
                torch.testing.assert_close(params[i].grad, clipped, rtol=1e-6, atol=0.0)  # .grad scaled in place
    for p, r, rs in zip(params, ref, ref_states, strict=True):
        torch.testing.assert_close(p.data, r, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[p]["nu"], rs["nu"], rtol=1e-6, atol=0.0)
        torch.testing.assert_close(opt.state[p]["mu"], rs["mu"], rtol=1e-5, atol=1e-7)
        assert opt.state[p]["step"] == rs["step"]
    assert opt.state[params[1]]["step"] == 13  # 20 steps less the 7 skipped ones
    assert not torch.equal(params[0].data, init[0])


@pytest.mark.parametrize("start", [[3.0, 4.0], [0.0, 0.0]], ids=["norm5", "zero"])
def test_agc_clips_a_huge_gradient_to_agc_times_the_parameter_norm(start):
    p = torch.nn.Parameter(torch.tensor(start))
    bound = 0.3 * max(1e-3, math.hypot(*start))  # 1.5 for norm 5; 0.3 * 1e-3 (the floor) for the zero tensor
    clipped = bound * torch.tensor([0.6, 0.8])  # the huge gradient's direction, at norm `bound`
    # b1 = 0 and b2 = 0.5 make the second move a simple function of the two gradients; warmup=1 leaves p in
    # place at the first update (its learning rate is 0), so the bound is the same at both updates.
    opt = LaProp([p], lr=0.1, betas=(0.0, 0.5), agc=0.3, agc_floor=1e-3, warmup=1)
    p.grad = clipped / 2  # below the bound: not clipped
    opt.step()
    assert p.data.tolist() == start
    p.grad = torch.tensor([3e6, 4e6])
    opt.step()
    # nu = 0.5 (0.5 (c/2)^2) + 0.5 c^2 = 0.5625 c^2; / (1 - 0.25) = 0.75 c^2; u = c / (sqrt(0.75) |c|) = 2 / sqrt(3).
    # Unclipped, u would be sqrt(1.5) = 1.2247 instead of 1.1547.
    torch.testing.assert_close(opt.state[p]["nu"], 0.5625 * clipped**2)
    torch.testing.assert_close(p.data, torch.tensor(start) - 0.1 * 2 / math.sqrt(3))


def test_agc_zero_turns_clipping_off():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LaProp([p], agc=0.0)
    p.grad = torch.tensor([3e6, 4e6])
    opt.step()
    torch.testing.assert_close(opt.state[p]["nu"], 0.001 * torch.tensor([9e12, 16e12]))


@pytest.mark.parametrize("warmup, moves", [(4, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]), (0, [1.0] * 7)])
def test_warmup_learning_rate_of_each_update(warmup, moves):
    # With betas (0, 0) every update is sign(g) (no bias correction, no memory), so each move is that update's
    # learning rate: optax's linear_schedule(0, lr, warmup) is evaluated at the count before the update, so the
    # first update moves nothing and lr is reached at update warmup + 1.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = LaProp([p], lr=1.0, betas=(0.0, 0.0), agc=0.0, warmup=warmup)
    seen = []
    for _ in moves:
        before = p.item()
        p.grad = torch.ones(1)
        opt.step()
        seen.append(before - p.item())
    assert seen == moves
    assert [warmup_lr(4e-5, 1000, k) for k in (1, 2, 501, 1001, 5000)] == [0.0, 4e-8, 2e-5, 4e-5, 4e-5]


def test_a_tensor_without_grad_is_left_alone():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = LaProp([a, b], lr=0.1, agc=0.0, warmup=0)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.data, torch.ones(2)) and b not in opt.state
    torch.testing.assert_close(a.data, torch.full((3,), 0.9))
    assert opt.state[a]["step"] == 1
    b.grad = -torch.ones(2)
    opt.step()
    # b's first update: sign(g) at the full learning rate, its own count 1; a's second one: count 2.
    torch.testing.assert_close(b.data, torch.full((2,), 1.1))
    assert opt.state[b]["step"] == 1 and opt.state[a]["step"] == 2


@pytest.mark.parametrize("step_as_tensor", [False, True], ids=["int", "tensor"])
def test_state_dict_round_trip_continues_identically(step_as_tensor):
    gen = torch.Generator().manual_seed(1)
    shapes = [(4, 3), (3,)]
    first = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(12)]
    opt = LaProp(first, lr=0.05, warmup=3)

    def run(params, optimizer, steps):
        for gs in steps:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            optimizer.step()

    run(first, opt, grads[:5])
    buffer = io.BytesIO()  # as a checkpoint would: saved and loaded, not shared in memory
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    if step_as_tensor:  # torch's own optimizers keep their counts as float tensors
        for s in saved["state"].values():
            s["step"] = torch.tensor(float(s["step"]))
    second = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = LaProp(second, lr=0.05, warmup=3)
    opt2.load_state_dict(saved)
    assert all(s["step"].shape == () and s["step"].dtype == torch.float32 for s in opt2.state.values())
    run(first, opt, grads[5:])
    run(second, opt2, grads[5:])
    for p, q in zip(first, second, strict=True):
        assert torch.equal(p, q)
        assert opt.state[p]["step"] == opt2.state[q]["step"] == 12
        assert torch.equal(opt.state[p]["mu"], opt2.state[q]["mu"])


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(agc=-0.1), dict(agc_floor=0.0),
                                    dict(warmup=-1), dict(warmup=2.5), dict(eps=float("nan"))])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="LaProp"):
        LaProp([torch.nn.Parameter(torch.ones(1))], **kwargs)
    with pytest.raises(ValueError, match="LaProp"):  # in a param group too
        LaProp([dict(params=[torch.nn.Parameter(torch.ones(1))], **kwargs)])


def random_steps(shapes, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) * 10 ** (k % 3 - 1) for s in shapes] for k in range(steps)]
    return params, grads


def run_steps(opt, params, grads, finite=None):
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step() if finite is None else opt.step(finite=finite)


def test_adam_matches_torch_adam_and_resumes_from_its_state():
    values, grads = random_steps([(5, 3), (3,), (1,)], 30)
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    opt, ref = Adam(ours, lr=1e-2, eps=1e-8), torch.optim.Adam(theirs, lr=1e-2, eps=1e-8)
    run_steps(opt, ours, grads[:20])
    run_steps(ref, theirs, grads[:20])
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # A run saved with torch's Adam continues with ours.
    resumed = [torch.nn.Parameter(q.detach().clone()) for q in theirs]
    opt2 = Adam(resumed, lr=1e-2, eps=1e-8)
    opt2.load_state_dict(copy.deepcopy(ref.state_dict()))  # as from a checkpoint: nothing shared with `ref`
    assert all(s["step"] == 20 for s in opt2.state.values())
    run_steps(opt2, resumed, grads[20:])
    run_steps(ref, theirs, grads[20:])
    for p, q in zip(resumed, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [lambda ps: LaProp(ps, lr=0.01, warmup=2), lambda ps: Adam(ps, lr=0.01)],
                         ids=["laprop", "adam"])
def test_a_step_flagged_not_finite_changes_nothing(make):
    values, grads = random_steps([(4, 2), (2,)], 4)
    params = [torch.nn.Parameter(v.clone()) for v in values]
    opt = make(params)
    # Skipped before any step: parameters, moments and counts stay at their start, even with nan gradients.
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.step(finite=torch.tensor(False))
    assert all(torch.equal(p, v) for p, v in zip(params, values, strict=True))
    assert all(s["step"] == 0 and not s["mu"].any() and not s["nu"].any() for s in opt.state.values())
    # Then a few steps, one more skipped step, and the rest: the same as the steps without the skipped ones.
    run_steps(opt, params, grads[:2], finite=torch.tensor(True))
    for p in params:
        p.grad = torch.full_like(p, float("inf"))
    opt.step(finite=torch.tensor(False))
    run_steps(opt, params, grads[2:], finite=torch.tensor(True))
    plain = [torch.nn.Parameter(v.clone()) for v in values]
    ref = make(plain)
    run_steps(ref, plain, grads)
    for p, q in zip(params, plain, strict=True):
        torch.testing.assert_close(p, q, rtol=0.0, atol=0.0)
        assert torch.equal(opt.state[p]["mu"], ref.state[q]["mu"]) and opt.state[p]["step"] == 4

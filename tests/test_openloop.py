import math

import numpy as np
import pytest
import torch

from rssm.distributions import symexp, symlog, twohot_mean
from rssm.openloop import open_loop_curves, open_loop_errors, predict_open_loop
from rssm.rssm import RSSMState, features
from rssm.world_model import WorldModel

B, OBS, A, CONTEXT, HORIZONS = 5, 3, 2, 4, (1, 2, 3, 6)
T = CONTEXT + max(HORIZONS)


def make_world_model(seed=0):
    torch.manual_seed(seed)
    wm = WorldModel({"obs": (OBS,)}, action_dim=A, deter=16, units=12, layers=1, groups=3, classes=4, bins=31)
    # The reward head starts at zero output; give it weights so that reward predictions depend on the state.
    torch.nn.init.normal_(wm.reward.out.weight, std=0.5)
    return wm


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_terminal = torch.rand(B, T, generator=g) < 0.3
    return {"obs": torch.randn(B, T, OBS, generator=g) * 3, "action": torch.randn(B, T, A, generator=g),
            "reward": torch.randn(B, T, generator=g), "is_first": is_first, "is_terminal": is_terminal}


def reference_errors(wm, batch, seed):
    """Per-sequence errors (B, H) from a plain loop: the posterior over the context, then one prior step at a
    time with the action that led to each target observation."""
    torch.manual_seed(seed)
    post, _ = wm.rssm.observe(wm.encode({"obs": batch["obs"][:, :CONTEXT]}), batch["action"][:, :CONTEXT],
                              batch["is_first"][:, :CONTEXT])
    state = RSSMState(*(x[:, CONTEXT - 1] for x in post))
    obs_err, reward_err, cont_err = [], [], []
    for t in range(CONTEXT, T):
        state = wm.rssm.img_step(state, batch["action"][:, t])  # action[t] led to obs[t]
        feat = features(state)
        obs_err.append(((wm.decoder(feat) - symlog(batch["obs"][:, t])) ** 2).sum(-1))
        reward_err.append((twohot_mean(wm.reward(feat), wm.bins) - batch["reward"][:, t]).abs())
        cont = torch.sigmoid(wm.cont(feat)[:, 0])
        cont_err.append((cont - (1.0 - batch["is_terminal"][:, t].float())).abs())
    return {name: torch.stack(err, 1).detach() for name, err in
            (("obs", obs_err), ("reward", reward_err), ("cont", cont_err))}


def errors(wm, batch, seed=7):
    torch.manual_seed(seed)
    return open_loop_errors(wm, batch, CONTEXT, HORIZONS)


def test_errors_match_a_step_by_step_reference():
    wm, batch = make_world_model(), make_batch()
    got = errors(wm, batch)
    want = reference_errors(wm, batch, seed=7)
    assert set(got) == {f"openloop/{n}_error_h{k}" for n in ("obs", "reward", "cont") for k in HORIZONS}
    for name, err in want.items():
        for k in HORIZONS:
            torch.testing.assert_close(got[f"openloop/{name}_error_h{k}"], err[:, k - 1].mean())
    assert all(v.requires_grad is False for v in got.values())
    assert all(got[f"openloop/{n}_error_h1"] > 0 for n in ("obs", "reward", "cont"))


def test_first_prior_step_takes_the_action_after_the_last_context_step():
    wm, batch = make_world_model(), make_batch()
    base = errors(wm, batch)

    def with_action(t):  # the same batch with action[:, t] changed
        changed = {**batch, "action": batch["action"].clone()}
        changed["action"][:, t] += 2.0
        return errors(wm, changed)

    # action[CONTEXT] led to obs[CONTEXT], the horizon-1 target: it must change the horizon-1 prediction.
    assert with_action(CONTEXT)["openloop/obs_error_h1"] != base["openloop/obs_error_h1"]
    # action[CONTEXT + 1] comes after it: horizon 1 must not see it, horizon 2 must.
    later = with_action(CONTEXT + 1)
    assert later["openloop/obs_error_h1"] == base["openloop/obs_error_h1"]
    assert later["openloop/obs_error_h2"] != base["openloop/obs_error_h2"]


def test_sequences_are_left_out_from_an_episode_start_on():
    wm, batch = make_world_model(), make_batch()
    batch["is_first"][0, CONTEXT + 1] = True  # sequence 0: the horizon-2 target starts a new episode
    batch["is_first"][1, 2] = True  # an episode start inside the context changes nothing
    got = errors(wm, batch)
    want = reference_errors(wm, batch, seed=7)
    for name, err in want.items():
        torch.testing.assert_close(got[f"openloop/{name}_error_h1"], err[:, 0].mean())
        for k in (2, 3, 6):
            torch.testing.assert_close(got[f"openloop/{name}_error_h{k}"], err[1:, k - 1].mean())
    # Whatever sequence 0 records after its episode start cannot matter.
    batch["obs"][0, CONTEXT + 1:] += 100.0
    batch["reward"][0, CONTEXT + 1:] += 100.0
    again = errors(wm, batch)
    assert all(torch.equal(again[k], v) for k, v in got.items())


def test_a_horizon_where_every_sequence_has_a_new_episode_is_nan():
    wm, batch = make_world_model(), make_batch()
    batch["is_first"][:, CONTEXT + 2] = True
    got = errors(wm, batch)
    assert math.isfinite(got["openloop/obs_error_h2"])
    assert all(math.isnan(got[f"openloop/{n}_error_h{k}"]) for n in ("obs", "reward", "cont") for k in (3, 6))


def test_sequences_shorter_than_context_plus_horizon_are_refused():
    wm, batch = make_world_model(), make_batch()
    with pytest.raises(AssertionError):
        open_loop_errors(wm, {k: v[:, :-1] for k, v in batch.items()}, CONTEXT, HORIZONS)


def test_curves_are_the_open_loop_prediction_in_the_env_s_units():
    """`open_loop_curves`: each observation dimension, the reward and P(continue), the truth against the
    posterior's reconstruction over the context and the prior's prediction after it, from one prediction."""
    wm, batch = make_world_model(), make_batch()
    H, S = 5, 3
    torch.manual_seed(7)
    prediction = predict_open_loop(wm, batch, CONTEXT, H, reconstruct=True)
    names, truth, pred = open_loop_curves(wm, batch, CONTEXT, H, sequences=S, cont_scale=0.9, prediction=prediction)
    assert names == ["obs[0]", "obs[1]", "obs[2]", "reward", "continue"]
    assert truth.shape == pred.shape == (S, OBS + 2, CONTEXT + H)
    steps = slice(0, CONTEXT + H)
    torch.testing.assert_close(torch.from_numpy(truth[:, :OBS]), batch["obs"][:S, steps].transpose(1, 2))
    torch.testing.assert_close(torch.from_numpy(truth[:, OBS]), batch["reward"][:S, steps])
    assert np.array_equal(truth[:, OBS + 1], 1.0 - batch["is_terminal"][:S, steps].float().numpy())
    # The decoder predicts vectors in symlog space; the curves are in the env's units.
    seen, dreamt = prediction["recon"]["obs"][:S], prediction["obs"]["obs"][:S]  # (S, CONTEXT | H, OBS)
    torch.testing.assert_close(torch.from_numpy(pred[:, :OBS, :CONTEXT]), symexp(seen).transpose(1, 2))
    torch.testing.assert_close(torch.from_numpy(pred[:, :OBS, CONTEXT:]), symexp(dreamt).transpose(1, 2))
    torch.testing.assert_close(torch.from_numpy(pred[:, OBS, :CONTEXT]), prediction["recon_reward"][:S])
    torch.testing.assert_close(torch.from_numpy(pred[:, OBS, CONTEXT:]), prediction["reward"][:S])
    cont = torch.cat([prediction["recon_cont"][:S], prediction["cont"][:S]], 1) / 0.9  # P(continue)
    torch.testing.assert_close(torch.from_numpy(pred[:, OBS + 1]), cont.clamp(0, 1))
    torch.manual_seed(7)
    again = open_loop_curves(wm, batch, CONTEXT, H, sequences=S, cont_scale=0.9)
    assert np.array_equal(again[2], pred)  # made here from the same random numbers: the same prediction


def test_the_reconstruction_s_reward_and_continue_read_the_posterior_states():
    wm, batch = make_world_model(), make_batch()
    torch.manual_seed(7)
    prediction = predict_open_loop(wm, batch, CONTEXT, 2, reconstruct=True)
    torch.manual_seed(7)
    post, _ = wm.rssm.observe(wm.encode({"obs": batch["obs"][:, :CONTEXT]}), batch["action"][:, :CONTEXT],
                              batch["is_first"][:, :CONTEXT])
    feat = features(post)  # (B, CONTEXT, F): the same sampled posterior
    torch.testing.assert_close(prediction["recon"]["obs"], wm.decode(feat)["obs"])
    torch.testing.assert_close(prediction["recon_reward"], twohot_mean(wm.reward(feat), wm.bins))
    torch.testing.assert_close(prediction["recon_cont"], torch.sigmoid(wm.cont(feat)[..., 0]))

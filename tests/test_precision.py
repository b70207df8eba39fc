"""precision=bf16: forward passes under autocast in bfloat16, while weights, optimizer states, gradients, the
recurrent state, head outputs and losses stay float32; its losses track a float32 run's."""

import numpy as np
import pytest
import torch

from rssm.build import build_agent
from rssm.envs import EnvSpec
from rssm.rssm import features


def spec(discrete: bool = True, image: bool = False) -> EnvSpec:
    shapes = {"image": (16, 16, 3)} if image else {"obs": (4,)}
    return EnvSpec(shapes, (2,), discrete, -np.ones(2), np.ones(2))


def batches(s: EnvSpec, n: int, B: int = 4, T: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Learnable sequences: observations are smooth functions of time, the reward is the first of them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = rng.uniform(0, 6, (B, 1)) + 0.1 * np.arange(T)  # (B, T)
        obs = np.stack([np.sin(t), np.cos(t), np.sin(2 * t), np.cos(3 * t)], -1).astype(np.float32)  # (B, T, 4)
        batch = {"reward": obs[..., 0].copy(), "is_first": np.zeros((B, T), bool),
                 "is_terminal": np.zeros((B, T), bool)}
        batch["is_first"][:, 0] = True
        if "image" in s.obs_shapes:
            batch["image"] = (np.clip(obs[..., None, None, :3] * 0.5 + 0.5, 0, 1) * 255).repeat(16, 2).repeat(16, 3)
            batch["image"] = batch["image"].astype(np.uint8)  # (B, T, 16, 16, 3)
        else:
            batch["obs"] = obs
        batch["action"] = (np.eye(2, dtype=np.float32)[rng.integers(0, 2, (B, T))] if s.discrete
                           else rng.uniform(-1, 1, (B, T, 2)).astype(np.float32))
        out.append(batch)
    return out


def run(compose_config, precision: str, s: EnvSpec, data, *overrides) -> list[dict[str, float]]:
    cfg = compose_config("model=debug", f"precision={precision}", "optim.warmup=0", *overrides)
    torch.manual_seed(0)
    agent = build_agent(cfg, s, torch.device("cpu"))
    return [{k: float(v) for k, v in agent.update(b).items()} for b in data]


@pytest.mark.parametrize("overrides, discrete", [((), True), (("algo=dreamerv3_2023",), False)],
                         ids=["now-discrete", "2023-continuous"])
def test_bf16_losses_track_float32(compose_config, overrides, discrete):
    s = spec(discrete)
    data = batches(s, 30)
    fp32, bf16 = (run(compose_config, p, s, data, *overrides) for p in ("fp32", "bf16"))
    # Means over 5 updates: a latent or action drawn differently (a probability moved across the uniform number
    # by rounding) makes single updates differ more than the trend; the critic's loss, on imagined returns, most.
    for key, rtol in [("loss/wm", 0.05), ("loss/rec", 0.05), ("loss/reward", 0.05), ("behavior/critic_loss", 0.1)]:
        a, b = (np.array([m[key] for m in run]).reshape(-1, 5).mean(1) for run in (fp32, bf16))
        np.testing.assert_allclose(b, a, rtol=rtol, atol=0.01, err_msg=key)
    wm = np.array([m["loss/wm"] for m in bf16])
    assert wm[-5:].mean() < 0.95 * wm[:5].mean()  # it learns, as float32 does


@pytest.mark.parametrize("image", [False, True], ids=["vector", "image"])
def test_bf16_keeps_float32_where_it_matters(compose_config, image):
    s = spec(image=image)
    cfg = compose_config("model=debug", "precision=bf16")
    agent = build_agent(cfg, s, torch.device("cpu"))
    data = batches(s, 2)
    agent.update(data[0])
    modules = agent.modules().values()
    assert all(p.dtype == torch.float32 for m in modules for p in m.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for m in modules for p in m.parameters())
    for opt in (agent.wm_opt, agent.actor_opt, agent.critic_opt):
        assert all(v.dtype == torch.float32 for st in opt.state.values() for v in st.values())
    batch = {k: torch.as_tensor(v) for k, v in data[1].items()}
    with agent._autocast():
        loss, metrics, post = agent.wm.loss(batch, agent.scales)
        feat = features(post)
        heads = [agent.wm.reward(feat), agent.wm.cont(feat), agent.critic(feat.detach()),
                 *agent.wm.decode(feat).values()]
        matmul = torch.ones(2, 2) @ torch.ones(2, 2)
    assert matmul.dtype == torch.bfloat16  # autocast is on
    assert loss.dtype == post.deter.dtype == post.logits.dtype == torch.float32
    assert all(h.dtype == torch.float32 for h in heads) and all(v.dtype == torch.float32 for v in metrics.values())
    actions, state = agent.act({k: v[:, 0] for k, v in data[1].items()}, None, explore=True)
    assert actions.dtype == np.float32 and state.deter.dtype == torch.float32

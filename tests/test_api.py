"""The Python API: `rssm.load` and the policy's `predict`."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import rssm
from rssm.config import UserError


def test_load_gives_the_config_spec_world_model_and_policy(runs):
    for where in (str(runs / "cartpole"), runs / "cartpole", runs / "cartpole" / "checkpoint.pt"):
        run = rssm.load(where)
        assert run.config.env.id == "CartPole-v1" and run.spec.discrete and run.policy is not None
        saved = torch.load(runs / "cartpole" / "model.pt", weights_only=True)["world_model"]
        assert all(torch.equal(v, saved[k]) for k, v in run.world_model.module.state_dict().items())
    assert rssm.__version__


def test_a_stopped_run_loads_from_its_checkpoint(runs, tmp_path):
    stopped = tmp_path / "stopped"
    shutil.copytree(runs / "cartpole", stopped)
    (stopped / "model.pt").unlink()  # as a run stopped by a signal leaves it
    run = rssm.load(stopped)
    assert run.path == stopped / "checkpoint.pt"
    # And a directory with model.pt and config.yaml alone (a run of replay.save=false, or a copy).
    (stopped / "checkpoint.pt").unlink()
    shutil.copy(runs / "cartpole" / "model.pt", stopped / "model.pt")
    assert rssm.load(stopped).path == stopped / "model.pt"


def test_a_model_of_images_loads_eager_whatever_its_run_compiled(runs, tmp_path):
    """compile=auto compiled the run's updates; a loaded model acts and imagines eagerly (too few calls to pay for
    compiling), and its config still says what the run did."""
    copy = tmp_path / "pixels"
    copy.mkdir()
    shutil.copy(runs / "pixels" / "model.pt", copy / "model.pt")
    config = (runs / "pixels" / "config.yaml").read_text()
    assert re.search(r"^compile: .*$", config, re.M)
    (copy / "config.yaml").write_text(re.sub(r"^compile: .*$", "compile: auto", config, flags=re.M))
    run = rssm.load(copy)
    assert run.config.compile == "auto" and run.world_model.module.image_encoder is not None
    assert not run.agent.compiled


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="no rssm run at"):
        rssm.load(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load checkpoint"):
        rssm.load(tmp_path / "junk.pt")


def test_predict_takes_env_observations_single_or_batched_and_returns_env_actions(runs):
    run = rssm.load(runs / "cartpole")
    env = run.make_env()
    obs, _ = env.reset(seed=0)
    action, state = run.policy.predict(obs)
    assert env.action_space.contains(action)
    # A batch gives an action per row (the posterior's latents are sampled: torch's seed repeats a call); a new
    # episode_start forgets the state.
    torch.manual_seed(1)
    actions, _ = run.policy.predict(np.stack([obs] * 3))
    torch.manual_seed(1)
    assert actions.shape == (3,) and np.array_equal(run.policy.predict(np.stack([obs] * 3))[0], actions)
    assert all(env.action_space.contains(a) for a in actions)
    obs, *_ = env.step(action)
    again, state2 = run.policy.predict(obs, state)
    torch.manual_seed(0)  # the posterior's latents are sampled: the same numbers for both
    fresh, fresh_state = run.policy.predict(obs)
    torch.manual_seed(0)
    restarted, restarted_state = run.policy.predict(obs, state, episode_start=True)
    assert restarted == fresh and torch.equal(restarted_state.model.deter, fresh_state.model.deter)
    assert not torch.equal(state2.model.deter, run.policy.predict(obs)[1].model.deter)  # the state carried on
    with pytest.raises(ValueError, match="observation 'obs' has shape"):
        run.policy.predict(np.zeros((2, 3, 4)))


def test_predict_plays_a_continuous_env_within_its_bounds(runs):
    run = rssm.load(runs / "pendulum")
    env = run.make_env()
    obs, _ = env.reset(seed=1)
    state, total = None, 0.0
    for _ in range(20):
        action, state = run.policy.predict(obs, state, deterministic=False)
        assert env.action_space.contains(action.astype(np.float32))
        obs, reward, terminated, truncated, _ = env.step(action)
        total += reward
    assert np.isfinite(total)


def test_the_readme_and_guide_examples_run(runs, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    python_page = (root / "docs" / "guides" / "python.md").read_text()
    texts = {  # the README's example; the Python guide's after "Train from Python" (whose run trains for long)
        "README.md": (root / "README.md").read_text(),
        "docs/guides/python.md": python_page.split("## Train from Python", 1)[1].split("\n## ", 1)[1],
        "docs/guides/dream-env.md": (root / "docs" / "guides" / "dream-env.md").read_text(),
    }
    examples = [(name, code) for name, text in texts.items() for code in re.findall(r"```python\n(.*?)```", text, re.S)]
    assert [name for name, _ in examples] == ["README.md", "docs/guides/python.md", "docs/guides/python.md",
                                              "docs/guides/dream-env.md"]
    monkeypatch.chdir(runs)
    for name, code in examples:
        if "stable_baselines3" in code:
            pytest.importorskip("stable_baselines3")
        exec(compile(code.replace('"outputs/2026-11-29/12-00-00"', '"cartpole"'), name, "exec"), {})


def test_rssm_eval_records_an_mp4_or_a_gif(runs, tmp_path, capsys):
    pytest.importorskip("moviepy")
    from rssm.evaluate import main as eval_main

    for name in ("episode.mp4", "episode.gif"):
        eval_main([str(runs / "cartpole"), "--episodes", "1", "--video", str(tmp_path / name),
                   "--out", str(tmp_path / "eval.json")])
    data = (tmp_path / "episode.mp4").read_bytes()
    assert data[4:8] == b"ftyp" and len(data) > 1000  # an MP4 container
    assert (tmp_path / "episode.gif").read_bytes()[:6] == b"GIF89a"
    assert not list(tmp_path.glob(".*partial*"))

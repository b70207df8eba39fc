"""An evaluation episode as a video in the logs (`trainer.eval_video_every`), and the CUSTOM SCALARS layout that puts
the eval return first in TensorBoard."""

import io
import re

import gymnasium as gym
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from test_resume import RUN, assert_same_run, stop_and_resume

from rssm.build import build_agent, build_envs
from rssm.config import UserError, validate
from rssm.evaluate import VIDEO_SIDE, EvalVideos, Recording, evaluate_policy
from rssm.logging import overview
from rssm.training import train

TINY = ("experiment=debug", "trainer.progress=false", "trainer.steps=200", "trainer.eval_every=200",
        "trainer.eval_episodes=1", "trainer.openloop_every=0")


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    """A tiny CartPole run (vector observations) with the defaults."""
    from hydra import compose, initialize_config_module

    from rssm.config import register_configs

    register_configs()
    with initialize_config_module("rssm.configs", version_base=None):
        cfg = compose("config", overrides=list(TINY))
    run_dir = tmp_path_factory.mktemp("vector")
    train(cfg, run_dir)
    return run_dir


def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def videos(run_dir) -> list[tuple[int, Image.Image, bytes]]:
    """The `eval/video` images logged, as (step, the decoded GIF, its bytes)."""
    found = events(run_dir)
    if "eval/video" not in found.Tags()["images"]:
        return []
    return [(e.step, Image.open(io.BytesIO(e.encoded_image_string)), e.encoded_image_string)
            for e in found.Images("eval/video")]


def test_a_pixel_run_logs_its_eval_episode_as_an_animated_gif_by_default(compose_config, tmp_path):
    train(compose_config(*TINY, "env=cartpole_pixels", "env.image_size=16"), tmp_path)
    logged = videos(tmp_path)
    assert [step for step, _, _ in logged] == [200]
    gif = logged[0][1]
    length = events(tmp_path).Scalars("eval/return_mean")[0].value  # CartPole: a reward of 1 per step
    assert gif.format == "GIF" and gif.is_animated and gif.size == (16, 16)  # the observations' frames
    assert 1 < gif.n_frames <= length + 1  # its first frame and one per step (equal neighbours merged)


def test_a_vector_run_logs_no_video_unless_asked_and_then_its_render_frames(compose_config, tmp_path, vector_run):
    assert videos(vector_run) == []
    train(compose_config(*TINY, "trainer.eval_video_every=1"), tmp_path / "asked")
    [(step, gif, _)] = videos(tmp_path / "asked")
    # CartPole renders 600 x 400: scaled down to VIDEO_SIDE on its longer side.
    assert step == 200 and gif.is_animated and gif.n_frames > 1
    assert gif.size == (VIDEO_SIDE, round(400 * VIDEO_SIDE / 600))


def test_the_custom_scalars_layout_puts_the_eval_return_first_with_logged_tags_only(vector_run):
    found = events(vector_run)
    [event] = found.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    category = layout.category[0]
    assert category.title == "rssm"
    series = category.chart[0].margin.series[0]
    assert (series.value, series.lower, series.upper) == ("eval/return_mean", "eval/return_min", "eval/return_max")
    logged = found.Tags()["scalars"]
    assert {series.value, series.lower, series.upper} <= set(logged)
    patterns = [p for chart in category.chart[1:] for p in chart.multiline.tag]
    assert len(patterns) == 8 and all(sum(bool(re.search(p, t)) for t in logged) == 1 for p in patterns), patterns
    # A run without an actor logs no eval return: its layout has no chart of it.
    assert not any(k.startswith("eval") for k in overview(evaluates=False)["rssm"])


def test_the_first_every_nth_and_the_last_evaluation_record(compose_config):
    cfg = compose_config("experiment=debug", "trainer.eval_every=100", "trainer.steps=1050",
                         "trainer.eval_video_every=3")
    every_third = EvalVideos(cfg, [])
    recorded = [s for s in (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1050) if every_third.recording(s)]
    assert recorded == [100, 400, 700, 1000, 1050]
    assert EvalVideos(compose_config("experiment=debug"), []).recording(300) is None  # vectors: off by default
    images = EvalVideos(compose_config("experiment=debug"), ["image"])
    assert images.recording(2000).source == "image"  # images: every evaluation, from the observations
    never = compose_config("experiment=debug", "trainer.eval_video_every=0")
    assert EvalVideos(never, ["image"]).recording(300) is None


class _NoRender(CartPoleEnv):
    metadata = {"render_modes": [], "render_fps": 50}


def test_an_env_that_cannot_render_is_said_once_and_evaluated_all_the_same(compose_config, capsys):
    if "RssmTest/NoRender-v0" not in gym.registry:
        gym.register("RssmTest/NoRender-v0", entry_point=_NoRender, max_episode_steps=50)
    cfg = compose_config("experiment=debug", "env.id=RssmTest/NoRender-v0", "trainer.eval_video_every=1")
    spec = build_envs(cfg, num=1)[1]
    agent = build_agent(cfg, spec, torch.device("cpu"))
    plain = evaluate_policy(agent, cfg, 1, steps=300)
    videos_ = EvalVideos(cfg, [])
    record = videos_.recording(300)
    assert evaluate_policy(agent, cfg, 1, steps=300, record=record) == plain
    assert videos_.video(record) is None and videos_.recording(600) is None  # no more tries
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rssm: warning: trainer.eval_video_every=1: "), lines
    assert "RssmTest/NoRender-v0 cannot give video frames" in lines[0]
    with pytest.raises(UserError, match="cannot record a video: render\\(\\) returned None"):
        Recording().add(type("Envs", (), {"call": lambda self, name: [None]})(), {})


def test_a_negative_value_is_refused_in_one_line(compose_config, tmp_path, run_cli):
    with pytest.raises(UserError, match=r"^trainer.eval_video_every must be >= 0 or null, got -1$"):
        validate(compose_config("trainer.eval_video_every=-1"))
    proc = run_cli("experiment=debug", "trainer.eval_video_every=-2", f"hydra.run.dir={tmp_path}", cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["rssm-train: error: trainer.eval_video_every must be >= 0 or null, "
                                                "got -2"]


def test_a_run_with_videos_resumes_as_if_never_stopped_videos_included(compose_config, tmp_path, monkeypatch):
    overrides = ("trainer.eval_video_every=1", "trainer.steps=160")
    straight = tmp_path / "straight"
    train(compose_config(*RUN, *overrides), straight)
    stop_and_resume(compose_config, monkeypatch, tmp_path / "stopped", overrides,
                    lambda calls, episodes, collector: calls == 107)
    assert_same_run(straight, tmp_path / "stopped")
    logged = [(step, data) for step, _, data in videos(straight)]
    assert [step for step, _ in logged] == [80, 160]
    assert [(step, data) for step, _, data in videos(tmp_path / "stopped")] == logged

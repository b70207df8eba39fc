"""What the model predicts, shown: the open-loop video, its TensorBoard summary in a pixel run, and `rssm-dream`."""

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env
from hydra import compose, initialize_config_module
from PIL import Image, ImageSequence
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_images import image_batch, image_model
from test_train import read_scalars

from rssm.build import continue_target
from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.config import UserError, register_configs
from rssm.dream import curve_figure, curve_frames, dream_batch, main
from rssm.evaluate import main as eval_main
from rssm.loggers import encode_gif
from rssm.openloop import (
    LABEL_HEIGHT,
    NARROW_LABEL_HEIGHT,
    header_layout,
    label_video,
    open_loop_curves,
    open_loop_errors,
    open_loop_video,
    predict_open_loop,
)
from rssm.replay import Replay
from rssm.replay_read import checkpoint_tail, episode_windows, longest_episode, replay_sequences
from rssm.rssm import features
from rssm.training import train

CONTEXT, HORIZON = 3, 4


def as_uint8(images):
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def test_video_panels_are_truth_prediction_and_error():
    wm, batch = image_model(), image_batch(B=5, T=CONTEXT + HORIZON + 1)
    torch.manual_seed(7)
    video = open_loop_video(wm, batch, CONTEXT, HORIZON, sequences=4)
    T, S, H, W = CONTEXT + HORIZON, 4, 16, 16
    assert video.shape == (T, S * H, 3 * W, 3) and video.dtype == np.uint8
    panels = torch.from_numpy(video).unflatten(1, (S, H)).transpose(0, 1)  # (S, T, H, 3W, C)
    truth, pred, error = panels.split(W, dim=3)
    torch.testing.assert_close(truth, batch["image"][:S, :T], rtol=0, atol=0)
    torch.testing.assert_close(error, (truth.int() - pred.int()).abs().to(torch.uint8), rtol=0, atol=0)
    # The context frames are the posterior's reconstructions; the posterior is sampled first, with the same seed.
    torch.manual_seed(7)
    seen = {k: batch[k][:, :CONTEXT] for k in wm.obs_keys}
    post, _ = wm.rssm.observe(wm.encode(seen), batch["action"][:, :CONTEXT], batch["is_first"][:, :CONTEXT])
    recon = wm.decode(features(post).detach())["image"][:S]  # (S, CONTEXT, H, W, C)
    torch.testing.assert_close(pred[:, :CONTEXT], as_uint8(recon), rtol=0, atol=0)
    torch.manual_seed(7)
    imagined = predict_open_loop(wm, batch, CONTEXT, HORIZON)["obs"]["image"][:S]  # (S, HORIZON, H, W, C)
    torch.testing.assert_close(pred[:, CONTEXT:], as_uint8(imagined), rtol=0, atol=0)
    assert (pred[:, CONTEXT:] != truth[:, CONTEXT:]).any() and error.max() > 0


def test_video_and_errors_can_share_one_prediction():
    wm, batch = image_model(), image_batch(B=3, T=CONTEXT + HORIZON)
    torch.manual_seed(7)
    prediction = predict_open_loop(wm, batch, CONTEXT, HORIZON, reconstruct=True)
    torch.manual_seed(7)
    alone = open_loop_errors(wm, batch, CONTEXT, (1, HORIZON))
    shared = open_loop_errors(wm, batch, CONTEXT, (1, HORIZON), prediction)
    assert alone.keys() == shared.keys() and all(torch.equal(alone[k], shared[k]) for k in alone)
    torch.manual_seed(7)
    np.testing.assert_array_equal(open_loop_video(wm, batch, CONTEXT, HORIZON, 2, prediction=prediction),
                                  open_loop_video(wm, batch, CONTEXT, HORIZON, 2))


def test_video_of_a_grey_key_with_fewer_sequences_than_asked():
    wm = image_model(image=(16, 16, 3), depth=(16, 16, 1))
    batch = image_batch(B=2, T=CONTEXT + HORIZON)
    batch["depth"] = batch["image"][..., :1].clone()
    grey = open_loop_video(wm, batch, CONTEXT, HORIZON, sequences=4)  # the first image key: depth
    assert wm.image_keys == ["depth", "image"] and grey.shape == (CONTEXT + HORIZON, 2 * 16, 3 * 16, 1)
    np.testing.assert_array_equal(grey[:, :16, :16, 0], batch["depth"][0, ..., 0].numpy())
    rgb = open_loop_video(wm, batch, CONTEXT, HORIZON, sequences=1, key="image")
    assert rgb.shape == (CONTEXT + HORIZON, 16, 3 * 16, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_gif_keeps_every_frame_of_few_colours_exactly(channels):
    rng = np.random.default_rng(0)
    frames = rng.choice(np.array([0, 80, 255], np.uint8), size=(6, 8, 10, channels))
    frames[:, 0, 0] = np.arange(6)[:, None]  # no two frames alike
    gif = Image.open(io.BytesIO(encode_gif(frames, fps=10)))
    decoded = [np.asarray(f.convert("L" if channels == 1 else "RGB")) for f in ImageSequence.Iterator(gif)]
    assert gif.info["duration"] == 100 and len(decoded) == 6
    np.testing.assert_array_equal(np.stack(decoded).reshape(frames.shape), frames)


def test_windows_stay_within_one_episode():
    is_first = np.zeros(12, bool)
    is_first[[0, 4, 5]] = True  # episodes 0-3, 4, 5-11
    assert list(episode_windows(is_first, 3)) == [0, 1, 5, 6, 7, 8, 9]
    assert list(episode_windows(is_first, 7)) == [5] and len(episode_windows(is_first, 8)) == 0
    assert longest_episode(is_first) == 7 and longest_episode(np.zeros(5, bool)) == 5


def test_replay_sequences_cross_chunks_but_no_episode_start_or_missing_chunk(tmp_path):
    replay = Replay(capacity=100, seed=0, directory=tmp_path, chunk=8)
    for i in range(40):  # episodes start every 10 steps; chunks hold 0-7, 8-15, ...
        replay.add({"image": np.full((1, 4, 4, 1), i, np.uint8), "action": np.zeros((1, 1), np.float32),
                    "reward": np.full(1, i, np.float32), "is_first": np.full(1, i % 10 == 0),
                    "is_terminal": np.zeros(1, bool)})  # one row of one env
    (tmp_path / "chunk_000002.npz").unlink()  # transitions 16-23: what is left is 0-15 and 24-39
    batch = replay_sequences(tmp_path, 6, 50, np.random.default_rng(0))
    starts = batch["reward"][:, 0].astype(int)
    # Within one episode (0-9, 10-19, 20-29, 30-39) and the stored transitions: starts 0-4, 10, 24, 30-34.
    assert list(starts) == [0, 1, 2, 3, 4, 10, 24, 30, 31, 32, 33, 34]
    np.testing.assert_array_equal(batch["reward"], starts[:, None] + np.arange(6))
    np.testing.assert_array_equal(batch["image"][..., 0, 0, 0], batch["reward"])
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    assert len(replay_sequences(tmp_path, 6, 3, np.random.default_rng(0))["reward"]) == 3


def test_replay_sequences_keep_to_one_env(tmp_path):
    replay = Replay(capacity=60, seed=0, directory=tmp_path, chunk=8, envs=3)
    for i in range(20):  # env e's transition i holds 100 * e + i; env 1 starts an episode every 5 steps
        value = 100 * np.arange(3) + i
        replay.add({"image": np.zeros((3, 4, 4, 1), np.uint8), "action": np.zeros((3, 1), np.float32),
                    "reward": value.astype(np.float32), "is_first": np.array([i == 0, i % 5 == 0, i == 0]),
                    "is_terminal": np.zeros(3, bool)})
    batch = replay_sequences(tmp_path, 7, 100, np.random.default_rng(0))
    env, step = batch["reward"] // 100, batch["reward"] % 100
    assert (env == env[:, :1]).all() and (np.diff(step, axis=1) == 1).all()
    assert set(env[:, 0].astype(int)) == {0, 2}  # env 1's episodes are 5 steps: no window of 7 fits


def compose_run(*overrides: str):
    register_configs()
    with initialize_config_module("rssm.configs", version_base=None):
        return compose("config", overrides=list(overrides))


PIXEL_RUN = ("experiment=debug", "env=cartpole_pixels", "env.image_size=16", "agent=world_model",
             "trainer.progress=false", "trainer.steps=200", "replay.chunk=32")


@pytest.fixture(scope="module")
def pixel_runs(tmp_path_factory):
    """Two tiny pixel world-model runs that differ only in logging the open-loop errors and video every 50 steps."""
    root = tmp_path_factory.mktemp("pixels")
    plain = train(compose_run(*PIXEL_RUN, "trainer.openloop_every=0"), root / "plain")
    logged = train(compose_run(*PIXEL_RUN, "trainer.openloop_every=50"), root / "logged")
    return root, plain, logged


def short_debug_run(tmp_path_factory) -> Path:
    """The first run Getting started suggests, `rssm-train experiment=debug` (CartPole, 300 env steps): fewer rows than
    replay.chunk=1024, so no chunk file, and all of its replay in its checkpoint. Trained once a session."""
    run_dir = tmp_path_factory.getbasetemp() / "short_debug_run"
    if not (run_dir / "model.pt").exists():
        train(compose_run("experiment=debug", "trainer.progress=false"), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    return short_debug_run(tmp_path_factory)


def test_a_pixel_run_logs_the_video_and_its_training_is_unchanged(pixel_runs):
    root, plain, logged = pixel_runs
    assert plain["perf/updates"] > 0 and plain["loss/wm"] == logged["loss/wm"]
    assert "openloop/obs_error_h1" in read_scalars(root / "logged")
    events = {name: EventAccumulator(str(root / name)) for name in ("plain", "logged")}
    for e in events.values():
        e.Reload()
    assert events["plain"].Tags()["images"] == [] and events["logged"].Tags()["images"] == ["openloop/video_image"]
    images = events["logged"].Images("openloop/video_image")
    assert [e.step for e in images] == [50, 100, 150, 200]
    gif = Image.open(io.BytesIO(images[-1].encoded_image_string))
    # Debug batch of 4 sequences, 5 context and 15 predicted frames, 16 x 16 images as truth | prediction | error,
    # under the labels' header: two lines of it over panels this narrow.
    assert gif.format == "GIF" and gif.n_frames == 20 and gif.size == (3 * 16, NARROW_LABEL_HEIGHT + 4 * 16)
    assert (images[-1].width, images[-1].height) == gif.size


def test_rssm_dream_draws_a_gif_from_a_world_model_runs_replay(pixel_runs, tmp_path, capsys):
    root = pixel_runs[0]
    out = tmp_path / "dream.gif"
    main([str(root / "logged"), "--context", "3", "--horizon", "7", "--sequences", "2", "--out", str(out)])
    assert capsys.readouterr().out == f"rssm-dream: 'image', 2 sequences x (3 seen + 7 predicted frames) -> {out}\n"
    gif = Image.open(out)
    assert gif.n_frames == 10 and gif.size == (3 * 16, NARROW_LABEL_HEIGHT + 2 * 16)
    with pytest.raises(SystemExit) as exit_info:  # rssm-eval still wants a policy
        eval_main([str(root / "logged"), "--episodes", "1"])
    assert exit_info.value.code == 2 and "no policy to play" in capsys.readouterr().err


def broken_copy(run_dir, to, model=None):
    to.mkdir()
    (to / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (to / "model.pt").write_bytes(model if model is not None else (run_dir / "model.pt").read_bytes())
    return to


@pytest.mark.parametrize("case, words", [
    ("missing", "no rssm run at .*nothing: give a run directory"),
    ("vector key", "--key image is not an observation key of the world model \\(obs\\)"),
    ("no matplotlib", "needs matplotlib to draw a run of vector observations: pip install 'rssm\\[plot\\]'$"),
    ("too long", "no stretch of the replay in .* has 1005 steps within one episode \\(the longest has \\d+\\): lower"),
    ("no replay", r"copy/replay holds no replay chunks \(chunk_\*\.npz\) and .*copy no checkpoint.pt with the rows "
                  r"after them: a run writes a chunk every replay.chunk=32 transitions and keeps the rest in its"),
    ("broken model", "cannot read .*model.pt as a torch file "),
    ("bad key", "--key state is not an image key of the world model \\(image\\)"),
    ("bad horizon", "argument --horizon: expected an integer >= 1, got 0"),
])
def test_rssm_dream_errors_are_one_line_with_status_2(pixel_runs, vector_run, tmp_path, capsys, monkeypatch, case,
                                                       words):
    logged = pixel_runs[0] / "logged"
    if case == "no matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if it were not installed
    args = {"missing": lambda: [str(tmp_path / "nothing")],
            "vector key": lambda: [str(vector_run), "--key", "image"],
            "no matplotlib": lambda: [str(vector_run), "--horizon", "2", "--out", str(tmp_path / "d.png")],
            "too long": lambda: [str(logged), "--horizon", "1000"],
            "no replay": lambda: [str(broken_copy(logged, tmp_path / "copy"))],
            "broken model": lambda: [str(broken_copy(logged, tmp_path / "copy", model=b"not a model"))],
            "bad key": lambda: [str(logged), "--key", "state"],
            "bad horizon": lambda: [str(logged), "--horizon", "0"]}[case]()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("rssm-dream: error: ") and err.count("\n") == 1, err
    assert re.search(words, err), err
    assert not (tmp_path / "d.png").exists()


def test_python_dash_m_rssm_dream_reports_a_missing_run_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rssm.dream", str(tmp_path / "nothing")], capture_output=True,
                          text=True, timeout=120, env=cli_env())
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"rssm-dream: error: no rssm run at {tmp_path}/nothing: give a run directory")
    assert proc.stderr.count("\n") == 1


def test_a_labelled_video_names_its_panels_and_marks_where_the_context_ends():
    video = np.zeros((5, 64, 3 * 64, 1), np.uint8)  # grey: labelled in RGB
    video[:, :, :64] = 77
    labelled = label_video(video, context=2)
    assert labelled.shape == (5, LABEL_HEIGHT + 64, 3 * 64, 3)
    assert (labelled[:, LABEL_HEIGHT:, :64] == 77).all() and (labelled[:, LABEL_HEIGHT:, 64:] == 0).all()
    bar = labelled[:, LABEL_HEIGHT - 1, 0]  # (T, 3): green over the context frames, red after them
    assert (bar[:2, 1] > bar[:2, 0]).all() and (bar[2:, 0] > bar[2:, 1]).all()
    assert labelled[0, :LABEL_HEIGHT - 2].max() > 200  # the text
    assert not np.array_equal(labelled[2, :LABEL_HEIGHT - 2], labelled[3, :LABEL_HEIGHT - 2])  # dream +1, dream +2


@pytest.mark.parametrize("width, lines, last", [(16, 2, "+45"), (20, 1, "+45"), (64, 1, "dream +45")])
def test_labels_fit_apart_over_narrow_and_wide_panels(width, lines, last):
    """Each label lies within its panel with a dark column before the next one: over 16-pixel panels the middle
    label has a line of its own, at a font of 7 pixels; over 64-pixel ones all is as it always was."""
    context, T = 5, 50
    header = header_layout(width, context, T)
    assert header.lines == lines and header.size >= 7
    assert header.labels[0] == ("truth", "seen", "error") and header.labels[-1] == ("truth", last, "error")
    assert header.height == (NARROW_LABEL_HEIGHT if lines == 2 else LABEL_HEIGHT)
    labelled = label_video(np.zeros((T, width, 3 * width, 3), np.uint8), context)
    assert labelled.shape == (T, header.height + width, 3 * width, 3)
    line = (header.height - 2) // lines  # rows of each line of text
    for t in (0, context, T - 1):
        ink = labelled[t, :header.height - 2].max(-1) > 100  # (text rows, 3W): the letters
        where = np.zeros_like(ink)
        for i in range(3):
            top = line if lines == 2 and i == 1 else 0
            label = ink[top:top + line, i * width:(i + 1) * width]
            assert label.any() and not label[:, -1].any(), (t, i)  # drawn, and apart from the next panel's
            where[top:top + line, i * width:(i + 1) * width] = True
        assert not (ink & ~where).any()  # no letter outside its label's place


def test_replay_sequences_go_on_into_the_rows_a_checkpoint_holds(tmp_path):
    replay = Replay(capacity=100, seed=0, directory=tmp_path, chunk=8)

    def add(i):  # episodes start every 10 steps; chunk files hold 0-7, 8-15, ...
        replay.add({"obs": np.full((1, 2), i, np.float32), "action": np.zeros((1, 1), np.float32),
                    "reward": np.full(1, i, np.float32), "is_first": np.full(1, i % 10 == 0),
                    "is_terminal": np.zeros(1, bool)})

    for i in range(21):
        add(i)
    state = replay.state_dict()  # the rows 16-20, after the last chunk file: the checkpoint's
    tail = (state["total"] // 8, state["tail"])
    assert tail[0] == 2 and len(tail[1]["is_first"]) == 5
    starts = replay_sequences(tmp_path, 4, 50, np.random.default_rng(0), tail)["reward"][:, 0]
    assert list(starts) == [0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 16]  # 13-16 read the tail
    files_alone = replay_sequences(tmp_path, 4, 50, np.random.default_rng(0))["reward"][:, 0]
    assert list(files_alone) == [0, 1, 2, 3, 4, 5, 6, 10, 11, 12]
    for i in range(21, 24):  # the run went on after its checkpoint: chunk 2 (16-23) holds the tail's rows and more
        add(i)
    batch = replay_sequences(tmp_path, 4, 50, np.random.default_rng(0), tail)
    assert list(batch["reward"][:, 0]) == [0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 16, 20]
    np.testing.assert_array_equal(batch["obs"][..., 0], batch["reward"][:, :1] + np.arange(4))


def test_a_short_run_s_replay_is_its_checkpoint_s_tail(vector_run):
    assert not list((vector_run / "replay").glob("chunk_*.npz"))
    total = load_checkpoint(vector_run / CHECKPOINT, mmap=True)["replay"]["total"]
    index, rows = checkpoint_tail(vector_run / CHECKPOINT, 1024)
    assert index == 0 and 300 <= len(rows["is_first"]) == total < 1024 and rows["obs"].shape == (total, 1, 4)
    with pytest.raises(UserError, match=f"it holds {total} rows after {total} in all, which is not what "
                                        f"replay.chunk=64 leaves"):
        checkpoint_tail(vector_run / CHECKPOINT, 64)
    assert checkpoint_tail(vector_run / "nothing.pt", 1024) is None and checkpoint_tail(None, 1024) is None


def test_rssm_dream_draws_a_vector_run_as_curves(vector_run, tmp_path, capsys):
    """CartPole (4 observation dimensions), a run shorter than one replay chunk: a figure with a column per
    sequence and a row per dimension, then the reward and the continue flag; a PNG, and a GIF whose curves grow."""
    png, gif = tmp_path / "dream.png", tmp_path / "dream.gif"
    for out in (png, gif):
        main([str(vector_run), "--context", "3", "--horizon", "7", "--sequences", "2", "--out", str(out)])
        assert capsys.readouterr().out == (f"rssm-dream: 'obs' (4 dimensions, reward and continue), 2 sequences x "
                                           f"(3 seen + 7 predicted steps) -> {out}\n")
    cfg, wm, key, batch = dream_batch(vector_run, 3, 7, 2)  # what main drew: the same seed
    names, truth, pred = open_loop_curves(wm, batch, 3, 7, 2, cont_scale=continue_target(cfg))
    fig = curve_figure(names, truth, pred, 3)
    assert key is None and names == ["obs[0]", "obs[1]", "obs[2]", "obs[3]", "reward", "continue"]
    assert len(fig.axes) == 6 * 2  # a row per curve, a column per sequence
    for i, ax in enumerate(fig.axes):
        n, s = divmod(i, 2)
        truth_line, pred_line = ax.get_lines()[:2]
        assert np.array_equal(truth_line.get_ydata(), truth[s, n]) and np.array_equal(pred_line.get_ydata(), pred[s, n])
    np.testing.assert_array_equal(truth[:, :4], batch["obs"].transpose(1, 2).numpy())
    size = tuple((fig.get_size_inches() * fig.dpi).round().astype(int))
    still, video = Image.open(png), Image.open(gif)
    assert still.format == "PNG" and still.size == size
    assert video.format == "GIF" and video.n_frames == 10 and video.size == size
    orange = [(np.abs(np.asarray(f.convert("RGB"), int) - (255, 127, 14)).sum(-1) < 60).sum()
              for f in ImageSequence.Iterator(video)]  # pixels of the predicted curves, frame by frame
    assert all(a < b for a, b in zip(orange, orange[1:], strict=False)), orange
    fewer = curve_figure(names[-2:], truth[:, -2:], pred[:, -2:], 3)  # the reward and continue rows alone
    width, height = (fewer.get_size_inches() * fewer.dpi).round().astype(int)
    assert width == size[0] and height < size[1]  # a row less for each curve less
    assert curve_frames(fewer, truth[:, -2:], pred[:, -2:]).shape == (10, height, width, 3)


def test_rssm_dream_help_describes_every_flag_and_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    options = " ".join(capsys.readouterr().out.split()).split("options:")[1]
    for flag in ("context", "horizon", "sequences", "key", "out", "fps", "seed", "device"):
        assert re.search(rf"--{flag} {flag.upper()} [^(]+ \(default: ", options), flag
    for flag, default in (("context", "5"), ("horizon", "45"), ("sequences", "4"), ("fps", "10.0"), ("seed", "0"),
                          ("device", "cpu")):
        assert re.search(rf"--{flag} {flag.upper()} [^(]+ \(default: {default}\)", options), flag

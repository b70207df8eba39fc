"""Image and dict observations: CNN shapes, the world model's per-key losses, key selection, uint8 replay,
pixel envs, and a tiny pixel run end to end."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_train import EXPECTED_TAGS, read_scalars

from rssm.build import build_world_model
from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.collector import Collector, blank_transition, make_envs
from rssm.config import UserError, config_changes
from rssm.envs import env_spec, make_env, random_action
from rssm.evaluate import main as eval_main
from rssm.networks import ConvDecoder, ConvEncoder, image_stages
from rssm.openloop import open_loop_errors
from rssm.replay import Replay
from rssm.training import train
from rssm.world_model import LossScales, WorldModel, select_obs_keys


@pytest.mark.parametrize("size, depth, stages", [(64, 4, 4), (16, 8, 2), (96, 2, 4)])
def test_conv_encoder_halves_to_a_few_pixels_and_the_decoder_mirrors_it(size, depth, stages):
    assert image_stages(size) == stages
    encoder, decoder = ConvEncoder(size, 3, depth), ConvDecoder(20, size, 3, depth)
    last = size >> stages  # 64 -> 4, 16 -> 4, 96 -> 6
    assert encoder.out_dim == depth * 2 ** (stages - 1) * last**2
    assert encoder(torch.rand(5, size, size, 3) - 0.5).shape == (5, encoder.out_dim)
    assert decoder(torch.randn(5, 20)).shape == (5, size, size, 3)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [depth * 2**i for i in range(stages)]
    assert [c.in_channels for c in deconvs] == [depth * 2**i for i in reversed(range(stages))]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs + deconvs)


@pytest.mark.parametrize("size", [4, 7, 84, 100])
def test_image_sizes_the_cnn_cannot_halve_evenly_are_refused(size):
    with pytest.raises(ValueError, match="4 to 7 times a power of two"):
        image_stages(size)


def image_model(seed=0, **shapes):
    torch.manual_seed(seed)
    return WorldModel(shapes or {"image": (16, 16, 3), "state": (4,)}, action_dim=2, deter=16, units=16, layers=1,
                      groups=2, classes=3, bins=15, cnn_depth=4)


def image_batch(B=2, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    return {"image": torch.randint(0, 256, (B, T, 16, 16, 3), generator=g, dtype=torch.uint8),
            "state": torch.randn(B, T, 4, generator=g), "action": torch.randn(B, T, 2, generator=g),
            "reward": torch.randn(B, T, generator=g), "is_first": is_first, "is_terminal": torch.zeros(B, T).bool()}


def test_image_loss_is_squared_error_on_pixels_over_255_and_vectors_keep_symlog():
    wm, batch = image_model(), image_batch()
    # Decoders that predict constants: 0.5 for every pixel (zero output plus the offset), 0 for the state.
    for p in (*wm.image_decoder.net[-1].parameters(), *wm.decoder.out.parameters()):
        torch.nn.init.zeros_(p)
    batch["image"][:] = 255
    batch["state"][:] = math.e - 1.0  # symlog: 1
    loss, metrics, _ = wm.loss(batch, LossScales())
    torch.testing.assert_close(metrics["loss/rec_image"], torch.tensor(0.25 * 16 * 16 * 3))  # (0.5 - 1)^2 per value
    torch.testing.assert_close(metrics["loss/rec_state"], torch.tensor(4.0))  # (0 - 1)^2 x 4
    torch.testing.assert_close(metrics["loss/rec"], torch.tensor(192.0 + 4.0))
    assert torch.isfinite(loss)


def test_both_encoders_get_gradients_and_images_enter_as_uint8():
    wm, batch = image_model(), image_batch()
    assert batch["image"].dtype == torch.uint8
    embed = wm.encode(batch)
    assert embed.shape == (2, 6, wm.image_encoder.out_dim + wm.encoder.out_dim)
    wm.loss(batch, LossScales())[0].backward()
    for module in (wm.image_encoder, wm.encoder, wm.image_decoder, wm.decoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_a_model_of_images_alone_has_no_vector_modules():
    wm = image_model(image=(16, 16, 3))
    assert wm.encoder is None and wm.decoder is None and wm.obs_keys == ("image",)
    batch = image_batch()
    del batch["state"]
    loss, metrics, _ = wm.loss(batch, LossScales())
    assert torch.isfinite(loss) and "loss/rec_image" not in metrics  # one key: loss/rec alone


def test_open_loop_obs_error_sums_the_keys():
    wm, batch = image_model(), image_batch(T=7)
    torch.manual_seed(3)
    errors = open_loop_errors(wm, batch, context=3, horizons=(1, 4))
    for k in (1, 4):
        total = errors[f"openloop/obs_image_error_h{k}"] + errors[f"openloop/obs_state_error_h{k}"]
        torch.testing.assert_close(errors[f"openloop/obs_error_h{k}"], total)
    assert {k.rsplit("_h", 1)[0] for k in errors} == {"openloop/obs_error", "openloop/obs_image_error",
                                                      "openloop/obs_state_error", "openloop/reward_error",
                                                      "openloop/cont_error"}


def test_keys_are_selected_by_shape_and_regex():
    shapes = {"image": (16, 16, 3), "wrist": (16, 16, 1), "state": (4,), "goal": (2,)}
    assert select_obs_keys(shapes, ".*", ".*") == shapes  # default: images to the CNN, vectors to the MLP
    assert select_obs_keys(shapes, "image", "state|goal") == {"image": (16, 16, 3), "state": (4,), "goal": (2,)}
    assert select_obs_keys(shapes, "$^", ".*") == {"state": (4,), "goal": (2,)}  # images never go to the MLP
    with pytest.raises(UserError):  # whole-name matches: "im" and "stat" name no key
        select_obs_keys(shapes, "im", "stat")


def test_key_selection_refuses_what_the_model_cannot_use():
    with pytest.raises(UserError, match="no observation key matches model.cnn_keys='x' .* the env has image 16x16x3"):
        select_obs_keys({"image": (16, 16, 3)}, "x", ".*")
    with pytest.raises(UserError, match="image 'image' is 16 x 32: it is not square"):
        select_obs_keys({"image": (16, 32, 3)}, ".*", ".*")
    with pytest.raises(UserError, match="image 'image' is 84 x 84: .*env.image_size"):
        select_obs_keys({"image": (84, 84, 3)}, ".*", ".*")
    with pytest.raises(UserError, match="differ in size"):
        select_obs_keys({"a": (16, 16, 3), "b": (32, 32, 3)}, ".*", ".*")


def test_every_model_preset_builds_with_images_and_grows(compose_config):
    counts = {}
    for model in ["xxs", "xs", "s", "m", "l", "xl"]:
        with torch.device("meta"):
            wm = build_world_model(compose_config(f"model={model}"), {"image": (64, 64, 3)}, action_dim=6)
        counts[model] = sum(p.numel() for p in wm.parameters())
    assert list(counts.values()) == sorted(counts.values())


def dict_transition(i, first=False):
    """One replay row of one env."""
    return {"image": np.full((1, 8, 8, 3), i, np.uint8), "state": np.full((1, 2), i, np.float32),
            "action": np.zeros((1, 1), np.float32), "reward": np.full(1, i, np.float32), "is_first": np.full(1, first),
            "is_terminal": np.zeros(1, bool)}


def test_replay_keeps_images_uint8_in_memory_in_batches_and_on_disk(tmp_path):
    replay = Replay(capacity=20, seed=0, directory=tmp_path, chunk=8)
    for i in range(30):
        replay.add(dict_transition(i))
    assert replay.data["image"].dtype == np.uint8 and replay.data["state"].dtype == np.float32
    per = sum(np.asarray(v).nbytes for v in dict_transition(0).values())
    assert replay.nbytes() == 20 * per == 20 * (192 + 8 + 4 + 4 + 2)
    batch = replay.sample(4, 5)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 5, 8, 8, 3)
    np.testing.assert_array_equal(batch["image"][..., 0, 0, 0], batch["reward"])  # the keys stay aligned
    loaded = Replay(capacity=20, seed=0, directory=tmp_path, chunk=8)
    loaded.load_state_dict(replay.state_dict())
    assert loaded.data["image"].dtype == np.uint8
    np.testing.assert_array_equal(loaded.data["image"], replay.data["image"])


def test_pixel_cartpole_observes_resized_frames():
    env, spec = make_env("CartPole-v1", pixels=True, image_size=16)
    assert spec.obs_shapes == {"image": (16, 16, 3)}
    collector, rng = Collector(make_envs(lambda: env, 1), spec, seed=0), np.random.default_rng(0)
    frames = [collector.step(random_action(spec, rng))[0]["image"][0] for _ in range(20)]
    assert all(f.dtype == np.uint8 and f.shape == (16, 16, 3) and f.flags.writeable for f in frames)
    assert frames[0].min() < 200 < frames[0].max()  # the cart and pole on a white background
    assert any((f != frames[0]).any() for f in frames[1:])  # the scene moves
    assert {k for k in blank_transition(spec)} == {"image", "action", "reward", "is_first", "is_terminal"}
    env.close()
    env, spec = make_env("CartPole-v1", pixels=True, image_size=16, keep_state=True, action_repeat=2)
    assert spec.obs_shapes == {"image": (16, 16, 3), "state": (4,)}
    transition, _ = Collector(make_envs(lambda: env, 1), spec, seed=0).step(random_action(spec, rng))
    assert transition["state"].dtype == np.float32 and transition["image"].dtype == np.uint8
    env.close()


@pytest.mark.parametrize("space, words", [
    (gym.spaces.Dict({"reward": gym.spaces.Box(-1, 1, (3,))}), "the key 'reward' is a transition field"),
    (gym.spaces.Dict({"image": gym.spaces.Box(0, 1, (8, 8, 3))}), "key 'image'.*H x W x C uint8 Box"),
    (gym.spaces.Box(0, 255, (8, 8), np.uint8), "rssm needs a 1-D float Box"),
    (gym.spaces.Dict({}), "an empty Dict"),
])
def test_unsupported_observation_spaces_are_refused(space, words):
    with pytest.raises(UserError, match=words):
        env_spec(space, gym.spaces.Discrete(2))


def test_pixel_run_end_to_end_and_its_evaluation(compose_config, tmp_path, capsys):
    cfg = compose_config("experiment=debug", "env=cartpole_pixels", "env.image_size=16", "trainer.progress=false",
                         "trainer.steps=200", "trainer.openloop_every=100", "trainer.eval_every=200",
                         "trainer.eval_episodes=1")
    train(cfg, tmp_path)
    out = capsys.readouterr().out
    assert "observations: image 16x16x3 uint8 -> CNN; replay: 10,000 transitions x 782 bytes = 7.8 MB when full" in out
    scalars = read_scalars(tmp_path)
    wanted = EXPECTED_TAGS | {"openloop/obs_error_h1", "eval/return_mean"}
    assert wanted <= set(scalars), wanted - set(scalars)
    assert all(np.isfinite(v).all() for v in scalars.values())
    assert scalars["perf/updates"][-1] > 0
    weights = torch.load(tmp_path / "model.pt", weights_only=True)["world_model"]
    assert "image_encoder.net.0.weight" in weights and "encoder.hidden.0.weight" not in weights  # no vector key
    eval_main([str(tmp_path), "--episodes", "1", "--out", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text())["episodes"] == 1


def test_image_keys_absent_from_an_older_run_are_no_change(compose_config):
    saved = OmegaConf.to_container(compose_config(), resolve=True)
    for key in ("pixels", "pixels_keep_state", "image_size"):
        del saved["env"][key]
    for key in ("cnn_depth", "cnn_keys", "mlp_keys"):
        del saved["model"][key]
    assert config_changes(saved, compose_config()) == []
    saved["env"]["pixels"] = False
    assert config_changes(saved, compose_config("env.pixels=true")) == ["env.pixels: False -> True"]


def test_a_pixel_run_resumes_with_its_images_uint8_in_chunks_and_checkpoint(compose_config, tmp_path):
    run = ("experiment=debug", "env=cartpole_pixels", "env.image_size=16", "trainer.progress=false",
           "trainer.openloop_every=0", "trainer.eval_episodes=1", "replay.chunk=32")
    train(compose_config(*run, "trainer.steps=120"), tmp_path)
    with np.load(tmp_path / "replay" / "chunk_000000.npz") as chunk:
        assert chunk["image"].dtype == np.uint8 and chunk["image"].shape == (32, 1, 16, 16, 3)  # (rows, envs, ...)
    assert load_checkpoint(tmp_path / CHECKPOINT)["replay"]["tail"]["image"].dtype == torch.uint8
    train(compose_config(*run, "trainer.steps=160", f"resume={tmp_path}", "allow_changes=[trainer.steps]"), tmp_path)
    assert load_checkpoint(tmp_path / CHECKPOINT)["collector"]["env_steps"] == 160

"""scripts/parity.py: both implementations' command lines from one table, upstream's and rssm's training-episode
returns read back as agent steps, score points, and the bootstrap interval of the difference. Needs neither JAX
nor the official checkout."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from rssm.plot import read_csv

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "parity.py"
ENVS = ["dmc_cartpole_swingup", "dmc_walker_walk", "gym_CartPole-v1", "gym_Pendulum-v1"]


@pytest.fixture(scope="module")
def parity():
    sys.path.insert(0, str(SCRIPT.parent))  # as `python scripts/parity.py` has it: parity_scores beside it
    try:
        spec = importlib.util.spec_from_file_location("parity", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


@pytest.fixture(scope="module")
def scores(parity):
    return sys.modules["parity_scores"]  # imported by parity.py: how runs' files are read


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def upstream_scores(path, ends, repeat):
    """scores.jsonl as upstream writes it: each episode at its step counter (resets counted) times the repeat."""
    write_jsonl(path, [{"step": c * repeat, "episode/score": score} for c, score in ends])


def test_upstream_steps_become_agent_steps_without_the_repeat_and_the_resets(scores, tmp_path):
    # 2 envs in lockstep, episodes of 5 agent steps, each begun by a reset transition that upstream counts:
    # the envs' transitions 1-2 are resets, 3-12 steps; env 0 ends at transition 11, env 1 at 12; then resets
    # 13-14, and the second episodes end at 23 and 24. Action repeat 2 doubles the written steps.
    run = tmp_path / "seed_0"
    upstream_scores(run / "scores.jsonl", [(11, 1.0), (12, 2.0), (23, 3.0), (24, 4.0)], repeat=2)
    episodes, reached = scores.official_episodes(run, repeat=2, envs=2)
    # Env 0 ends after 4 + 5 agent steps (its own 5, env 1's 4); env 1's is counted at env 0's, one step of the
    # envs apart at most: 9 and 19, where rssm (counting after the whole step of the envs) says 10 and 20.
    assert episodes == [(9, 1.0), (9, 2.0), (19, 3.0), (19, 4.0)] and reached == 19
    assert scores.score_points(episodes, every=10, reached=reached) == [(10, 1.5)]  # step 20 not yet reached
    write_jsonl(run / "metrics.jsonl", [{"step": 2 * 30, "fps/train": 1.0}])  # transition 30: past step 20
    episodes, reached = scores.official_episodes(run, repeat=2, envs=2)
    assert reached == 30 - 4 - 2 and scores.score_points(episodes, 10, reached) == [(10, 1.5), (20, 3.5)]


def test_a_restarted_official_run_keeps_the_episodes_of_its_surviving_history(parity, scores, tmp_path):
    run = tmp_path / "seed_0"
    # Restarted from a checkpoint at transition 15: the episodes the first try logged at 23 and 24 are replayed.
    upstream_scores(run / "scores.jsonl", [(11, 1.0), (12, 2.0), (23, 3.0), (24, 4.0), (23, 5.0), (24, 6.0)], 1)
    assert [score for _, score in scores.official_episodes(run, 1, 2)[0]] == [1.0, 2.0, 5.0, 6.0]
    (run / parity.DONE).write_text("{}")
    assert scores.official_episodes(run, 1, 2)[1] == math.inf  # finished: every point is complete


def test_the_official_runs_repeat_and_envs_come_from_its_config(scores, tmp_path):
    (tmp_path / "config.yaml").write_text("task: dmc_walker_walk\nenv:\n  dmc: {repeat: 2, size: [64, 64]}\n"
                                          "run:\n  envs: 16\n")
    assert scores.official_run_settings(tmp_path, 1, 4) == (2, 16)
    assert scores.official_run_settings(tmp_path / "none", 1, 4) == (1, 4)  # no config: the table's


def test_rssm_metrics_give_the_writes_mean_returns(scores, tmp_path):
    run = tmp_path / "seed_0"
    write_jsonl(run / "metrics.jsonl", [
        {"step": 16, "time": 1.0, "loss/wm": 3.0},  # no episode ended
        {"step": 32, "time": 2.0, "episode/return": 10.0, "episode/length": 2},
        {"step": 48, "time": 3.0, "episode/return": None},  # nan is written as null
        {"step": 64, "time": 4.0, "episode/return": 20.0},
        {"step": 64, "time": 5.0, "eval/return_mean": 30.0},  # another write at the same step
    ])
    episodes, reached = scores.rssm_episodes(run)
    assert episodes == [(32, 10.0), (64, 20.0)] and reached == 64
    (run / "model.pt").write_bytes(b"")
    assert scores.rssm_episodes(run)[1] == math.inf


def test_world_model_terms_are_read_at_agent_steps_and_before_their_scales(scores, tmp_path):
    # Upstream: the same episodes as above (2 envs, repeat 2); a metrics write at transition 16 follows the first two
    # episodes' ends (11, 12): agent step 16 - 2 - 2 = 12. Its reconstruction is the sum of its observation keys'.
    official = tmp_path / "official"
    upstream_scores(official / "scores.jsonl", [(11, 1.0), (12, 2.0), (23, 3.0), (24, 4.0)], repeat=2)
    write_jsonl(official / "metrics.jsonl", [
        {"step": 2 * 10, "train/loss/dyn": 3.0, "train/loss/position": 1.0, "train/loss/velocity": 0.5,
         "train/loss/rew": 2.0, "train/loss/policy": 9.0, "train/loss/value": 9.0, "train/dyn_ent": 40.0},
        {"step": 2 * 16, "train/loss/dyn": 1.5, "train/loss/position": 0.25, "train/loss/velocity": 0.25},
        {"step": 2 * 20, "fps/train": 1.0}])  # no term: no value
    assert scores.official_metric(official, "dyn", repeat=2, envs=2) == [(8, 3.0), (12, 1.5)]
    assert scores.official_metric(official, "rec", repeat=2, envs=2) == [(8, 1.5), (12, 0.5)]
    assert scores.official_metric(official, "prior_entropy", repeat=2, envs=2) == [(8, 40.0)]
    # rssm logs its KL terms times their scales (its config.yaml): read back before them, as upstream's are.
    run = tmp_path / "rssm"
    write_jsonl(run / "metrics.jsonl", [{"step": 16, "loss/kl_dyn": 0.5, "loss/kl_rep": 0.2, "loss/rec": 1.0},
                                        {"step": 32, "episode/return": 10.0}])
    (run / "config.yaml").write_text("wm:\n  kl_dyn_scale: 0.5\n  kl_rep_scale: 0.1\n")
    assert scores.rssm_metric(run, "dyn") == [(16, 1.0)] and scores.rssm_metric(run, "rep") == [(16, 2.0)]
    assert scores.rssm_metric(run, "rec") == [(16, 1.0)]
    (run / "config.yaml").unlink()
    with pytest.raises(scores.UserError, match="does not give wm.kl_dyn_scale"):
        scores.rssm_metric(run, "dyn")


def test_score_points_are_means_of_the_episodes_in_each_window(scores):
    episodes = [(3, 1.0), (10, 3.0), (11, 5.0), (19.5, 7.0), (41, 100.0)]
    # (0, 10]: 1, 3; (10, 20]: 5, 7; nothing in (20, 30] or (30, 40]; (40, 50] only once it is reached.
    assert scores.score_points(episodes, 10, reached=45) == [(10, 2.0), (20, 6.0)]
    assert scores.score_points(episodes, 10, reached=50) == [(10, 2.0), (20, 6.0), (50, 100.0)]
    assert scores.score_points(episodes, 20, reached=20) == [(20, 4.0)]


def test_the_bootstrap_interval_of_the_difference(scores):
    same = np.array([100.0, 200.0, 300.0])
    diff, low, high = scores.bootstrap_difference(same, same.copy())
    assert diff == 0 and low < 0 < high  # identical samples: the interval holds 0, on both sides
    diff, low, high = scores.bootstrap_difference(same + 1000, same)
    assert diff == 1000 and 0 < low <= 1000 <= high  # clearly apart: 0 is outside
    one = scores.bootstrap_difference(np.array([5.0]), np.array([3.0]))
    assert one == (2.0, 2.0, 2.0)  # one seed each: no spread to draw from
    assert scores.bootstrap_difference(same, same[::-1]) == scores.bootstrap_difference(same, same[::-1])


def parse_official(flags):
    assert len(flags) % 2 == 0, flags
    parsed = dict(zip(flags[::2], flags[1::2], strict=True))
    assert all(k.startswith("--") for k in parsed) and len(parsed) == len(flags) // 2, flags  # no flag twice
    return parsed


def parse_rssm(overrides):
    return dict(o.split("=", 1) for o in overrides)


@pytest.mark.parametrize("env", ENVS)
def test_both_command_lines_hold_the_tables_settings(parity, env, tmp_path):
    s = parity.settings(env)
    official = parse_official(parity.official_flags(s, 3, tmp_path / "o"))
    rssm = parse_rssm(parity.rssm_overrides(s, 3, tmp_path / "r"))
    pairs = [("--run.steps", "trainer.steps"), ("--run.train_ratio", "trainer.train_ratio"),
             ("--run.envs", "env.num_envs"), ("--seed", "seed"), ("--batch_size", "replay.batch_size"),
             ("--batch_length", "replay.batch_length"), ("--replay.size", "replay.capacity")]
    for flag, key in pairs:
        assert float(official[flag]) == float(rssm[key]), (flag, key)
    repeat = official.get("--env.dmc.repeat", "1")  # upstream's gym envs have no repeat
    assert int(repeat) == int(rssm["env.action_repeat"]) == s["repeat"]
    assert official["--jax.compute_dtype"] == "float32" and rssm["precision"] == "fp32"
    assert official["--logdir"] == str(tmp_path / "o") and rssm["hydra.run.dir"] == str(tmp_path / "r")
    assert rssm["algo"] == "dreamerv3" and rssm["model"] == s["size"]
    if s["family"] == "dmc":
        # Upstream's DMC episodes are the suite's 1,000 control steps: rssm's time limit is as many.
        assert s["repeat"] * int(rssm["env.time_limit"]) == 1000 and s["every"] == 16 * 500
        assert official["--task"] == env and official["--configs"] == "dmc_proprio"
    else:
        assert official["--task"] == env and s["every"] == 10_000
    assert "--agent.opt.lr" not in official and "wm.lr" not in rssm  # both their own default, upstream's
    changed = parity.settings(env, steps=4000, train_ratio=32, envs=4, size="size12m", lr=3e-4, warmup=100)
    official = parse_official(parity.official_flags(changed, 0, tmp_path))
    rssm = parse_rssm(parity.rssm_overrides(changed, 0, tmp_path))
    assert (official["--run.steps"], official["--run.train_ratio"], official["--run.envs"]) == ("4000", "32", "4")
    assert (rssm["trainer.steps"], rssm["trainer.train_ratio"], rssm["env.num_envs"]) == ("4000", "32", "4")
    assert official["--agent.dyn.rssm.deter"] == "2048" and rssm["model"] == "size12m"
    assert (float(official["--agent.opt.lr"]), int(official["--agent.opt.warmup"])) == (3e-4, 100)
    assert {float(rssm[k]) for k in ("wm.lr", "agent.actor_lr", "agent.critic_lr")} == {3e-4}
    assert int(rssm["optim.warmup"]) == 100


@pytest.mark.parametrize("env", ENVS)
def test_upstreams_model_flags_are_the_model_rssm_composes(parity, compose_config, env, tmp_path):
    s = parity.settings(env)
    overrides = [o for o in parity.rssm_overrides(s, 0, tmp_path) if not o.startswith("hydra.")]
    m = compose_config(*overrides).model
    mlp_layers = m.get("mlp_layers") or m.layers  # the encoder's, decoder's, actor's and critic's depth
    official = parse_official(parity.official_flags(s, 0, tmp_path))
    get = lambda key: int(official[f"--agent.{key}"])  # noqa: E731
    assert (get("dyn.rssm.deter"), get("dyn.rssm.hidden")) == (m.deter, m.units)
    assert (get("dyn.rssm.stoch"), get("dyn.rssm.classes")) == (m.groups, m.classes)
    for part in ("enc.simple", "dec.simple", "policy", "value"):
        assert (get(f"{part}.units"), get(f"{part}.layers")) == (m.units, mlp_layers), part
    for part in ("rewhead", "conhead"):
        assert (get(f"{part}.units"), get(f"{part}.layers")) == (m.units, m.head_layers), part
    assert get("enc.simple.depth") == get("dec.simple.depth") == m.cnn_depth
    # the learning rate and warm-up upstream's flags leave at its default are algo=dreamerv3's, and changed alike
    cfg = compose_config(*overrides)
    assert (cfg.wm.lr, cfg.agent.actor_lr, cfg.agent.critic_lr, cfg.optim.warmup) == (4e-5, 4e-5, 4e-5, 1000)
    changed = parity.settings(env, lr=3e-4, warmup=100)
    cfg = compose_config(*[o for o in parity.rssm_overrides(changed, 0, tmp_path) if not o.startswith("hydra.")])
    assert (cfg.wm.lr, cfg.agent.actor_lr, cfg.agent.critic_lr, cfg.optim.warmup) == (3e-4, 3e-4, 3e-4, 100)


def fake_checkout(tmp_path):
    checkout = tmp_path / "dreamerv3"
    (checkout / "dreamerv3").mkdir(parents=True)
    (checkout / "dreamerv3" / "main.py").write_text("")
    return ["--official-dir", str(checkout), "--official-python", sys.executable]


def run_main(parity, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parity.main(argv)
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_dry_run_prints_the_command_a_new_a_continued_or_a_finished_run_needs(parity, tmp_path, capsys):
    root, official = tmp_path / "runs", fake_checkout(tmp_path)
    base = ["run", "--env", "dmc_walker_walk", "--seed", "1", "--root", str(root), "--dry-run"]
    code, out, _ = run_main(parity, [*base, "--impl", "official", *official, "--cpus", "1"], capsys)
    run_dir = (root / "dmc_walker_walk" / "official" / "seed_1").absolute()
    assert code == 0 and "a new run" in out
    command = out.splitlines()[1].split()
    assert command[:4] == ["MUJOCO_GL=egl", "taskset", "-c", "1"] and command[4] == sys.executable
    assert command[5].endswith("parity_official.py") and command[7] == "train"
    assert parse_official(command[8:])["--logdir"] == str(run_dir)
    (run_dir / "ckpt").mkdir(parents=True)
    assert "continuing it from its checkpoint" in run_main(parity, [*base, "--impl", "official", *official],
                                                           capsys)[1]
    (run_dir / parity.DONE).write_text("{}")
    code, out, _ = run_main(parity, [*base, "--impl", "official", *official], capsys)
    assert code == 0 and "is finished" in out and "nothing to do" in out and "MUJOCO_GL" not in out

    code, out, _ = run_main(parity, [*base, "--impl", "rssm"], capsys)
    rssm_dir = (root / "dmc_walker_walk" / "rssm" / "seed_1").absolute()
    command = out.splitlines()[1].split()
    assert code == 0 and command[1].endswith("rssm-train") and f"hydra.run.dir={rssm_dir}" in command
    assert "env.task=walker_walk" in command and "seed=1" in command
    rssm_dir.mkdir(parents=True)
    (rssm_dir / "checkpoint.pt").write_bytes(b"")
    command = run_main(parity, [*base, "--impl", "rssm"], capsys)[1].splitlines()[1].split()
    assert command[0] == "MUJOCO_GL=egl" and command[2:] == [f"resume={rssm_dir}"]  # the run's own config alone
    (rssm_dir / "model.pt").write_bytes(b"")
    assert "is finished" in run_main(parity, [*base, "--impl", "rssm"], capsys)[1]
    assert not (root / "dmc_walker_walk" / "rssm" / "seed_1.log").exists()  # a dry run writes nothing


def test_a_run_tees_its_output_to_its_log_and_an_ended_official_run_is_finished(parity, tmp_path, capsys):
    official = fake_checkout(tmp_path)
    python = tmp_path / "python"  # stands in for the official environment's python: prints what it was given
    python.write_text("#!/bin/sh\necho upstream ran with \"$@\"\n")
    python.chmod(0o755)
    official[3] = str(python)
    argv = ["run", "--impl", "official", "--env", "gym_CartPole-v1", "--seed", "2", "--root", str(tmp_path / "r"),
            "--steps", "5000", *official]
    code, out, err = run_main(parity, argv, capsys)
    run_dir = tmp_path / "r" / "gym_CartPole-v1" / "official" / "seed_2"
    log = run_dir.with_suffix(".log").read_text()
    assert code == 0 and "upstream ran with" in out and "upstream ran with" in log, err
    assert "--run.steps 5000" in log and "--task gym_CartPole-v1" in log and "MUJOCO_GL" not in out
    assert json.loads((run_dir / parity.DONE).read_text())["command"][0] == str(python)
    assert "is finished" in run_main(parity, argv, capsys)[1]


def test_user_errors_are_one_line_and_exit_2(parity, scores, tmp_path, capsys):
    official = fake_checkout(tmp_path)
    base = ["run", "--seed", "0", "--root", str(tmp_path), "--dry-run"]
    cases = [([*base, "--impl", "rssm", "--env", "atari_pong"], "unknown env 'atari_pong'"),
             ([*base, "--impl", "rssm", "--env", "gym_Acrobot-v1"], "unknown env 'gym_Acrobot-v1'"),
             ([*base, "--impl", "official", "--env", "dmc_walker_walk"], "needs --official-dir"),
             ([*base, "--impl", "official", "--env", "dmc_walker_walk", "--official-dir", str(tmp_path / "none"),
               "--official-python", sys.executable], "is not a checkout of danijar/dreamerv3"),
             ([*base, "--impl", "official", "--env", "dmc_walker_walk", *official[:2], "--official-python",
               str(tmp_path / "python")], "is not an executable file"),
             (["scores", "--root", str(tmp_path / "empty"), "--env", "dmc_walker_walk"], "no runs found"),
             (["compare", "--root", str(tmp_path / "empty"), "--env", "gym_CartPole-v1"], "no runs found")]
    for argv, message in cases:
        code, _, err = run_main(parity, argv, capsys)
        assert code == 2 and err.startswith("parity.py: error: ") and message in err and err.count("\n") == 1, err


def fake_runs(parity, root, env, returns_per_impl, every, points):
    """Finished runs of both implementations, each ending `points` windows with one wave of 2 episodes."""
    for impl, seeds in returns_per_impl.items():
        for seed, level in enumerate(seeds):
            run = root / env / impl / f"seed_{seed}"
            if impl == "official":
                # waves end at transitions k * (every + 2): 2 resets per wave of the 2 envs
                upstream_scores(run / "scores.jsonl", [(k * (every + 2) - 1 + j, level) for k in range(1, points + 1)
                                                       for j in range(2)], repeat=1)
                (run / "config.yaml").write_text(f"task: {env}\nrun: {{envs: 2}}\n")
                (run / parity.DONE).write_text("{}")
            else:
                write_jsonl(run / "metrics.jsonl", [{"step": k * every, "episode/return": level}
                                                    for k in range(1, points + 1)])
                (run / "model.pt").write_bytes(b"")


def test_scores_and_compare_read_both_implementations(parity, tmp_path, capsys):
    root, out_dir, env = tmp_path / "runs", tmp_path / "out", "gym_CartPole-v1"
    fake_runs(parity, root, env, {"official": [100.0, 110.0, 120.0], "rssm": [105.0, 115.0, 125.0]}, every=1000,
              points=4)
    code, out, err = run_main(parity, ["scores", "--root", str(root), "--env", env, "--every", "1000",
                                       "--out-dir", str(out_dir)], capsys)
    assert code == 0, err
    assert read_csv(out_dir / env / "official" / "seed_2.csv") == {1000: 120.0, 2000: 120.0, 3000: 120.0,
                                                                    4000: 120.0}
    assert read_csv(out_dir / env / "rssm" / "seed_0.csv") == {1000: 105.0, 2000: 105.0, 3000: 105.0, 4000: 105.0}
    assert not list(root.rglob("*.csv"))  # ROOT is left as it was
    code, out, err = run_main(parity, ["compare", "--root", str(root), "--env", env, "--every", "1000",
                                       "--out-dir", str(out_dir)], capsys)
    assert code == 0, err
    result = json.loads((out_dir / env / "compare.json").read_text())
    assert result["mean"] == {"official": 110.0, "rssm": 115.0} and result["difference"] == pytest.approx(5.0)
    low, high = result["ci95"]
    assert low < 0 < high and result["verdict"].startswith("within the official's spread")
    assert result["final_return"]["rssm"] == {"0": 105.0, "1": 115.0, "2": 125.0} and result["up_to_step"] == 4000
    assert "within the official's spread" in out
    assert "| rssm | 2 | 125.0 |" in (out_dir / env / "compare.md").read_text()


def test_compare_says_when_rssm_is_below_the_official_spread(parity, tmp_path, capsys):
    root, env = tmp_path / "runs", "dmc_cartpole_swingup"
    every = 16 * 500
    fake_runs(parity, root, env, {"official": [800.0, 810.0], "rssm": [100.0, 120.0]}, every=every, points=5)
    # A third rssm seed still running, at its second point: every seed is compared at that step.
    write_jsonl(root / env / "rssm" / "seed_2" / "metrics.jsonl", [{"step": k * every, "episode/return": 50.0}
                                                                    for k in (1, 2)])
    code, out, err = run_main(parity, ["compare", "--root", str(root), "--env", env, "--last", "2"], capsys)
    assert code == 0, err
    result = json.loads((root / env / "compare.json").read_text())
    assert result["every"] == every and result["up_to_step"] == 2 * every
    assert result["mean"] == {"official": 805.0, "rssm": pytest.approx(90.0)}
    assert result["ci95"][1] < 0 and result["verdict"].startswith("below") and "below" in out
    # --seeds leaves the one still running out: the others are compared at their end
    code, out, err = run_main(parity, ["compare", "--root", str(root), "--env", env, "--last", "2", "--seeds", "0",
                                       "1"], capsys)
    result = json.loads((root / env / "compare.json").read_text())
    assert code == 0 and result["up_to_step"] == 5 * every and list(result["final_return"]["rssm"]) == ["0", "1"]


def test_compare_of_a_world_model_term_says_which_side_is_higher(parity, tmp_path, capsys):
    root, env = tmp_path / "runs", "gym_CartPole-v1"
    for impl, key, values in (("official", "train/dyn_ent", [40.0, 41.0]), ("rssm", "wm/prior_entropy", [36.0, 37.0])):
        for seed, value in enumerate(values):
            run = root / env / impl / f"seed_{seed}"
            write_jsonl(run / "metrics.jsonl", [{"step": k * 1000, key: value} for k in (1, 2, 3)])
            (run / ("model.pt" if impl == "rssm" else parity.DONE)).write_text("{}")
    code, out, err = run_main(parity, ["compare", "--root", str(root), "--env", env, "--every", "1000",
                                       "--metric", "prior_entropy"], capsys)
    assert code == 0, err
    result = json.loads((root / env / "compare.prior_entropy.json").read_text())
    assert result["mean"] == {"official": 40.5, "rssm": 36.5} and result["verdict"].startswith("lower in rssm")
    assert result["final"]["rssm"] == {"0": 36.0, "1": 37.0} and not (root / env / "compare.json").exists()
    assert "prior entropy" in out and "| rssm | 1 | 37 |" in (root / env / "compare.prior_entropy.md").read_text()


def test_compare_decides_nothing_from_one_seed_of_an_implementation(parity, tmp_path, capsys):
    root, env = tmp_path / "runs", "dmc_cartpole_swingup"
    fake_runs(parity, root, env, {"official": [800.0], "rssm": [100.0, 120.0]}, every=16 * 500, points=3)
    code, out, err = run_main(parity, ["compare", "--root", str(root), "--env", env], capsys)
    assert code == 0, err
    assert json.loads((root / env / "compare.json").read_text())["verdict"].startswith("not decided")


def test_plot_draws_both_implementations(parity, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    root, env = tmp_path / "runs", "gym_Pendulum-v1"
    fake_runs(parity, root, env, {"official": [-900.0, -800.0], "rssm": [-700.0]}, every=10_000, points=3)
    code, out, err = run_main(parity, ["plot", "--root", str(root), "--env", env, "--out", str(tmp_path / "p")],
                              capsys)
    assert code == 0, err
    assert (tmp_path / "p.png").stat().st_size > 1000 and (root / env / "rssm" / "seed_0.csv").is_file()

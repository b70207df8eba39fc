"""scripts/benchmark.py runs on the config's model and accounts for its FLOPs."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_benchmark_times_every_part_and_splits_its_flops(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "debug", "--part", "wm", "behavior", "agent", "act",
                           "--iters", "1", "--warmup", "0", "--flops", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    rows = {r["part"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"wm", "behavior", "agent", "act"}
    for part, r in rows.items():
        assert r["flops"] > 0 and r["ms"] > 0 and 0 < r["of_peak"], part
    for part in ("wm", "agent"):
        parts = rows[part]["forward_parts"]
        modules = {k: v for k, v in parts.items() if k != "imagination"}
        assert all(v >= 0 for v in modules.values()) and sum(modules.values()) < rows[part]["flops"], part
        assert parts["world_model.rssm"] > 0 and parts["world_model.reward"] > 0, part
    # The world model alone has no actor or critic; the whole update adds them, and imagination, part of them.
    assert "actor" not in rows["wm"]["forward_parts"] and rows["agent"]["forward_parts"]["actor"] > 0
    agent = rows["agent"]["forward_parts"]
    assert 0 < agent["imagination"] < sum(v for k, v in agent.items() if k != "imagination")
    assert rows["agent"]["flops"] > rows["wm"]["flops"] and rows["act"]["forward_parts"] == {}
    # The behaviour update alone: imagination, actor and critic, none of the world model's own losses.
    behavior = rows["behavior"]
    assert behavior["forward_parts"]["actor"] > 0 and "world_model.decoder" not in behavior["forward_parts"]
    assert rows["wm"]["flops"] < behavior["flops"] < rows["agent"]["flops"]
    assert "forward pass of the losses" in proc.stdout


def test_benchmark_alternates_two_configs_in_one_process(tmp_path):
    out = tmp_path / "alt.json"
    arms = ["agent.horizon=2", "agent.horizon=2 precision=bf16 threads=2"]
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "debug", "--part", "wm", "--alternate", *arms,
                           "--iters", "1", "--warmup", "0", "--rounds", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    (r,) = json.loads(out.read_text())["alternate"]
    assert r["arms"] == arms and r["threads"] == [1, 2]  # --threads 1 unless an arm sets its own
    assert [len(times) for times in r["ms"]] == [3, 3] and all(t > 0 for times in r["ms"] for t in times)
    ratios = sorted(a / b for a, b in zip(*r["ms"], strict=True))
    assert r["speedup"] == ratios[1] and r["speedup_range"] == [ratios[0], ratios[-1]]
    assert "'agent.horizon=2 precision=bf16 threads=2'" in proc.stdout and "x as fast" in proc.stdout

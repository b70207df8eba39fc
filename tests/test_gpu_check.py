"""scripts/gpu_check.py, the device check, runs its steps on a CPU and writes its table."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_gpu_check_writes_its_table_on_a_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--model", "debug", "--obs", "vector",
                           "--iters", "1", "--warmup", "0", "--budget", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    timed = {(r["part"], r["precision"], r["compiled"], r["setting"]) for r in result["rows"]}
    assert timed == {(part, precision, False, None) for part in ("wm", "behavior", "agent")
                     for precision in ("fp32", "bf16")} | {("agent", "fp32", False, "tf32")}
    assert all(r["ms"] > 0 and r["flops"] > 0 for r in result["rows"])
    table = (tmp_path / "gpu_check.txt").read_text()
    assert table.count("left out: the check had run") == 5  # the compiled rows, past a budget of 0 s
    assert result["failed"] == []
    assert set(result["host_syncs"]) == {"dreamerv3_cpu", "dreamerv3_2023"}
    assert set(result["matmul_flops"]) == {"float32", "tf32", "bfloat16"}

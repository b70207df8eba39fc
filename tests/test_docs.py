"""The documentation site builds without a warning, and its configuration reference is generated from the schema."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="mkdocs is not installed (the docs extra: pip install -e '.[docs]')")
pytest.importorskip("material", reason="mkdocs-material is not installed (the docs extra)")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (the docs extra)")


def _row(page: str, key: str) -> str:
    """The text of the configuration reference's table row for `key`."""
    m = re.search(r"<tr>\s*<td><code>" + re.escape(key) + r"</code></td>(.*?)</tr>", page, re.S)
    assert m, f"no row for {key}"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", m.group(1))).split())


def test_docs_build_strict_with_generated_config_reference(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    page = (site / "reference" / "configuration" / "index.html").read_text()
    # the schema's values and its comments (rssm/config.py), not text written into the docs
    assert _row(page, "trainer.steps") == "int 20000 env steps (agent steps, after action repeat)"
    assert _row(page, "env.step_timeout") == ("float | None null seconds a reset or step of the envs may take; "
                                              "longer is an env failure")
    assert "(agent steps, after action repeat)" in page
    # a comment above a field, not after it, is its description too
    assert "hidden layers of the encoder, decoder, actor and critic MLPs" in _row(page, "model.mlp_layers")
    # the config groups and their options, from configs/
    assert re.search(r"<code>env</code></td>\s*<td><code>pong</code>", page)
    # README sections included by their markers, with their figures where the site serves them
    bench = (site / "benchmarks" / "index.html").read_text()
    assert 'src="../cartpole_v3_eval_return.png"' in bench and (site / "cartpole_v3_eval_return.png").exists()
    assert "--8&lt;--" not in bench and "[start:" not in bench
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ["rssm.api.load", "rssm.api.Policy.predict", "rssm.imagination.EnvModel.imagine",
                 "rssm.dream_env.DreamEnv", "rssm.dream_env.DreamVecEnv", "rssm.sb3.DreamVecEnv"]:
        assert f'id="{name}"' in api, name

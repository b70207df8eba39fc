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
    # pages link their figures by relative paths (as GitHub shows them); the README's set-up commands, included
    bench = (site / "benchmarks" / "learning" / "index.html").read_text()
    assert 'src="../../figures/cartpole_v3_eval_return.png"' in bench
    assert (site / "figures" / "cartpole_v3_eval_return.png").exists()
    start = html.unescape(re.sub(r"<[^>]+>", "", (site / "getting-started" / "index.html").read_text()))
    assert 'pip install -e ".[test]" && ruff check . && pytest -q -n auto' in start
    assert "--8<--" not in start and "[start:" not in start
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ["rssm.launch.train", "rssm.launch.compose", "rssm.api.load", "rssm.api.Policy.predict",
                 "rssm.imagination.EnvModel.imagine", "rssm.dream_env.DreamEnv", "rssm.dream_env.DreamVecEnv",
                 "rssm.sb3.DreamVecEnv"]:
        assert f'id="{name}"' in api, name


def test_the_readme_holds_two_set_up_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    setup = [b.strip() for b in blocks if "pip install" in b]
    assert setup == ["pip install . && rssm-train", 'pip install -e ".[test]" && ruff check . && pytest -q -n auto']
    assert len(re.findall(r"\bpip install\b", readme)) == 2  # no other install line to choose from
    assert setup[1] in (ROOT / ".ci" / "run").read_text().splitlines()
    # the Getting started page shows the README's own commands (pymdownx.snippets), so they cannot drift
    assert '--8<-- "README.md:setup"' in (ROOT / "docs" / "getting-started.md").read_text()
    marked = readme.split("<!-- --8<-- [start:setup] -->", 1)[1].split("<!-- --8<-- [end:setup] -->", 1)[0]
    assert all(command in marked for command in setup)
    assert readme.count("--8<--") == 2  # the set-up markers alone: every other text lives in docs/


def test_the_readmes_links_reach_pages_figures_and_headings():
    from markdown.extensions.toc import slugify

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    for link in links:
        if link.startswith("http"):
            continue
        path, _, anchor = link.partition("#")
        assert (ROOT / path).exists(), link
        if anchor:  # GitHub's and mkdocs' heading ids agree for these headings: lower case, words joined by '-'
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.M)
            assert anchor in {slugify(h.replace("`", ""), "-") for h in headings}, link

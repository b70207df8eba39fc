"""mkdocs hook: the configuration reference, generated at build time from the schema (rssm/config.py) and the
config groups (configs/), so that it cannot drift from them.

Each field's description is its trailing `# comment` in the schema's source, or, where it has none, the comment
lines right above it, read by `rssm.help.field_docs` as `rssm-train --help` reads them; a nested dataclass is a group
of its own, with its class docstring as the group's text.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

from rssm.help import field_docs  # the comment parser of `rssm-train --help`: the two pages cannot disagree

PAGE = "reference/configuration.md"
ROOT = Path(__file__).resolve().parents[2]


def _value(value: Any) -> str:
    """A default as it is written in YAML and on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    # Python-Markdown's tables keep a pipe inside a code span literal: no escape there
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def group_tables(cls: type, prefix: str = "", title: str = "Top level") -> list[str]:
    """Markdown of one group's table, then its nested groups'."""
    docs = field_docs(cls)
    rows, nested = [], []
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            nested.append((type(default), f"{prefix}{f.name}."))
            continue
        kind, text = docs.get(f.name, (str(f.type), ""))
        value = "(required)" if default is MISSING else _code(_value(default))
        rows.append(f"| {_code(prefix + f.name)} | {_code(kind)} | {value} | {_cell(text)} |")
    out = [f"## {title}", ""]
    doc = inspect.getdoc(cls)
    if doc and prefix:
        out += [doc.replace("\n", " "), ""]
    out += ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]
    for sub, sub_prefix in nested:
        out += group_tables(sub, sub_prefix, f"`{sub_prefix.rstrip('.')}`")
    return out


def _first_comment(path: Path) -> str:
    """The first comment line of a config file that is not hydra's `# @package` directive."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("#").strip()
        if line.strip() and not line.startswith("#"):
            break
    return ""


def config_groups(configs: Path) -> list[str]:
    """Markdown of the config groups under configs/ and their options, each with its file's first comment."""
    out = ["## Config groups", "",
           "Pick an option with `GROUP=OPTION` on the command line (`rssm-train env=pendulum model=s`). The defaults "
           "are set in `configs/config.yaml`.", "", "| group | option | what it is |", "|---|---|---|"]
    for group in sorted(p for p in configs.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if group.name == "hydra":
            continue
        for option in sorted(group.glob("*.yaml")):
            out.append(f"| `{group.name}` | `{option.stem}` | {_cell(_first_comment(option))} |")
    return [*out, ""]


def render() -> str:
    from rssm.config import Config

    header = ["# Configuration reference", "",
              "Generated when the site is built from the typed schema, `rssm/config.py` (each field's comment there "
              "is its description), and from the config groups in `configs/`. Set any key on the command line with "
              "`KEY=VALUE` (`rssm-train trainer.steps=50000 env.step_timeout=30`).", ""]
    return "\n".join(header + config_groups(ROOT / "configs") + group_tables(Config)) + "\n"


def on_files(files, config):
    files.append(File.generated(config, PAGE, content=render()))
    return files

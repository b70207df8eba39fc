"""`rssm-train --help`: the config groups with their options (as hydra finds them on its config search path), the
keys users change most with what each one does, three examples, and where every key is described.

What a key does is written once, as its comment in the schema (rssm/config.py); `field_docs` reads it from
there, for this page and for the docs site's configuration reference (docs/hooks/config_reference.py). Hydra prints
the page through `hydra.help.template` (configs/config.yaml), which the resolver `rssm_help` (`help_page`) fills;
`rssm-train --hydra-help` stays hydra's own.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import tokenize
from dataclasses import fields, is_dataclass
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from rssm.config import Config

WIDTH = 118  # the page's lines, at most
# What each of rssm's config groups picks (a group of the user's own is listed without one).
GROUPS = {
    "algo": "which DreamerV3: today's, today's for CPU budgets (larger learning rates), or its 2023 release",
    "agent": "actor-critic in imagination, or a world model alone (random policy, or offline data)",
    "env": "an env with the settings chosen for it (model size, train ratio, ...); gym: any env.id",
    "model": "size of the networks: GRU state, hidden units, MLP layers, latents",
    "logger": "where metrics go; several at once: logger=[tensorboard,jsonl]",
    "experiment": "presets across groups: debug (a run of seconds), ENV_2023 (DreamerV3 2023's per-env settings)",
}
# The keys users change most, in the order shown; what each does comes from the schema.
KEYS = ("env.id", "env.task", "env.game", "env.pixels", "env.num_envs", "trainer.steps", "trainer.train_ratio",
        "trainer.prefill", "trainer.eval_every", "trainer.eval_video_every", "trainer.stop_return",
        "trainer.checkpoint_every", "trainer.progress", "replay.capacity", "model.deter", "model.units", "device",
        "threads", "precision", "compile", "resume", "allow_changes")
EXAMPLES = (
    "rssm-train env=pendulum trainer.steps=50000 seed=3",
    "rssm-train env.id=Acrobot-v1 model=s device=cuda",
    "rssm-train resume=outputs/2026-01-31/12-00-00 trainer.steps=100000 'allow_changes=[trainer.steps]'",
)
REFERENCE = "the docs site's page \"Configuration reference\" (mkdocs serve), made from the schema: rssm/config.py"
# hydra's shell completion, as its --hydra-help and its docs install it (zsh runs bash's)
COMPLETION = ('Tab completion: add eval "$(rssm-train -sc install=bash)" to ~/.bashrc (zsh: to ~/.zshrc, after',
              "autoload -Uz bashcompinit && bashcompinit); fish: rssm-train -sc install=fish | source, in config.fish.")


def field_docs(schema: type) -> dict[str, tuple[str, str]]:
    """{field: (its type as written, the comment that documents it)} of one dataclass of the schema, read from its
    source: the trailing comment of the field's line, or else the comment lines right above it ("" for none). The
    configuration reference of the docs site (docs/hooks/config_reference.py) reads the schema through this too."""
    lines, _ = inspect.getsourcelines(schema)
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(iter(lines).__next__) if t.type == tokenize.COMMENT}
    own_line = {n for n in comments if lines[n - 1].lstrip().startswith("#")}
    found = {}
    for node in ast.parse(textwrap.dedent("".join(lines))).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in own_line:
            above, line = [comments[line], *above], line - 1
        end = node.end_lineno
        text = comments[end] if end in comments and end not in own_line else " ".join(above)
        found[node.target.id] = (ast.unparse(node.annotation), text)
    return found


def key_comments(schema: type = Config, prefix: str = "") -> dict[str, str]:
    """Every key of `schema` (dotted, nested dataclasses included) with the comment that documents it in its source
    (`field_docs`)."""
    found = field_docs(schema)
    out = {}
    for f in fields(schema):
        sub = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(sub):
            out.update(key_comments(type(sub), f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = found.get(f.name, ("", ""))[1]
    return out


def first_clause(text: str, width: int = WIDTH) -> str:
    """A comment's first clause (up to its first '; ' or sentence end), without its parentheses where it is longer
    than `width`."""
    text = re.split(r"; |(?<!e\.g)(?<!i\.e)\. ", text, maxsplit=1)[0].rstrip(".")
    return re.sub(r" \([^()]*\)", "", text) if len(text) > width else text


def help_page(_root_: DictConfig) -> str:
    """The page for the composed config `_root_` (hydra's node included): its current choices and values shown. As
    a `string.Template` for hydra: a '$' is written '$$'."""
    choices = _root_.hydra.runtime.choices if "hydra" in _root_ else {}
    lines = ["rssm-train: train a Dreamer-style world model (DreamerV3) and an agent in it on a gymnasium env.",
             "Usage: rssm-train [GROUP=OPTION ...] [KEY=VALUE ...] (hydra overrides; -m sweeps comma-separated values)",
             "", "Config groups, GROUP=OPTION (* marks the option this command line picks):"]
    groups = _groups()
    column = len(max(groups, key=len))
    for group, options in groups.items():
        marked = ", ".join(f"*{o}" if o == choices.get(group) else o for o in options)
        if group in GROUPS:
            lines += _wrapped(group, GROUPS[group], column) + _wrapped("", marked, column)
        else:
            lines += _wrapped(group, marked, column)
    lines += ["", "Keys users change most, KEY=VALUE (the value this command line gives):"]
    comments, heads = key_comments(), [f"{k}={_value(OmegaConf.select(_root_, k))}" for k in KEYS]
    column = len(max(heads, key=len))
    for key, head in zip(KEYS, heads, strict=True):
        lines += _wrapped(head, first_clause(comments[key], WIDTH - column - 4), column)
    lines += ["", "Examples:", *(f"  {e}" for e in EXAMPLES), "",
              "The whole config: rssm-train --cfg job; hydra's flags (--multirun, --config-dir, ...): --hydra-help.",
              f"Every key: {REFERENCE}.", *COMPLETION, ""]
    return "\n".join(lines).replace("$", "$$")


def _groups() -> dict[str, list[str]]:
    """The app's config groups on hydra's search path (rssm's configs/, a --config-dir's, hydra.searchpath's) and
    the options of each."""
    loader = GlobalHydra.instance().config_loader()
    return {g: sorted(loader.get_group_options(g)) for g in sorted(loader.list_groups("")) if g != "hydra"}


def _wrapped(name: str, text: str, column: int) -> list[str]:
    """`name` and `text` in two columns (the first `column` characters wide), `text` wrapped within the page."""
    head = f"  {name.ljust(column)}  "
    return textwrap.wrap(text, WIDTH, initial_indent=head, subsequent_indent=" " * len(head))


def _value(value: Any) -> str:
    """A config value as an override writes it."""
    if isinstance(value, ListConfig):
        return f"[{','.join(_value(v) for v in value)}]"
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return str(value)

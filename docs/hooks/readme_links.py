"""mkdocs hook: README sections included into pages (pymdownx.snippets) link as the README does, relative to the
repository root and to its own headings. A Markdown preprocessor that runs after snippets rewrites them:

- a figure `](docs/x.png)` to `](/x.png)`, which mkdocs resolves against the docs folder
  (`validation.links.absolute_links: relative_to_docs`);
- a heading link `](#anchor)` to the page that includes that heading, `](/guides/x.md#anchor)`, where a page
  includes it (else it stays, and mkdocs names it at INFO level).
"""

from __future__ import annotations

import re
from pathlib import Path

from markdown import Extension
from markdown.extensions.toc import slugify
from markdown.preprocessors import Preprocessor

_FIGURE = re.compile(r"\]\(docs/")
_ANCHOR = re.compile(r"\]\(#([^)\s]+)\)")
_INCLUDE = re.compile(r'^--8<-- "README\.md:([\w-]+)"\s*$', re.M)
_MARKER = re.compile(r"<!-- --8<-- \[(start|end):([\w-]+)\] -->")


def anchor_pages(readme: Path, docs: Path) -> dict[str, str]:
    """{README heading's anchor: the docs page (relative to docs/) whose included sections hold it}."""
    page_of = {name: page.relative_to(docs).as_posix()
               for page in docs.rglob("*.md") for name in _INCLUDE.findall(page.read_text())}
    out, open_ = {}, []
    for line in readme.read_text().splitlines():
        marker = _MARKER.fullmatch(line.strip())
        if marker:
            kind, name = marker.groups()
            open_ = [*open_, name] if kind == "start" else [n for n in open_ if n != name]
        elif line.startswith("#") and any(n in page_of for n in open_):
            heading = line.lstrip("#").strip().replace("`", "")
            out[slugify(heading, "-")] = page_of[next(n for n in open_ if n in page_of)]
    return out


class _ReadmeLinks(Preprocessor):
    def __init__(self, md, anchors: dict[str, str]):
        super().__init__(md)
        self.anchors = anchors

    def _anchor(self, m: re.Match) -> str:
        page = self.anchors.get(m.group(1))
        return f"](/{page}#{m.group(1)})" if page else m.group(0)

    def run(self, lines: list[str]) -> list[str]:
        return [_ANCHOR.sub(self._anchor, _FIGURE.sub("](/", line)) for line in lines]


class ReadmeLinks(Extension):
    def __init__(self, anchors: dict[str, str]):
        super().__init__()
        self.anchors = anchors

    def extendMarkdown(self, md):  # noqa: N802 (Python-Markdown's name)
        # snippets runs at priority 32; lower runs after it
        md.preprocessors.register(_ReadmeLinks(md, self.anchors), "rssm_readme_links", 31)


def on_config(config):
    docs = Path(config.docs_dir)
    readme = Path(config.config_file_path).parent / "README.md"
    config.markdown_extensions.append(ReadmeLinks(anchor_pages(readme, docs)))
    return config

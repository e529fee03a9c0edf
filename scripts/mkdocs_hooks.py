"""MkDocs hook: pages under docs/ link to files elsewhere in the repository, as they are read on GitHub.

A page may link to ``../bundles/README.md`` (the bundle format) or ``../studies/coherence/results/coherence.md``
(a reference run). MkDocs only knows files under ``docs/``, so it would report such links as broken. This
hook adds every repository file that a page links to (and, for Markdown files, what they link to in turn)
to the site under ``repo/<path>``, and rewrites those links to point there. A link whose target does not
exist is left as written, so ``mkdocs build --strict`` still fails on it.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

#: The repository root (this file is scripts/mkdocs_hooks.py).
REPO = Path(__file__).resolve().parents[1]
#: Where repository files outside docs/ appear in the site.
PREFIX = "repo"
#: [text](target) and ![alt](target); the target has no spaces (the project's pages never use them).
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_FENCE = re.compile(r"^\s*(```|~~~)")

#: real path of a repository file outside docs/ -> its src_uri in the site
_added: dict[Path, str] = {}


def _relative_targets(markdown: str):
    """Yield (match, url, fragment) for relative links outside code fences."""
    fenced = False
    offset = 0
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            for m in _LINK.finditer(line):
                url = m.group(2)
                if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url) or url.startswith(("#", "/")):
                    continue
                path, _, frag = url.partition("#")
                yield offset + m.start(2), offset + m.end(2), path, frag
        offset += len(line)


def _resolve(source: Path, path: str) -> Path | None:
    """The repository file a link from ``source`` names, if it exists (a folder: its README.md)."""
    target = (source.parent / path).resolve()
    if target.is_dir():
        target = target / "README.md"
    if not target.is_file() or REPO not in target.parents:
        return None
    return target


def on_files(files: Files, config) -> Files:
    docs_dir = Path(config["docs_dir"]).resolve()
    _added.clear()
    queue = [Path(f.abs_src_path) for f in files.documentation_pages()]
    while queue:
        source = queue.pop()
        for _, _, path, _ in _relative_targets(source.read_text(encoding="utf-8")):
            target = _resolve(source, path)
            if target is None or docs_dir in target.parents or target in _added:
                continue
            src_uri = f"{PREFIX}/{target.relative_to(REPO).as_posix()}"
            _added[target] = src_uri
            files.append(File.generated(config, src_uri, abs_src_path=str(target)))
            if target.suffix == ".md":
                queue.append(target)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    source = Path(page.file.abs_src_path).resolve()
    here = posixpath.dirname(page.file.src_uri)
    pieces, last = [], 0
    for start, end, path, frag in _relative_targets(markdown):
        target = _resolve(source, path)
        if target is None:
            continue  # MkDocs reports it (strict: an error), or it is a page MkDocs resolves itself
        if target in _added:
            uri = _added[target]
        elif docs_dir in target.parents and page.file.src_uri.startswith(PREFIX + "/"):
            uri = target.relative_to(docs_dir).as_posix()  # a repository file linking back into docs/
        else:
            continue
        new = posixpath.relpath(uri, here or ".") + (f"#{frag}" if frag else "")
        pieces += [markdown[last:start], new]
        last = end
    return "".join(pieces) + markdown[last:] if pieces else markdown

"""Every relative link in README.md and docs/*.md points to a file or folder that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Inline links and images, [text](target) or ![alt](target); the target ends at a space or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def _pages() -> list[Path]:
    """The markdown a reader follows links through: the README and every docs page."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """The targets of text's relative links, without their #anchors, code spans left out."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = (m.group(1).split("#", 1)[0] for m in LINK.finditer(text))
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """page's relative links whose target is missing, as 'page -> target'."""
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = (page.parent / target).resolve()
        if path.exists():
            continue
        broken.append(f"{page.relative_to(root).as_posix()} -> {target}")
    return broken


def test_relative_links_resolve():
    pages = _pages()
    assert {"data.md", "tokenizer.md", "model.md", "training.md", "evaluation.md",
            "benchmarks.md", "README.md"} <= {p.name for p in pages[1:]}
    assert sum(len(relative_links(p.read_text(encoding="utf-8"))) for p in pages) > 20  # links are read
    assert [b for p in pages for b in broken_links(p)] == []


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [anchor](#here) [web](https://example.com) `[code](nope.md)`\n"
                    "```\n[fenced](nope.md)\n```\n[gone](missing.md#part) ![img](pics/none.png)\n")
    assert relative_links(page.read_text()) == ["page.md", "missing.md", "pics/none.png"]
    assert broken_links(page, tmp_path) == ["page.md -> missing.md", "page.md -> pics/none.png"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "chat.md").write_text("[up](../page.md) [away](../../elsewhere.md)")
    assert broken_links(tmp_path / "docs" / "chat.md", tmp_path) == ["docs/chat.md -> ../../elsewhere.md"]

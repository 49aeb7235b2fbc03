"""Code comments cite docs/algorithm.md by section anchor: every cited anchor exists there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/algorithm\.md(#[a-z-]+(?:, #[a-z-]+)*)")


def _anchors() -> set[str]:
    return set(re.findall(r'<a id="([a-z-]+)"></a>', (REPO / "docs" / "algorithm.md").read_text()))


def _citations() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for folder in ("fedbrb_fast", "kernels", "bench", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for match in CITATION.finditer(path.read_text()):
                out.setdefault(str(path.relative_to(REPO)), set()).update(re.findall(r"#([a-z-]+)", match.group(1)))
    return out


def test_every_cited_section_exists():
    anchors = _anchors()
    cited = _citations()
    assert cited, "no citations found: the pattern no longer matches how code cites the algorithm"
    missing = {path: sorted(names - anchors) for path, names in cited.items() if names - anchors}
    assert missing == {}


def test_no_outside_spec_is_cited():
    stale = [str(p.relative_to(REPO)) for folder in ("fedbrb_fast", "kernels") for p in (REPO / folder).rglob("*.py")
             if "SPEC §" in p.read_text()]
    assert stale == []

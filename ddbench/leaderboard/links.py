"""Where a method's label on a page links to: its docs page (else its card) and its paper.

Links are relative to a page in `leaderboards/` (the published layout); the paper link is the arXiv id a
card's citation names, when it names one.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

DOCS = Path(__file__).resolve().parents[2] / "docs"
ARXIV = re.compile(r"arXiv[ :]*(\d{4}\.\d{4,5})", re.IGNORECASE)


@lru_cache(maxsize=None)
def method_links(method: str, root: str = "../") -> tuple[tuple[str, str], ...]:
    """(("card", url), ("paper", url)?) for a registered method; () for an unknown one (an external set)."""
    from ..errors import DDBenchError
    from ..method import method_card

    try:
        card = method_card(method)
    except DDBenchError:
        return ()
    doc = f"{root}docs/{method}.md" if (DOCS / f"{method}.md").exists() else f"{root}methods/{method}.yaml"
    out = [("card", doc)]
    found = ARXIV.search(str(card.get("citation") or ""))
    if found:
        out.append(("paper", f"https://arxiv.org/abs/{found.group(1)}"))
    return tuple(out)


def links_for(labels: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """Column or row labels ("mgd3 v3 [g=0.1]") -> their method's links (the method is the first word)."""
    out = {}
    for label in labels:
        found = method_links(label.split(" ")[0])
        if found:
            out[label] = list(found)
    return out

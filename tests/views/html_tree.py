"""A view's HTML parsed into an element tree (standard library only), for structural assertions."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Iterator, Optional

VOID = {"meta", "br", "img", "input", "link", "hr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, Optional[str]]
    parent: Optional["Element"] = None
    children: list = field(default_factory=list)  # Elements and text strings

    def iter(self) -> Iterator["Element"]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: Optional[str] = None, attr: Optional[str] = None) -> list["Element"]:
        return [e for e in self.iter() if (tag is None or e.tag == tag) and (attr is None or attr in e.attrs)]

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, dict(attrs), self.current))

    def handle_endtag(self, tag):
        element = self.current
        while element is not self.root and element.tag != tag:
            element = element.parent
        assert element is not self.root, f"unbalanced </{tag}>"
        self.current = element.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(html: str) -> Element:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    assert builder.current is builder.root, f"unclosed <{builder.current.tag}>"
    return builder.root


def assert_self_contained(html: str) -> None:
    """No network reference of any kind, no module loader, exactly one (inline) script."""
    lowered = html.lower()
    for needle in ("http://", "https://", "src=", "href=", "xmlns", "require", "@import", "url(", "//cdn"):
        assert needle not in lowered, needle
    scripts = parse(html).find_all("script")
    assert len(scripts) == 1 and not scripts[0].attrs

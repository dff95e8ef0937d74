"""Static checks of the console's files (no browser, no Ray): one page, one ES module, one stylesheet, no inline
script, nothing that points outside the server, JSDoc on every exported function, and shipped as package data."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

from serve.console import CONSOLE_DIR, ConsoleArgs, console_page

PROJECT = Path(__file__).resolve().parents[2]
# The one absolute URL the files may hold: the SVG namespace, an identifier createElementNS needs, never fetched.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.script_text, self.in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.in_script = tag == "script"

    def handle_endtag(self, tag):
        self.in_script = False

    def handle_data(self, data):
        if self.in_script:
            self.script_text.append(data)


def parsed_page() -> Tags:
    tags = Tags()
    tags.feed((CONSOLE_DIR / "index.html").read_text())
    return tags


def test_one_page_one_module_one_stylesheet_no_inline_code():
    assert sorted(p.name for p in CONSOLE_DIR.iterdir()) == ["console.css", "console.js", "index.html"]
    tags = parsed_page()
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts == [{"type": "module", "src": "console.js"}], scripts
    assert "".join(tags.script_text).strip() == "", "inline script code"
    handlers = [(tag, name) for tag, attrs in tags.tags for name in attrs if name.startswith("on")]
    assert not handlers, f"inline event handlers: {handlers}"
    assert not any(str(attrs.get("href", "")).lower().startswith("javascript:") for _, attrs in tags.tags)
    # The icon is an empty data: URL, so the browser does not ask the server for /favicon.ico.
    assert [attrs["href"] for tag, attrs in tags.tags if tag == "link"] == ["data:,", "console.css"]
    assert not [tag for tag, _ in tags.tags if tag == "style"], "inline styles belong in console.css"


def test_nothing_points_outside_the_server():
    for name in ("index.html", "console.js", "console.css"):
        text = (CONSOLE_DIR / name).read_text().replace(SVG_NAMESPACE, "")
        # Any scheme-qualified or protocol-relative URL, a CSS import or url(), a JS import of another file.
        assert not re.search(r"[a-z][a-z0-9+.-]*://", text, re.I), name
        assert not re.search(r"""["'(]\s*//[^/\s]""", text), f"{name}: protocol-relative URL"
        assert not re.search(r"@import|url\(", text), f"{name}: CSS import or url()"
        assert not re.search(r"^\s*import\s|\bimport\(", text, re.M), f"{name}: module import"
    for tag, attrs in parsed_page().tags:
        for key in ("src", "href", "action"):
            value = attrs.get(key)
            assert value is None or value == "data:," or not re.match(r"([a-z]+:|//)", value), (tag, key, value)


def test_exported_functions_have_jsdoc():
    source = (CONSOLE_DIR / "console.js").read_text()
    exported = list(re.finditer(r"^export (?:async )?function (\w+)", source, re.M))
    assert len(exported) >= 10, [m.group(1) for m in exported]
    for match in exported:
        before = source[:match.start()].rstrip()
        assert before.endswith("*/") and before.rfind("/**") > before.rfind("\n}\n"), f"{match.group(1)} has no JSDoc"


def test_the_page_names_where_the_apis_are_and_ships_as_package_data():
    page = console_page(ConsoleArgs(api_prefix="/jobs-api", summarizer_prefix="/summarize-here"))
    assert '<meta name="deepsynth-api" content="/jobs-api">' in page
    assert '<meta name="deepsynth-summarizer" content="/summarize-here">' in page
    package_data = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "console/*" in package_data["deepsynth"]

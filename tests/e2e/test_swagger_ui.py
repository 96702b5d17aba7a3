"""Swagger UI at /docs, rendered by headless Chromium from the broker's own assets."""

import os
import signal
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fuseline_broker import __version__

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    # Chromium does not start as root without this flag.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, Chromium sends background requests for updates, sync and
    # field trials to outside hosts.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Chromium prints the DOM or takes the screenshot after 15 s of virtual
    # time, which pass quickly on an idle page, so the page's scripts, the
    # spec request and the render finish first.
    "--virtual-time-budget=15000",
)
CHROMIUM_TIMEOUT = 60.0
ASSETS_PATH = "/docs/assets/"
TAGS = ("repository", "worker", "workflow", "system")
OPERATIONS = (
    ("repository", "post", "/repository/register"),
    ("worker", "post", "/worker/register"),
    ("workflow", "get", "/workflow/step"),
    ("workflow", "post", "/workflow/step"),
    ("system", "get", "/status"),
)
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
LOAD_ERROR = "Failed to load API definition"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINDOW_SIZE = (1280, 2000)
# Chromium 156 encodes a blank page of WINDOW_SIZE in about 12 KB, Swagger UI's
# "Failed to load API definition" page in about 26 KB and the rendered /docs
# page in about 150 KB.
MIN_SCREENSHOT_BYTES = 50_000


@dataclass
class Element:
    """A start tag, its attributes and the text up to the next start tag."""

    tag: str
    attrs: dict
    text: str = ""
    classes: list = field(init=False)

    def __post_init__(self):
        self.classes = (self.attrs.get("class") or "").split()


class ElementCollector(HTMLParser):
    """Collect every element of a page in document order."""

    def __init__(self):
        super().__init__()
        self.elements = []

    def handle_starttag(self, tag, attrs):
        self.elements.append(Element(tag, dict(attrs)))

    def handle_data(self, data):
        if self.elements:
            self.elements[-1].text += data


def parse_elements(html):
    collector = ElementCollector()
    collector.feed(html)
    collector.close()
    return collector.elements


def run_chromium(tmp_path, *arguments):
    """Run headless Chromium with a fresh profile and return its stdout."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium package "
            "with `apt-get install -y chromium`"
        )
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    command = [
        str(CHROMIUM),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        *arguments,
    ]
    # A session of its own lets the test stop Chromium's helper processes too.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium timed out after {CHROMIUM_TIMEOUT}s: {command}")
    assert process.returncode == 0, (
        f"chromium failed with exit status {process.returncode}:\n{stderr[-3000:]}"
    )
    return stdout


@pytest.fixture
def docs_page(broker, tmp_path):
    """Return the elements of /docs after Chromium ran the page's scripts."""
    dom = run_chromium(tmp_path, "--dump-dom", f"{broker.url}/docs")
    (tmp_path / "docs.html").write_text(dom)
    assert dom, f"chromium printed no DOM for /docs, gunicorn log:\n{broker.log()}"
    return parse_elements(dom)


def rendered_operations(elements):
    """Return ``(tag, method, path)`` of every operation Swagger UI shows."""
    operations = []
    tag = method = None
    for element in elements:
        if "opblock-tag" in element.classes:
            tag = element.attrs.get("data-tag")
        elif "opblock" in element.classes:
            method = next(
                (m for m in HTTP_METHODS if f"opblock-{m}" in element.classes), None
            )
        elif "data-path" in element.attrs:
            operations.append((tag, method, element.attrs["data-path"]))
    return operations


def spec_operations(spec):
    """Return ``(first tag, method, path)`` of every operation in an OpenAPI spec."""
    operations = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                operations.append((operation["tags"][0], method, path))
    return operations


def test_docs_renders_operations(docs_page, wire, tmp_path):
    saved = tmp_path / "docs.html"
    text = "".join(element.text for element in docs_page)
    assert LOAD_ERROR not in text, f"page shows {LOAD_ERROR!r}, see {saved}"
    error_boxes = [e for e in docs_page if "errors-wrapper" in e.classes]
    assert error_boxes == [], f"page shows an error box, see {saved}"

    groups = [e.attrs.get("data-tag") for e in docs_page if "opblock-tag" in e.classes]
    for tag in TAGS:
        assert tag in groups, f"no {tag!r} operation group, see {saved}"

    rendered = rendered_operations(docs_page)
    for operation in OPERATIONS:
        assert operation in rendered, f"{operation} not rendered, see {saved}"

    _, spec = wire.call("GET", "/openapi.json")
    for operation in spec_operations(spec):
        assert operation in rendered, f"spec's {operation} not rendered, see {saved}"


def test_docs_uses_local_assets(docs_page):
    scripts = [
        e.attrs["src"] for e in docs_page if e.tag == "script" and "src" in e.attrs
    ]
    assert f"{ASSETS_PATH}swagger-ui-bundle.js" in scripts
    for src in scripts:
        assert src.startswith(ASSETS_PATH), f"script {src!r} not under {ASSETS_PATH}"

    stylesheets = [
        e.attrs["href"]
        for e in docs_page
        if e.tag == "link" and e.attrs.get("rel") == "stylesheet"
    ]
    assert f"{ASSETS_PATH}swagger-ui.css" in stylesheets
    for href in stylesheets:
        assert href.startswith(ASSETS_PATH), (
            f"stylesheet {href!r} not under {ASSETS_PATH}"
        )

    # The page's HTML contains only an empty container, so these elements exist
    # only if the bundle from /docs/assets/ ran and rendered the spec.
    roots = [e for e in docs_page if "swagger-ui" in e.classes]
    assert len(roots) == 1
    badges = [e.text.strip() for e in docs_page if "version" in e.classes]
    assert __version__ in badges
    assert "OAS 3.0" in badges


def test_docs_screenshot(broker, tmp_path):
    screenshot = tmp_path / "docs.png"
    run_chromium(
        tmp_path,
        "--window-size={},{}".format(*WINDOW_SIZE),
        f"--screenshot={screenshot}",
        f"{broker.url}/docs",
    )
    assert screenshot.exists(), f"chromium wrote no screenshot to {screenshot}"
    data = screenshot.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == WINDOW_SIZE
    assert len(data) > MIN_SCREENSHOT_BYTES, (
        f"{screenshot} has only {len(data)} bytes, so Swagger UI likely did not render"
    )

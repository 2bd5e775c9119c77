"""Every page of the built book, opened in a real browser (headless Debian chromium), as a reader sees it.

Per page: formulas are typeset by the MathJax the book serves itself (every `.math` element holds an
`mjx-container`, none a TeX error, and no raw `\\(`, `\\[`, `$$` or `\\command` is left in the page's
text outside code blocks, hidden text included: a code cell may print a literal `\\[`); every image
loaded; no console error; nothing fetched from another host; every internal link (and its `#fragment`)
resolves; the sidebar lists every page of `_toc.yml`; no code cell shows an empty output box. A
full-page screenshot goes to
`_build/screenshots/<page>.png`.

Run with `make test-book`: it builds the book from the notebooks' stored outputs (`make book-stored`),
installs chromium and chromedriver with apt-get if missing (`.ci/install-browser`), then runs this file.
The book is served over http from a thread, since file:// pages cannot load some of their scripts.
`make test-unit` (pytest tests) skips this file: tests/book/conftest.py.
"""

import base64
import functools
import http.server
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
# BOOK_HTML_DIR: test a book built elsewhere (`jupyter-book build --path-output DIR` writes DIR/_build/html).
HTML_DIR = Path(os.environ.get("BOOK_HTML_DIR", REPO_ROOT / "_build" / "html")).resolve()
SCREENSHOT_DIR = HTML_DIR.parent / "screenshots"
# The binary itself, not /usr/bin/chromium: that is Debian's wrapper script, which adds the flags of
# /etc/chromium.d (remote extensions, GPU rasterization) to ours.
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.access(p, os.X_OK)),
                "/usr/bin/chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--no-proxy-server", "--window-size=1280,1000", "--hide-scrollbars"]
MATHJAX_TIMEOUT_S = 30
IMAGE_TIMEOUT_S = 10
# Pages that Sphinx writes besides the book's own: not in _toc.yml, not tested here.
NOT_BOOK_PAGES = {"genindex.html", "search.html", "py-modindex.html", "index.html"}
NOT_BOOK_DIRS = {"_static", "_sources", "_images", "_downloads", "_panels_static"}


def toc_pages(toc_path: Path = REPO_ROOT / "_toc.yml") -> tuple[str, list[str], list[str]]:
    """(root, every page in reading order, the part captions) of a jb-book `_toc.yml`."""
    toc = yaml.safe_load(toc_path.read_text())
    root = str(Path(toc["root"]).with_suffix(""))
    pages, captions = [root], []

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(str(Path(entry["file"]).with_suffix("")))
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        if "caption" in part:
            captions.append(part["caption"])
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return root, pages, captions


ROOT_PAGE, PAGES, CAPTIONS = toc_pages()


def built_pages(html_dir: Path = HTML_DIR) -> list[str]:
    """The pages of the built book, as docnames: every .html but Sphinx's own (index, search, ...)."""
    pages = []
    for path in html_dir.rglob("*.html"):
        rel = path.relative_to(html_dir)
        if rel.parts[0] in NOT_BOOK_DIRS or rel.as_posix() in NOT_BOOK_PAGES:
            continue
        pages.append(rel.with_suffix("").as_posix())
    return sorted(pages)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="session")
def base_url():
    if not (HTML_DIR / f"{ROOT_PAGE}.html").is_file():
        pytest.fail(f"no built book in {HTML_DIR}: run `make book-stored` (or `make test-book`)")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(HTML_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} missing: run `make test-book` (it runs .ci/install-browser)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never look for a browser online
    os.environ.setdefault("SE_AVOID_STATS", "true")
    profile = tempfile.mkdtemp(prefix="book-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    browser.set_page_load_timeout(60)
    browser.set_script_timeout(MATHJAX_TIMEOUT_S + 5)
    yield browser
    browser.quit()
    shutil.rmtree(profile, ignore_errors=True)


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never via a proxy


@functools.lru_cache(maxsize=None)
def _fetch(url: str) -> tuple[int, str]:
    """(HTTP status, body as text) of one URL of the local server; cached across pages."""
    try:
        with _LOCAL.open(url, timeout=10) as response:
            body = response.read()
            return response.status, body.decode("utf-8", "replace") if url.endswith(".html") else ""
    except urllib.error.HTTPError as error:
        return error.code, ""


# Waits for the first typeset of MathJax 3 (startup.promise) on a page that loads it.
_WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const deadline = Date.now() + arguments[0] * 1000;
if (!document.querySelector('script[src*="mathjax" i]')) { done('no mathjax script'); return; }
(function poll() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done('typeset'), (e) => done('error: ' + e));
  } else if (Date.now() > deadline) {
    done('timeout: MathJax never started');
  } else {
    setTimeout(poll, 50);
  }
})();
"""

# The page's text outside code blocks and outside typeset formulas (code may hold a literal "\\[").
_TEXT_OUTSIDE_CODE = """
const skip = 'pre, code, kbd, samp, script, style, textarea, mjx-container, mjx-assistive-mml';
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
  acceptNode: (n) => n.parentElement.closest(skip) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
});
const parts = [];
while (walker.nextNode()) parts.push(walker.currentNode.nodeValue);
return parts.join('');
"""

# Formulas MathJax could not typeset: an <merror>, or an undefined macro, which MathJax's noundefined
# extension draws as red text (no error element, no console message).
_TEX_ERRORS = """
const bad = [];
for (const item of MathJax.startup.document.math) {
  const mml = MathJax.startup.toMML(item.root);
  const undefinedMacro = /<mtext[^>]*mathcolor="red"[^>]*>\\\\/;
  if (/<merror/.test(mml) || undefinedMacro.test(mml)) bad.push(item.math.slice(0, 80));
}
return bad;
"""

# Display formulas wider than the text column (the TeX source's start, for the report).
_WIDE_FORMULAS = """
return Array.from(document.querySelectorAll('div.math mjx-container'))
  .filter((e) => e.scrollWidth > e.clientWidth + 2)
  .map((e) => MathJax.startup.document.getMathItemsWithin(e)[0].math.trim().slice(0, 50));
"""

_WAIT_FOR_IMAGES = """
const done = arguments[arguments.length - 1];
const deadline = Date.now() + arguments[0] * 1000;
const images = Array.from(document.images);
images.forEach((img) => { img.loading = 'eager'; });
(function poll() {
  if (images.every((img) => img.complete) || Date.now() > deadline) {
    done(images.filter((img) => !(img.complete && img.naturalWidth > 0))
               .map((img) => img.getAttribute('src')));
  } else {
    setTimeout(poll, 50);
  }
})();
"""


def _save_screenshot(driver, path: Path) -> None:
    """The whole page, not only the window: the viewport is made as tall as the page for the shot.

    (Page.captureScreenshot with captureBeyondViewport drew the notebook pages shifted left, their wide
    code lines overflowing the cells and the sidebars gone; a tall viewport draws what a reader sees.)
    """
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    width = driver.execute_script("return window.innerWidth")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": int(size["height"]), "deviceScaleFactor": 1, "mobile": False})
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def test_built_pages_are_the_pages_of_the_toc():
    assert (HTML_DIR / f"{ROOT_PAGE}.html").is_file(), "no built book: run `make book-stored`"
    assert built_pages() == sorted(PAGES), "_build/html and _toc.yml list different pages"
    # index.html (written by jupyter-book) sends a reader to the root page
    assert f'url={ROOT_PAGE}.html' in (HTML_DIR / "index.html").read_text()


@pytest.mark.parametrize("page", PAGES)
def test_page_in_browser(page, driver, base_url):
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(urllib.parse.urljoin(base_url, f"{page}.html"))
    assert driver.execute_script("return document.body.innerText").strip(), f"{page} shows no text"
    problems = (_math_problems(driver, page)                   # (a)
                + _image_problems(driver)                      # (b)
                + _console_problems(driver, base_url)          # (c)
                + _remote_resources(driver, base_url)
                + _link_problems(driver, base_url)             # (d)
                + _sidebar_problems(driver)                    # (e)
                + _empty_outputs(driver))
    _save_screenshot(driver, SCREENSHOT_DIR / f"{page}.png")
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


def _math_problems(driver, page: str) -> list[str]:
    """Formulas typeset by MathJax, without TeX errors, and no raw TeX left in the text."""
    problems = []
    n_math = driver.execute_script("return document.querySelectorAll('.math').length")
    mathjax = driver.execute_async_script(_WAIT_FOR_MATHJAX, MATHJAX_TIMEOUT_S)
    if n_math and mathjax != "typeset":
        problems.append(f"{n_math} formulas but MathJax did not typeset them: {mathjax}")
    if mathjax == "typeset":
        if n_math and driver.execute_script("return document.querySelectorAll('mjx-container').length") == 0:
            problems.append("page has math but no mjx-container")
        untypeset = driver.execute_script(
            "return Array.from(document.querySelectorAll('.math'))"
            ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80))")
        if untypeset:
            problems.append(f"{len(untypeset)} of {n_math} .math elements not typeset: {untypeset[:3]}")
        errors = driver.execute_script(_TEX_ERRORS)
        if errors:
            problems.append(f"TeX errors or undefined macros in {len(errors)} formulas: {errors[:5]}")
        wide = driver.execute_script(_WIDE_FORMULAS)
        if wide:  # not a failure: the theme lets such a formula scroll sideways (cut off in the screenshot)
            warnings.warn(f"{page}: {len(wide)} display formulas wider than the text column: {wide}",
                          stacklevel=1)
    text = driver.execute_script(_TEXT_OUTSIDE_CODE)
    raw = [(m.start(), m.group()) for m in re.finditer(r"\\\(|\\\[|\$\$", text)][:1]
    raw += [(m.start(), m.group()) for m in re.finditer(r"\\[A-Za-z]{2,}", text)][:1]  # \frac, \mathbf...
    for at, what in raw:
        problems.append(f"raw TeX {what!r} in the text: ...{text[max(at - 60, 0):at + 60]!r}...")
    return problems


def _empty_outputs(driver) -> list[str]:
    """No code cell shows an empty output box (a glued value, a stream of whitespace, a blank display)."""
    empty = driver.execute_script(
        "return Array.from(document.querySelectorAll('.cell_output .output'))"
        ".filter(e => !e.innerText.trim() && !e.querySelector('img, svg, table, iframe'))"
        ".map(e => e.closest('.cell').querySelector('.cell_input')?.innerText.slice(0, 60) || '?')")
    return [f"{len(empty)} empty output areas, after cells starting: {empty[:3]}"] if empty else []


def _image_problems(driver) -> list[str]:
    broken = driver.execute_async_script(_WAIT_FOR_IMAGES, IMAGE_TIMEOUT_S)
    return [f"images not loaded: {broken}"] if broken else []


def _console_problems(driver, base_url: str) -> list[str]:
    severe = [entry["message"] for entry in driver.get_log("browser")
              if entry["level"] == "SEVERE" and not _is_favicon_guess(entry["message"], base_url)]
    return [f"console errors: {severe}"] if severe else []


def _remote_resources(driver, base_url: str) -> list[str]:
    """Nothing fetched or referenced from another host: the book must work offline."""
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".concat(Array.from(document.querySelectorAll('script[src], link[href][rel~=stylesheet],"
        " link[href][rel~=preload], link[href][rel~=icon], img[src], iframe[src]'))"
        ".map(e => e.src || e.href))")
    remote = sorted({r for r in resources if urllib.parse.urlsplit(r).scheme in ("http", "https")
                     and not r.startswith(base_url)})
    return [f"resources from other hosts: {remote}"] if remote else []


def _link_problems(driver, base_url: str) -> list[str]:
    """Every link to the book itself resolves: the file (HTTP 200) and its #fragment (an id in it)."""
    problems = []
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    for href in sorted({h for h in hrefs if h.startswith(base_url)}):
        target, _, fragment = href.partition("#")
        status, body = _fetch(target)
        if status != 200:
            problems.append(f"link {href[len(base_url):]}: HTTP {status}")
        elif fragment and body and not _has_anchor(body, urllib.parse.unquote(fragment)):
            problems.append(f"link {href[len(base_url):]}: no id {fragment!r} in {target[len(base_url):]}")
    return problems


def _sidebar_problems(driver) -> list[str]:
    """The sidebar lists every page of _toc.yml (the root too: home_page_in_toc) under its captions."""
    problems = []
    nav = driver.execute_script(
        "return Array.from(document.querySelectorAll('nav.bd-links a[href]')).map(a => a.href)")
    listed = {urllib.parse.urlsplit(h).path.lstrip("/").removesuffix(".html") for h in nav}
    missing = [p for p in PAGES if p not in listed]
    if missing:
        problems.append(f"sidebar lacks {missing}")
    captions = driver.execute_script(
        "return Array.from(document.querySelectorAll('nav.bd-links .caption-text')).map(e => e.textContent)")
    if captions != CAPTIONS:
        problems.append(f"sidebar captions {captions}, _toc.yml has {CAPTIONS}")
    brand = driver.execute_script("const a = document.querySelector('a.navbar-brand'); return a && a.href")
    if not brand or urllib.parse.urlsplit(brand).path.lstrip("/") != f"{ROOT_PAGE}.html":
        problems.append(f"navbar brand links to {brand}, not the root page {ROOT_PAGE}")
    return problems


def _is_favicon_guess(message: str, base_url: str) -> bool:
    """The 404 of /favicon.ico, which the browser asks for by itself when a page names no icon."""
    return message.startswith(f"{base_url}favicon.ico ") and "404" in message


def _has_anchor(html: str, fragment: str) -> bool:
    return any(f'{attr}="{fragment}"' in html for attr in ("id", "name"))

"""The documentation site: built from the code in strict mode (every internal link and image
resolves), served on localhost, and read in a real browser (headless Chromium, Debian's
chromium and chromium-driver, which .ci/run installs)."""

import json
import os
import pickle
import socket
import subprocess
import sys
import time

import pytest

import reszoo

from conftest import ROOT

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def site(tmp_path_factory, registered):
    """The site, built strictly from the cards of the models this session has built (the zoo
    takes minutes to build; the hook builds it itself when no cards are given). Once a session:
    the zoo's xdist group interleaves modules, and pytest ends a module's fixtures between them."""
    out = tmp_path_factory.mktemp("site")
    cards = out.parent / "cards.pickle"
    cards.write_bytes(pickle.dumps({name: reszoo.model_card(registered(name)) for name in reszoo.list_models()}))
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RESZOO_DOCS_CARDS": str(cards)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", out
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI"):
            pytest.fail(".ci/run installs chromium and chromium-driver; they are missing")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _open(browser, url, screenshots, name):
    browser.get(url)
    browser.execute_script("return document.readyState")
    deadline = time.time() + 20
    while browser.execute_script("return Array.from(document.images).some(i => !i.complete)") and time.time() < deadline:
        time.sleep(0.1)
    browser.save_screenshot(str(screenshots / f"{name}.png"))


def _images(browser):
    """Every image of the page with whether the browser decoded it."""
    return browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"screenshots in {folder}")
    return folder


def test_the_home_page_links_every_guide(site, browser, screenshots):
    url, _ = site
    _open(browser, url + "/", screenshots, "home")
    assert "reszoo" in browser.title
    text = browser.find_element("tag name", "article").text
    assert 'pip install -e ".[dev]" && python -m training.train' in text
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "article a")]
    for page in ("models/", "options/", "training/", "transfer/", "serving/", "distribution/", "benchmarks/",
                 "lab/", "api/", "reference/flags/"):
        assert any(link.endswith("/" + page) for link in links), page


def test_the_model_index_lists_every_registered_model_and_its_plots_load(site, browser, screenshots):
    url, _ = site
    _open(browser, url + "/models/", screenshots, "models")
    names = [cell.text for cell in browser.find_elements("css selector", "article table tbody tr td:first-child")]
    assert names == reszoo.list_models()
    images = _images(browser)
    assert len(images) == 2 and all(loaded for _, loaded in images), images


def test_a_model_card_shows_the_registry_s_numbers(site, browser, screenshots):
    url, _ = site
    _open(browser, url + "/models/resnet56/", screenshots, "resnet56")
    text = browser.find_element("tag name", "article").text
    card = reszoo.model_card("resnet56")
    assert f"trainable parameters {card['params']:,}" in text and "published C10 6.97%" in text
    assert 'model = reszoo.create_model("resnet56")' in text
    levels = [row.text.split()[0] for row in browser.find_elements("css selector", "article table")[1]
              .find_elements("css selector", "tbody tr")]
    assert levels == [f["level"] for f in card["features"]]


def test_a_lab_page_shows_its_figure_and_the_numbers_of_its_json(site, browser, screenshots):
    url, _ = site
    _open(browser, url + "/lab/continual/", screenshots, "lab_continual")
    assert all(loaded for _, loaded in _images(browser)) and len(_images(browser)) == 1
    numbers = json.loads((ROOT / "experiments" / "results" / "continual.json").read_text())
    text = browser.find_element("tag name", "article").text
    assert f"base_accuracy {numbers['base_accuracy']:.4g}" in text
    assert "python -m experiments.continual" in text

"""The catalog page in headless Chromium (selenium + /usr/bin/chromedriver): search, the view page's
lineage graph and histograms, every link resolving, hostile text shown as text, screenshots not blank."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from tests.catalog_site import HOSTILE, catalog_project, serve

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
DESKTOP, PHONE = (1366, 900), (390, 844)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("catalog-browser")
    with serve(catalog_project(base / "proj", tmp_path_factory.getbasetemp())) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    # CI installs Debian's chromium and chromium-driver (.ci/run); without them this test cannot run.
    assert Path(CHROMEDRIVER).exists() and shutil.which("chromium"), "install chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_search_finds_spend_30d_by_words_of_its_description(site: str, browser: webdriver.Chrome) -> None:
    browser.get(site + "/")
    box = browser.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
    box.send_keys("trailing spend", Keys.ENTER)
    WebDriverWait(browser, 10).until(lambda d: "/search" in d.current_url and d.find_elements(By.CSS_SELECTOR, ".hits"))
    assert browser.find_element(By.CSS_SELECTOR, "form.search input[name=q]").get_attribute("value") == "trailing spend"
    link = next(a for a in browser.find_elements(By.CSS_SELECTOR, ".hits a") if a.text == "spend_30d")
    link.click()
    WebDriverWait(browser, 10).until(lambda d: "/views/" in d.current_url)
    assert browser.current_url.startswith(site + "/views/customer_spend")
    assert browser.find_element(By.ID, "f-spend_30d").is_displayed()


def test_view_page_draws_lineage_and_histograms(site: str, browser: webdriver.Chrome) -> None:
    browser.get(site + "/views/customer_value")
    graph = browser.find_element(By.CSS_SELECTOR, "svg.lineage")
    labels = [t.get_attribute("textContent").lower() for t in graph.find_elements(By.CSS_SELECTOR, "text")]
    # source columns -> customer_spend -> customer_value -> the churn training set -> its model
    for expected in ("amount", "spend_30d", "avg_order_value_30d", "churn", "churn_model"):
        assert expected in labels
    assert graph.size["width"] > 400 and graph.size["height"] > 100
    histogram = browser.find_element(By.CSS_SELECTOR, "#f-avg_order_value_30d svg.hist")
    bars = histogram.find_elements(By.CSS_SELECTOR, "rect")
    assert len(bars) == 20 and any(float(b.get_attribute("height")) > 0 for b in bars)
    assert histogram.size["height"] > 20


def test_every_link_resolves(site: str, browser: webdriver.Chrome) -> None:
    seen: set[str] = set()
    pages = ["/", "/search?q=spend", "/views/customer_spend", "/views/customer_value", "/sets/churn",
             "/models/churn_model"]
    for start in pages:
        browser.get(site + start)
        anchors = browser.find_elements(By.CSS_SELECTOR, "a[href]")
        hrefs = {urldefrag(urljoin(browser.current_url, a.get_dom_attribute("href")))[0] for a in anchors}
        assert hrefs, start
        for href in sorted(hrefs - seen):
            seen.add(href)
            assert href.startswith(site), href  # nothing leaves the machine
            try:
                with urllib.request.urlopen(href, timeout=10) as response:
                    assert response.status == 200, href
            except urllib.error.HTTPError as e:
                raise AssertionError(f"{href} from {start}: {e.code}") from e
    assert len(seen) > 9


def test_hostile_description_renders_as_text(site: str, browser: webdriver.Chrome) -> None:
    browser.get(site + "/views/hostile_view")
    assert browser.find_element(By.CSS_SELECTOR, "p.lead").text == HOSTILE
    assert HOSTILE in browser.find_element(By.ID, "f-raw_amount").text
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.find_elements(By.TAG_NAME, "script") == []  # the page has no script at all
    assert [b for b in browser.find_elements(By.TAG_NAME, "b") if b.text == "bold"] == []


def _ink(browser: webdriver.Chrome, png: bytes) -> tuple[int, float]:
    """(distinct colours, share of non-background pixels) of a PNG, decoded by the browser's canvas."""
    import base64

    script = """
    const done = arguments[arguments.length - 1];
    const img = new Image();
    img.onload = () => {
      const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
      const g = c.getContext('2d'); g.drawImage(img, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      const colours = new Set(); let ink = 0; const bg = [d[0], d[1], d[2]];
      for (let i = 0; i < d.length; i += 16) {
        colours.add((d[i] << 16) | (d[i+1] << 8) | d[i+2]);
        if (Math.abs(d[i]-bg[0]) + Math.abs(d[i+1]-bg[1]) + Math.abs(d[i+2]-bg[2]) > 30) ink++;
      }
      done([colours.size, ink / (d.length / 16)]);
    };
    img.src = 'data:image/png;base64,' + arguments[0];
    """
    colours, share = browser.execute_async_script(script, base64.b64encode(png).decode())
    return int(colours), float(share)


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_screenshot_of_the_view_page_is_not_blank(site: str, browser: webdriver.Chrome, size: tuple[int, int],
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    browser.set_window_size(*size)
    try:
        browser.get(site + "/views/customer_spend")
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(size[0], min(int(height) + 140, 6000))
        # The page must fit its width: nothing but the graph and tables (which scroll) may overflow.
        assert browser.execute_script("return document.documentElement.scrollWidth") <= size[0]
        png = browser.get_screenshot_as_png()
    finally:
        browser.set_window_size(*DESKTOP)
    out = tmp_path_factory.getbasetemp() / f"catalog-view-{size[0]}.png"
    out.write_bytes(png)
    colours, share = _ink(browser, png)
    assert colours > 50 and share > 0.05, (out, colours, share)

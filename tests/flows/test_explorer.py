"""The explorer page driven in headless Chromium (Playwright on Debian's /usr/bin/chromium), over a toy run."""
from __future__ import annotations

import httpx
import pytest

from mapcap.storage.query import connect, run_sql

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, explorer):
    """The page opened from the link `mapcap explorer` prints (with the token), as a user does."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{explorer.url}/?token={explorer.token}")
    page.wait_for_selector("#classes tr.cls", state="attached")  # the run's table has loaded
    page.errors = errors
    yield page
    page.close()


def test_the_page_keeps_the_token_and_takes_it_out_of_the_address_bar(page, explorer):
    assert page.url == f"{explorer.url}/"
    assert page.evaluate("sessionStorage.getItem('mapcap-token')") == explorer.token
    page.reload()  # the tab still has it: the run's table loads again
    page.wait_for_selector("#classes tr.cls", state="attached")
    assert page.inner_text("#auth") == ""


def test_the_page_without_the_token_says_how_to_get_in(browser, explorer):
    page = browser.new_page()
    page.goto(explorer.url)
    page.wait_for_function("document.getElementById('auth').textContent.length > 0")
    assert "mapcap explorer" in page.inner_text("#auth") and "token" in page.inner_text("#auth")
    assert page.locator("#classes tr.cls").count() == 0
    page.close()


def _star_image(toy_dir) -> str:
    return str(sorted((toy_dir / "star").glob("*.png"))[0])


def test_explain_an_uploaded_image_in_the_browser(page, toy_dir, tmp_path):
    from mapcap.toy.shapes import SHAPES
    page.click("#tab-explain")
    page.set_input_files("#file", _star_image(toy_dir))
    page.fill("#texts", "\n".join(f"a photo of a {s}" for s in SHAPES))
    page.click("#explain")
    page.wait_for_selector(".card.result >> nth=7")
    assert page.locator(".card.result").count() == len(SHAPES)
    assert page.inner_text(".card.top .text") == "a photo of a star"  # the true class wins
    widths = page.eval_on_selector_all("img.overlay", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == len(SHAPES) and min(widths) > 0
    assert "star" in page.inner_text(".card.top")  # its token chips
    page.fill("#caption", "a blue star")
    page.click("#ground")
    page.wait_for_selector("img.word >> nth=2")
    assert page.locator("img.word").count() == 3
    page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
    assert not page.errors


def test_bad_upload_empty_text_and_unknown_model_say_why(page, toy_dir, tmp_path):
    page.click("#tab-explain")
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    page.set_input_files("#file", str(bad))
    page.fill("#texts", "a photo of a star")
    page.click("#explain")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "cannot decode the uploaded file" in page.inner_text("#error")
    page.set_input_files("#file", _star_image(toy_dir))
    page.fill("#texts", "")
    page.click("#explain")
    page.wait_for_function("document.getElementById('error').textContent.includes('non-empty')")
    page.fill("#texts", "a star")
    page.fill("#model", "ViT-Nope")
    page.click("#explain")
    page.wait_for_function("document.getElementById('error').textContent.includes('unknown open_clip model')")
    page.fill("#model", "toy")


def test_browse_a_run_misclassified_first(page, toy_run):
    wrong = run_sql(connect(toy_run), """SELECT label FROM predictions WHERE run_id = 'ex' AND template = 'ensemble'
                                         AND NOT correct ORDER BY label LIMIT 1""").to_pylist()
    page.click("#tab-browse")
    assert wrong, "the distractor run should have a mistake to show first"
    cls = wrong[0]["label"]
    page.click(f"#classes tr.cls[data-c='{cls}']")
    page.wait_for_function(f"document.getElementById('f-class').value === '{cls}'")
    page.wait_for_function(  # the filtered list replaced the unfiltered one
        f"(cs => cs.length > 0 && cs.every(c => c.innerText.includes('{cls} →')))"
        f"(Array.from(document.querySelectorAll('#images .card.image')))")
    first = page.locator("#images .card.image").first
    assert cls in first.inner_text()
    assert "wrong" in first.get_attribute("class")  # the class's mistake comes first, marked wrong
    assert "visual concepts:" in first.inner_text() and "AUC" in first.inner_text()
    assert page.eval_on_selector_all("#images img", "imgs => imgs.every(i => i.naturalWidth > 0)")
    page.select_option("#f-subset", "correct")
    page.wait_for_function("Array.from(document.querySelectorAll('#images .card.image')).every(c => c.classList.contains('ok'))")
    page.click("#classes th[data-k='class_name']")  # sort by name
    assert page.get_attribute("#classes tr.cls >> nth=0", "data-c") == "circle"
    page.click("#classes th[data-k='class_name']")  # and reversed
    assert page.get_attribute("#classes tr.cls >> nth=0", "data-c") == "triangle"
    assert page.eval_on_selector("#trend-plot", "i => i.naturalWidth") > 0
    assert page.is_disabled("#reprocess") and "no Prefect API" in page.inner_text("#reprocess-status")
    assert not page.errors


def test_api_reprocess_is_off_without_a_prefect_api(explorer, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    r = httpx.post(f"{explorer.url}/api/reprocess", json={"run": "ex", "classes": ["star"]}, headers=explorer.auth)
    assert r.status_code == 409 and "PREFECT_API_URL" in r.json()["detail"]
    r = httpx.get(f"{explorer.url}/api/runs/nope/classes", headers=explorer.auth)
    assert r.status_code == 400 and "unknown run 'nope'" in r.json()["detail"]

"""Regenerate the explorer screenshots in docs/: python docs/screenshots.py RESULTS_ROOT IMAGE [RUN] (needs chromium)."""
import socket
import sys
import threading
import time

import uvicorn
from playwright.sync_api import sync_playwright

from mapcap.explorer.app import make_app
from mapcap.explorer.guard import new_token

root, image = sys.argv[1], sys.argv[2]
token = new_token()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(make_app(root, token), host="127.0.0.1", port=port, log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
time.sleep(3)
with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"http://127.0.0.1:{port}/?token={token}")
    page.wait_for_selector("#classes tr.cls", state="attached")
    page.set_input_files("#file", image)
    page.fill("#texts", "a photo of a star\na photo of a ring\na photo of a cross\na photo of a circle")
    page.click("#explain")
    page.wait_for_selector(".card.result >> nth=3")
    page.click("#ground")
    page.wait_for_selector("img.word")
    page.screenshot(path="docs/explorer_explain.png", full_page=True)
    page.click("#tab-browse")
    if len(sys.argv) > 3:
        page.select_option("#runs", sys.argv[3])
    page.select_option("#f-subset", "wrong")
    page.wait_for_function("(cs => cs.length > 0 && cs.every(c => c.classList.contains('wrong')))"
                           "(Array.from(document.querySelectorAll('#images .card.image')))")
    page.screenshot(path="docs/explorer_browse.png", full_page=False)
    browser.close()
server.should_exit = True

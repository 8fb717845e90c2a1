"""`fourm serve` in a real browser (slow: run by `.ci/run`, which installs Chromium and Playwright).

The test serves the tiny run (tests/fourm/demo/conftest.py) from a `fourm serve` subprocess on a free local
port and drives Debian's Chromium headless through Playwright (the system browser: no download): it uploads
an image, picks two targets, and checks both generated pictures arrive as PNGs of the page's tile size; a
file that is not an image then shows its one-line error. Two requests sent at once through the HTTP API
with different seeds each get the tokens the library gives for their own seed. The server is stopped at
the end whatever happens.
"""

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fourm.demo.serve import TILE
from fourm.generation import Pipeline

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install chromium), not Playwright's download
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TARGETS = ["tok_depth", "caption"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(serve_run, tmp_path_factory):
    """A `fourm serve` process on the tiny run; its URL once it answers, and stopped after the module."""
    port, log_path = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}  # this checkout's fourm, whichever the environment installed
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fourm", "serve", "--model", str(serve_run["model"]),
                                 "--tokenizers", str(serve_run["tokenizers"]), "--index", str(serve_run["index"]),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        address, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"fourm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(address, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"fourm serve did not answer in 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("uploads") / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return path


def status(page) -> str:
    return page.locator("#status textarea").input_value()


def test_the_page_generates_two_targets_and_reports_a_bad_upload(url, browser, photo, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#generate", timeout=60_000)
    page.locator("#upload-rgb input[type=file]").set_input_files(str(photo))
    for name in TARGETS:  # the chain: in the order picked
        page.locator("#targets input").click()
        page.get_by_role("option", name=name, exact=True).click()
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#status textarea').value.startsWith('done')", timeout=120_000)
    images = page.locator("#results img")
    assert images.count() == len(TARGETS), page.locator("#results").inner_text()
    # each tile titled "tok_depth (0.1 s)", in chain order
    assert re.findall(r"(\S+) \(\d+\.\d s\)", page.locator("#results").inner_text()) == TARGETS
    for i in range(images.count()):
        body = page.request.get(images.nth(i).get_attribute("src")).body()
        picture = Image.open(io.BytesIO(body))
        assert picture.format == "PNG" and picture.size == (TILE, TILE)
    link = page.locator("#archive a").first.get_attribute("href")  # the download: outputs in corpus formats
    with zipfile.ZipFile(io.BytesIO(page.request.get(link).body())) as zf:
        assert {"tok_depth.png", "caption.txt", "tokens.json"} <= set(zf.namelist())

    notes = tmp_path / "notes.txt"
    notes.write_text("a caption, not a picture")
    page.locator("#upload-rgb button[aria-label='Clear']").first.click()
    page.locator("#upload-rgb input[type=file]").set_input_files(str(notes))
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#status textarea').value.startsWith('error')", timeout=60_000)
    assert "the rgb upload 'notes.txt' is not an image" in status(page)
    assert "Traceback" not in page.content()
    assert page.locator("#results img").count() == 0  # the last request's pictures do not stay as this one's
    page.close()


def test_concurrent_requests_keep_their_own_seeds(url, serve_run, photo):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)

    def request(seed: int) -> dict:
        given, made, line, archive = client.predict(
            rgb=handle_file(str(photo)), depth=None, semseg=None, caption="", boxes="", targets=TARGETS,
            steps=3, seed=seed, api_name="/generate")
        assert line.startswith("done") and f"seed {seed}" in line and len(made) == len(TARGETS)
        with zipfile.ZipFile(archive) as zf:
            return json.loads(zf.read("tokens.json"))

    with ThreadPoolExecutor(2) as pool:  # both sent before either returns
        results = list(pool.map(request, [1, 2]))
    pipe = Pipeline.from_pretrained(serve_run["model"], serve_run["tokenizers"])
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    for seed, tokens in zip([1, 2], results, strict=True):
        expected = pipe.generate({"rgb": rgb}, TARGETS, seed=seed, steps=3)
        assert tokens["tok_depth"] == expected["tok_depth"].tokens.tolist()
        assert tokens["caption"] == expected["caption"].tokens
    assert results[0]["tok_depth"] != results[1]["tok_depth"]

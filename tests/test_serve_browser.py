"""The page of `embedtag serve` in a real browser: a uvicorn server on loopback, headless Chromium (Debian's package)
driven by Playwright, a real clip uploaded through the page.

Set EMBEDTAG_UPDATE_SCREENSHOT=1 to also copy the screenshot to docs/serve.png (the README's)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

from conftest import IN_CI, REPO
from test_report import chromium
from test_serve import HELD_OUT, MODEL, OFFICE, audio, make_artifacts

if not IN_CI:
    pytest.importorskip("uvicorn")
    pytest.importorskip("playwright")

pytestmark = pytest.mark.slow  # extracts the office store when no other test did

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run",
         # a synthetic microphone (a beep), granted without a prompt, for the recording path
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(real_store, tmp_path):
    """A real uvicorn server on a free loopback port, in a thread, serving a head and an index; stopped after."""
    import uvicorn

    from embedtag.serve import create_app

    head, index = make_artifacts(real_store(OFFICE, model=MODEL), tmp_path / "artifacts")
    app = create_app(head=head, index=index)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(30)


def long_recording(folder):
    """Held-out clips of five labels, each repeated to fill about 10 s, one after the other."""
    import numpy as np
    import soundfile as sf

    from embedtag.embeddings.audio import load_audio

    parts = []
    for name in ("laughter005.wav", "speech001.wav", "keyboard005.wav", "phone036.wav", "knock001.wav"):
        x, sr = load_audio(audio(name), 32000)
        parts.append(np.tile(x, int(np.ceil(10.2 * sr / x.size))))
    out = folder / "office_54s.flac"
    sf.write(out, np.concatenate(parts), 32000)
    return out


def test_upload_a_clip_through_the_page(server, tmp_path):
    from playwright.sync_api import sync_playwright

    exe = chromium()
    clip = audio("speech001.wav")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('about').textContent.includes('220 clips')")
            page.set_input_files("#file", str(clip))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            tags = page.locator("#tags li")
            assert tags.count() == 10 and tags.first.get_attribute("data-label") == HELD_OUT[clip.name]
            assert "present" in tags.first.get_attribute("class")
            assert page.locator("#labels").inner_text() == "Tagged: speech"
            meter = tags.first.locator("[role=meter]")
            assert float(meter.get_attribute("aria-valuenow")) > 50
            similar = page.locator("#similar li")
            assert similar.count() == 10 and similar.first.get_attribute("data-clip") == clip.name
            assert similar.first.locator(".chip").inner_text() == "speech"
            assert similar.first.locator("button").get_attribute("aria-label") == f"Play {clip.name}"
            assert page.locator("#wave-fig").is_visible() and "1.90 s" in page.locator("#wave-cap").inner_text()
            assert page.locator("#error").is_hidden() and page.locator("#token-box").is_hidden() and not errors
            assert page.locator("#timeline-section").is_hidden()  # one window: no timeline

            # a 54 s recording of five held-out sounds in turn: the timeline heat map appears
            page.set_input_files("#file", str(long_recording(tmp_path)))
            page.wait_for_selector("body[data-state=done]", timeout=120_000)
            assert page.locator("#timeline-section").is_visible()
            assert "6 windows of 10 s" in page.locator("#timeline-cap").inner_text()
            assert page.locator("#similar li").count() == 10 and not errors
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("EMBEDTAG_UPDATE_SCREENSHOT"):
                (REPO / "docs").mkdir(exist_ok=True)
                shutil.copy(shot, REPO / "docs" / "serve.png")

            # record from the (synthetic) microphone: the page decodes the recording and sends WAV
            page.click("#record")
            page.wait_for_function("document.getElementById('record').getAttribute('aria-pressed') === 'true'")
            page.wait_for_timeout(2500)
            page.click("#record")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            assert page.locator("#status").inner_text() == "Done: recording.wav."
            assert "recording.wav" in page.locator("#wave-cap").inner_text() and page.locator("#tags li").count() == 10
            assert not errors

            # a file that is no audio: the API's error, in words, on the page
            bad = tmp_path / "notes.txt"
            bad.write_text("hello " * 100)
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("body[data-state=error]", timeout=30_000)
            assert "could not read this file as audio" in page.locator("#error").inner_text()
        finally:
            browser.close()

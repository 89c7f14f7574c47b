"""The page at `/` in headless Chromium (Debian `chromium`), driven over the DevTools protocol:
a real audio file streamed through the file picker, and the microphone path (AudioWorklet) fed by
Chromium's fake capture device playing a speech WAV. The server runs without a token (a browser
WebSocket cannot send an Authorization header)."""
import asyncio
import itertools
import json
import shutil
import subprocess
import time
import urllib.request

import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from test_server_helpers import start_server
from test_sst_helpers import espeak_wave

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
              pytest.mark.slow]          # slow: make test-fast leaves these out
DEADLINE_S = 240


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    srv = start_server(tmp, "--max-new-tokens", "3", "--idle-timeout-s", "60", "--max-streams", "8", "--max-load", "0",
                       token=None)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("wav") / "speech.wav"
    sf.write(path, espeak_wave("Hello, how are you today? The weather is nice."), 16000)
    return path


class Page:
    """One Chromium tab over CDP."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method, **params):
        i = next(self.ids)
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def state(self):
        r = await self.call("Runtime.evaluate", returnByValue=True, expression="""JSON.stringify({
            status: document.getElementById('status').textContent,
            out: document.getElementById('out').textContent,
            rows: document.getElementById('lat').children.length})""")
        if "exceptionDetails" in r:          # the page is still loading
            return {"status": "", "out": "", "rows": 0}
        return json.loads(r["result"]["value"])

    async def wait_for(self, pred):
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            s = await self.state()
            if pred(s):
                return s
            await asyncio.sleep(0.3)
        return s


def launch(tmp_path, url, fake_audio):
    port_file = tmp_path / "profile" / "DevToolsActivePort"
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}",
                             "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={fake_audio}",
                             url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.is_file() or not port_file.read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
        time.sleep(0.2)
    port = int(port_file.read_text().split()[0])
    while True:
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        pages = [p for p in pages if p["type"] == "page" and p["url"].startswith(url)]
        if pages:
            return proc, pages[0]["webSocketDebuggerUrl"]
        assert time.monotonic() < deadline, "chromium opened no page"
        time.sleep(0.2)


def run_in_browser(tmp_path, server, wav, scenario):
    url = f"http://127.0.0.1:{server.port}/"
    proc, debugger = launch(tmp_path, url, wav)
    try:
        async def go():
            async with connect(debugger, max_size=None) as ws:
                page = Page(ws)
                await page.wait_for(lambda s: s["status"].startswith("idle"))
                return await scenario(page)
        return asyncio.run(go())
    finally:
        proc.kill()
        proc.wait()


def test_page_streams_a_chosen_file(tmp_path, open_server, speech_wav):
    async def scenario(page):
        doc = await page.call("DOM.getDocument")
        node = await page.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
        await page.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(speech_wav)])
        return await page.wait_for(lambda s: s["status"] == "done" or s["status"].startswith(("error", "closed")))
    state = run_in_browser(tmp_path, open_server, speech_wav, scenario)
    assert state["status"] == "done", state
    seconds = len(sf.read(speech_wav)[0]) / 16000
    assert state["rows"] == -(-int(seconds * 1000) // 1120)     # one latency row per chunk
    assert state["out"].strip()                                 # the done text is shown


def test_page_streams_the_microphone(tmp_path, open_server, speech_wav):
    async def scenario(page):
        await page.call("Runtime.evaluate", expression="document.getElementById('mic').click()")
        first = await page.wait_for(lambda s: s["rows"] >= 2 or s["status"].startswith(("error", "closed")))
        await page.call("Runtime.evaluate", expression="document.getElementById('stop').click()")
        return first, await page.wait_for(lambda s: s["status"] == "done" or s["status"].startswith("error"))
    first, state = run_in_browser(tmp_path, open_server, speech_wav, scenario)
    assert first["rows"] >= 2, first
    assert state["status"] == "done", state

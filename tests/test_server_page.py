"""The page at `/`: its HTML for a given model config, and the page itself in headless Chromium (Debian
`chromium`), driven over the DevTools protocol: a real audio file streamed through the file picker
(level meter, translation, lag plot, the downloaded SimulEval log), and the microphone path
(AudioWorklet) fed by Chromium's fake capture device playing a speech WAV. The server runs without a
token (a browser WebSocket cannot send an Authorization header).

Run as a script, it takes the README's screenshot (the embedded default model, docs/demo_talk.wav):
    .venv/bin/python tests/test_server_page.py docs/page.png
"""
import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from hpo_engine.metrics.instances import read_instances_log
from hpo_engine.server.page import page_html
from test_server_helpers import start_server
from test_sst_helpers import espeak_wave

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
DEADLINE_S = 240
CHUNK_MS = 1120          # the default model's chunk (what the test server serves)
ROOT = Path(__file__).resolve().parents[1]


def test_page_offers_the_models_languages_and_chunk():
    config = SimpleNamespace(instructions={"ja": "...", "de": "...", "xx": "..."}, default_target_lang="ja",
                             chunk_ms=2240, trained=False, description="<script>alert(1)</script>")
    page = page_html(config)
    options = re.findall(r'<option value="(\w+)"( selected)?>([^<]*)</option>', page)
    assert [(code, label) for code, _, label in options] == [("de", "German (de)"), ("ja", "Japanese (ja)"),
                                                            ("xx", "xx (xx)")]
    assert [code for code, selected, _ in options if selected] == ["ja"]
    assert '<output id="chunk">2240 ms</output>' in page and '<output id="multiplier">1</output>' in page
    assert '"chunkMs": 2240' in page                                     # the plot's chunk boundaries
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|https?://", page)  # nothing is fetched at run time


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

    async def value(self, expression):
        """`expression` (JSON-able) evaluated in the page; raises if it throws."""
        r = await self.call("Runtime.evaluate", returnByValue=True, expression=f"JSON.stringify({expression})")
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return json.loads(r["result"]["value"])

    async def state(self):
        try:
            return await self.value("""{status: $('status').textContent, out: $('out').textContent,
                points: +($('lag').dataset.points || 0), db: +$('meter').dataset.db,
                loudest: S ? Math.max(-100, ...S.levels.map((l) => l[1])) : -100}""")
        except RuntimeError:             # the page is still loading
            return {"status": "", "out": "", "points": 0, "db": 0, "loudest": -100}

    async def wait_for(self, pred):
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            s = await self.state()
            if pred(s):
                return s
            await asyncio.sleep(0.3)
        return s

    async def choose_file(self, path):
        doc = await self.call("DOM.getDocument")
        node = await self.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
        await self.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])


def finished(s):
    return s["status"] == "done" or s["status"].startswith(("error", "closed"))


def launch(tmp_path, url, fake_audio, window="1280,900"):
    port_file = tmp_path / "profile" / "DevToolsActivePort"
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}",
                             f"--window-size={window}", "--hide-scrollbars",
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


def run_in_browser(tmp_path, server, wav, scenario, **launch_options):
    url = f"http://127.0.0.1:{server.port}/"
    proc, debugger = launch(tmp_path, url, wav, **launch_options)
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


# what the page drew: every point with the canvas pixel under its centre, and the pixel columns of
# the first chunk boundaries (as RGBA lists)
PLOT = """(() => {
  const c = $('lag'), ctx = c.getContext('2d'), px = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data);
  return {drawn: +c.dataset.points, size: [c.width, c.height], ink: INK, sends: S.sends,
          points: S.points.map((p) => ({audio_ms: p.audio_ms, lag_ms: p.lag_ms, server_ms: p.server_ms, text: p.text,
                                        at: p.at, x: p.x, y: p.y, pixel: px(Math.floor(p.x), Math.floor(p.y))})),
          boundaries: S.boundaryX.slice(0, S.points.length + 1).map((x) =>
            Array.from(ctx.getImageData(x, 0, 1, c.height).data))};
})()"""


@pytest.fixture(scope="module")
def streamed_file(tmp_path_factory, open_server, speech_wav):
    """The chosen-file path once: stream speech_wav, wait for done, then what the page shows and
    draws, and the log its Download button saves."""
    tmp = tmp_path_factory.mktemp("browser")
    downloads = tmp / "downloads"
    downloads.mkdir()

    async def scenario(page):
        await page.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        before = await page.value("$('download').disabled")
        await page.choose_file(speech_wav)
        during = await page.wait_for(lambda s: s["points"] >= 1 or finished(s))
        state = await page.wait_for(finished)
        plot = await page.value(PLOT)
        await page.call("Runtime.evaluate", expression="$('download').click()")
        deadline = time.monotonic() + 30
        while not (logs := list(downloads.glob("instances-*.log"))) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)          # written under a temporary name, renamed when complete
        return SimpleNamespace(before=before, during=during, state=state, plot=plot, logs=logs)
    return run_in_browser(tmp, open_server, speech_wav, scenario)


def rgb(hex_color):
    return [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)] + [255]


def close(a, b, tol=3):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


@pytest.mark.slow
@browser
def test_page_streams_a_chosen_file_and_plots_its_lag(streamed_file, speech_wav):
    got = streamed_file
    assert got.state["status"] == "done", got.state
    assert got.state["out"].strip()                              # the translation is shown
    assert got.during["loudest"] > -35, got.during               # the meter saw the speech being sent ...
    assert got.state["db"] == -60                                # ... and falls back to silence at the end
    plot, wav_ms = got.plot, len(sf.read(speech_wav)[0]) * 1000 / 16000
    points = plot["points"]
    chunks = -(-int(wav_ms) // CHUNK_MS)
    # one point per chunk translated, then up to 2 closing turns (they finish the last sentence)
    assert plot["drawn"] == len(points) and chunks <= len(points) <= chunks + 2
    # each point: the audio the server had consumed, and a lag that cannot be negative
    assert [p["audio_ms"] for p in points[:chunks - 1]] == [CHUNK_MS * (k + 1) for k in range(chunks - 1)]
    assert all(abs(p["audio_ms"] - wav_ms) < 0.5 for p in points[chunks - 1:])
    assert all(0 < p["lag_ms"] < DEADLINE_S * 1000 for p in points), points
    for p in points:     # lag: from when the page sent the frame completing that audio to the piece's arrival ...
        sent_at = next(t for ms, t in plot["sends"] if ms >= p["audio_ms"] - 0.001)
        assert abs(p["lag_ms"] - (p["at"] - sent_at)) < 0.01
        assert p["lag_ms"] >= p["server_ms"] - 5          # ... so it holds the server's share (same interval, inside)
    assert "".join(p["text"] for p in points) == got.state["out"]
    # drawn where the page says: inside the canvas, left to right, a marker under each centre
    width, height = plot["size"]
    assert all(0 < p["x"] < width and 0 < p["y"] < height for p in points)
    assert [p["x"] for p in points] == sorted(p["x"] for p in points)
    markers = [rgb(plot["ink"]["text"]), rgb(plot["ink"]["wait"])]
    assert all(any(close(p["pixel"], m) for m in markers) for p in points), [p["pixel"] for p in points]
    # the chunk boundaries (one up to each point, and the origin): dashed lines in their colour
    boundary = rgb(plot["ink"]["chunk"])
    assert chunks + 1 <= len(plot["boundaries"]) <= len(points) + 1     # closing points end at the last chunk
    for column in plot["boundaries"]:
        pixels = [column[i:i + 4] for i in range(0, len(column), 4)]
        assert sum(close(px, boundary) for px in pixels) > 0.25 * height


@pytest.mark.slow
@browser
def test_page_downloads_the_session_as_a_simuleval_log(streamed_file, speech_wav):
    got = streamed_file
    assert got.before is True                                    # nothing to download before a session
    assert len(got.logs) == 1, got.logs
    lines = got.logs[0].read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert set(row) == {"index", "prediction", "delays", "elapsed", "source_length", "source"}
    assert row["index"] == 0 and row["source"] == [speech_wav.name]
    assert row["prediction"] == got.state["out"] and row["prediction"].strip()
    assert abs(row["source_length"] - len(sf.read(speech_wav)[0]) * 1000 / 16000) < 0.5
    delays, elapsed = row["delays"], row["elapsed"]
    assert len(delays) == len(elapsed) == len(row["prediction"].split())      # one per word (de)
    assert delays == sorted(delays)                                          # never decrease
    # each word: the audio read when its piece was written, and that plus the piece's lag
    lags = [(p["audio_ms"], p["lag_ms"]) for p in got.plot["points"] if p["text"]]   # closing turns share
    assert set(delays) <= {ms for ms, _ in lags}                                      # the last audio_ms
    assert all(any(abs(e - (d + lag)) < 0.2 for ms, lag in lags if ms == d) for d, e in zip(delays, elapsed))
    # the file the scorer reads: one delay per word, no negative time, delays never decreasing
    (ins,) = read_instances_log(got.logs[0], unit="word", monotone_delays=True)
    assert ins.prediction == got.state["out"]


@pytest.mark.slow
@browser
def test_page_streams_the_microphone(tmp_path, open_server, speech_wav):
    async def scenario(page):
        await page.call("Runtime.evaluate", expression="$('mic').click()")
        first = await page.wait_for(lambda s: s["points"] >= 2 or s["status"].startswith(("error", "closed")))
        await page.call("Runtime.evaluate", expression="$('stop').click()")
        state = await page.wait_for(lambda s: s["status"] == "done" or s["status"].startswith("error"))
        return first, state, await page.value("{source: S.source, points: S.points.length, plotted: S.points"
                                              ".filter((p) => p.x > 0 && p.lag_ms > 0).length}")
    first, state, session = run_in_browser(tmp_path, open_server, speech_wav, scenario)
    assert first["points"] >= 2, first
    assert first["loudest"] > -35, first                 # the fake microphone's speech reached the meter
    assert state["status"] == "done", state
    assert session["source"] == "microphone" and session["plotted"] == session["points"] >= 2, session


def screenshot(out: Path, wav: Path = ROOT / "docs" / "demo_talk.wav") -> None:
    """Serve the embedded default model, stream `wav` through the page, save a PNG of the page."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from hpo_engine.sst.default_model import default_sst_path
        server = start_server(tmp, "--model", str(default_sst_path()), "--max-load", "0", "--idle-timeout-s", "120",
                              token=None)
        try:
            async def scenario(page):
                await page.choose_file(wav)
                state = await page.wait_for(finished)
                middle = await page.value("(() => { const p = S.points.filter((p) => p.text)[0] || S.points[0],"
                                          " r = $('lag').getBoundingClientRect(), d = devicePixelRatio;"
                                          " return [r.left + p.x / d, r.top + p.y / d]; })()")
                for dx in (5, 0, 0, 0, 0):         # hover a piece: its readout under the plot
                    await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=middle[0] + dx, y=middle[1])
                    await asyncio.sleep(0.3)
                    if await page.value("$('pick').textContent"):
                        break
                await page.call("Runtime.evaluate", expression="document.querySelectorAll('.fresh')"
                                ".forEach((e) => e.className = '')")     # no highlight frozen mid-fade
                # the page's height, not the (taller) window's
                height = await page.value("Math.ceil(document.body.getBoundingClientRect().bottom) + 24")
                shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                       clip={"x": 0, "y": 0, "width": 1100, "height": height, "scale": 1})
                return state, base64.b64decode(shot["data"])
            # a window taller than the page: mouse events reach only what is inside the viewport
            state, png = run_in_browser(tmp, server, wav, scenario, window="1100,1300")
        finally:
            server.stop()
    if state["status"] != "done":
        raise SystemExit(f"the stream did not finish: {state}")
    out.write_bytes(png)
    print(f"{out}: {len(png) // 1024} KB; translation: {state['out'][:80]}...")


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/page.png"))

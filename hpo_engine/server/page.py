"""The page at `/`: stream the microphone (AudioWorklet, 16 kHz PCM) or a chosen audio file to
/v1/stream and watch the session live: the level of the audio being sent, the translation as it
grows, a plot of each piece's lag behind the speech (chunk boundaries marked), and a button that
downloads the session as one SimulEval-style log line (what `hpo-engine translate` writes, so
`hpo-engine score` reads it).

The AudioContext runs at 16 kHz, so the browser resamples the microphone; the worklet only converts
float samples to s16le and sends 160 ms frames. A chosen file is decoded and resampled by an
OfflineAudioContext at 16 kHz and sent at the speaker's pace (frame k leaves once its audio has been
spoken, as `hpo-engine stream` does). Browsers cannot set an Authorization header on a WebSocket, so
the page works with servers started without --token-file.

Lag is measured on the page's clock: a translation frame says how much source audio the server had
consumed (`audio_ms`); the page knows when it sent that audio, so lag = arrival - that send time. It
is what a listener of the page waits, network and queueing included (the server's own share,
`processing_ms`, is shown on hover). Plain JS and one canvas: nothing is downloaded at run time.
"""
from __future__ import annotations

import html
import json

from hpo_engine.sst.config import LANGUAGE_NAMES, UNSPACED_LANGUAGES

WORKLET = r"""
class PcmSender extends AudioWorkletProcessor {
  constructor() { super(); this.buf = new Int16Array(2560); this.n = 0; }
  process(inputs) {
    const ch = inputs[0][0];
    if (ch) for (let i = 0; i < ch.length; i++) {
      const s = Math.max(-1, Math.min(1, ch[i]));
      this.buf[this.n++] = s < 0 ? s * 32768 : s * 32767;
      if (this.n === this.buf.length) { this.port.postMessage(this.buf.buffer.slice(0)); this.n = 0; }
    }
    return true;
  }
}
registerProcessor('pcm-sender', PcmSender);
"""

SCRIPT = r"""
const $ = (id) => document.getElementById(id);
const CONFIG = __CONFIG__;                 // from the model's config (page_html)
const RATE = 16000, FRAME = 2560;          // 160 ms frames
const FLOOR_DB = -60;                      // the meter's and the level strip's bottom
const INK = {text: '#c2410c', wait: '#94a3b8', line: 'rgba(194,65,12,0.45)', chunk: '#cbd5e1',
             grid: '#eef2f7', axis: '#64748b', level: '#bfdbfe', now: '#2563eb', ref: '#a3a3a3'};
let ws = null, audioCtx = null, media = null, stopFile = false;
let S = null;                              // the session on screen (kept after it ends, for the log)

function newSession(source) {
  return {source, id: '', chunkMs: CONFIG.chunkMs, sentMs: 0,
          sends: [],      // [audio ms sent so far, page time it left], one per frame
          levels: [],     // [frame start ms, RMS dBFS], one per frame
          points: [],     // one per translation frame: {audio_ms, lag_ms, server_ms, text, at, x, y}
          boundaryX: [],  // canvas pixel column of each chunk boundary drawn
          text: '', delays: [], elapsed: [], sourceMs: null, ended: false, unspaced: false, hover: null};
}
function log(t) { $('status').textContent = t; }
const round1 = (x) => Math.round(x * 10) / 10, round3 = (x) => Math.round(x * 1000) / 1000;
const sec = (ms, d = 2) => (ms / 1000).toFixed(d);

// -- the stream ---------------------------------------------------------------------------------
function connect(source, onReady) {
  const lang = $('lang').value;
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
              '/v1/stream?target_lang=' + encodeURIComponent(lang);
  S = newSession(source);
  S.unspaced = CONFIG.unspaced.includes(lang);
  $('out').textContent = ''; $('error').textContent = ''; $('pick').textContent = '';
  $('download').disabled = true;
  draw(); stats();
  ws = new WebSocket(url); ws.binaryType = 'arraybuffer';
  ws.onmessage = (ev) => {
    const f = JSON.parse(ev.data);
    if (f.type === 'ready') {
      S.id = f.session; S.chunkMs = f.chunk_ms || S.chunkMs;
      log('streaming (session ' + f.session + ', chunks of ' + S.chunkMs + ' ms)'); onReady();
    } else if (f.type === 'translation') onTranslation(f);
    else if (f.type === 'done') onDone(f);
    else if (f.type === 'error') {
      $('error').textContent = f.code + ': ' + f.message; log('error ' + f.code + ': ' + f.message);
    }
  };
  ws.onclose = (ev) => {
    if (ev.code !== 1000) log('closed (' + ev.code + ') ' + (ev.reason ||
        'the server refused or dropped the stream (busy or full? see its log)'));
    stopAll();
  };
}
function send(buf) {
  if (!ws || ws.readyState !== 1 || S.ended) return;
  const pcm = new Int16Array(buf);
  let sum = 0;
  for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
  const db = sum > 0 ? Math.max(FLOOR_DB, 20 * Math.log10(Math.sqrt(sum / pcm.length) / 32768)) : FLOOR_DB;
  S.levels.push([S.sentMs, db]);
  ws.send(buf);
  S.sentMs += pcm.length / RATE * 1000;
  S.sends.push([S.sentMs, performance.now()]);
  meter(db); draw();
}
function finish() {
  if (ws && ws.readyState === 1 && !S.ended) { S.ended = true; ws.send(JSON.stringify({type: 'end'})); }
}
function stopAll() {
  stopFile = true;
  if (audioCtx) { audioCtx.close(); audioCtx = null; }
  if (media) { media.getTracks().forEach((t) => t.stop()); media = null; }
  $('mic').disabled = false; $('file').disabled = false; $('stop').disabled = true;
  meter(FLOOR_DB);
}
// when the page had sent `ms` of audio: the frame that completed it
function sentAt(ms) {
  const s = S.sends.find((s) => s[0] >= ms - 0.001);
  return s ? s[1] : null;
}
const units = (text) => S.unspaced ? Array.from(text) : text.split(/\s+/).filter(Boolean);

function onTranslation(f) {
  const at = performance.now(), sent = sentAt(f.audio_ms);
  const lag = sent === null ? 0 : at - sent;
  S.points.push({audio_ms: f.audio_ms, lag_ms: lag, server_ms: f.processing_ms, text: f.text, at});
  if (f.text) {
    S.text += f.text;
    const old = $('out').querySelector('.fresh');
    if (old) old.className = '';
    const span = document.createElement('span');
    span.className = 'fresh'; span.textContent = f.text;
    span.title = sec(f.audio_ms) + ' s of speech, shown ' + sec(lag) + ' s after it was sent';
    $('out').append(span); $('out').scrollTop = $('out').scrollHeight;
  }
  // SimulEval delays, as hpo-engine translate times them: each new unit of the running text gets the
  // source ms read when it was written (delays) and the time, on the speech's clock, it was shown (elapsed)
  for (let n = units(S.text).length - S.delays.length; n > 0; n--) {
    S.delays.push(f.audio_ms); S.elapsed.push(round1(f.audio_ms + lag));
  }
  $('download').disabled = false;
  draw(); stats();
}
function onDone(f) {
  S.sourceMs = f.audio_ms ?? S.sentMs;
  if (f.text !== S.text) {       // the server's full text wins (by construction it is the pieces joined)
    S.text = f.text; $('out').textContent = f.text;
    const last = S.delays.length ? S.delays[S.delays.length - 1] : S.sourceMs;
    const n = units(S.text).length;
    S.delays = S.delays.slice(0, n); S.elapsed = S.elapsed.slice(0, n);
    while (S.delays.length < n) { S.delays.push(last); S.elapsed.push(last); }
  }
  log('done'); $('download').disabled = false; stats(); stopAll();
}

// -- the SimulEval-style log (hpo_engine/sst/simulate.py's to_log; times in ms) ---------------------
function logLine() {
  return JSON.stringify({index: 0, prediction: S.text, delays: S.delays, elapsed: S.elapsed,
                         source_length: round3(S.sourceMs ?? S.sentMs), source: [S.source]}) + '\n';
}
$('download').onclick = () => {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([logLine()], {type: 'application/x-ndjson'}));
  a.download = 'instances-' + (S.id || 'session') + '.log';
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);   // the download reads it after click returns
};

// -- level meter and statistics -------------------------------------------------------------------
function meter(db) {
  const frac = (db - FLOOR_DB) / -FLOOR_DB;
  $('mask').style.width = (100 * (1 - frac)).toFixed(1) + '%';
  $('db').textContent = db <= FLOOR_DB ? 'silence' : db.toFixed(0) + ' dBFS';
  $('meter').dataset.db = db.toFixed(1);
}
function stats() {
  const lags = S ? S.points.map((p) => p.lag_ms).sort((a, b) => a - b) : [];
  if (!lags.length) { $('stats').textContent = ''; return; }
  const last = S.points[S.points.length - 1].lag_ms, med = lags[Math.floor(lags.length / 2)];
  $('stats').textContent = S.points.length + ' chunks translated \u00b7 ' + units(S.text).length +
    (S.unspaced ? ' characters' : ' words') + ' \u00b7 lag: last ' + sec(last) + ' s, median ' + sec(med) +
    ' s, max ' + sec(lags[lags.length - 1]) + ' s';
}

// -- the lag plot ---------------------------------------------------------------------------------
function niceStep(range, ticks) {       // 1, 2 or 5 x 10^k seconds, about `ticks` of them
  const raw = range / ticks, p = Math.pow(10, Math.floor(Math.log10(raw)));
  return [1, 2, 5, 10].map((k) => k * p).find((s) => s >= raw);
}
function draw() {
  const c = $('lag'), dpr = window.devicePixelRatio || 1, W = c.clientWidth, H = c.clientHeight;
  if (c.width !== Math.round(W * dpr) || c.height !== Math.round(H * dpr)) {
    c.width = Math.round(W * dpr); c.height = Math.round(H * dpr);
  }
  const ctx = c.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, W, H);
  const chunk = S ? S.chunkMs : CONFIG.chunkMs, pts = S ? S.points : [], sent = S ? S.sentMs : 0;
  const L = 48, R = 14, T = 14, B = 34, pw = W - L - R, ph = H - T - B;
  const xMax = Math.max(4 * chunk, Math.ceil(Math.max(sent, ...pts.map((p) => p.audio_ms)) / chunk) * chunk);
  const yMax = Math.max(chunk * 1.25, ...pts.map((p) => p.lag_ms * 1.15));
  const X = (ms) => L + ms / xMax * pw, Y = (ms) => T + ph - ms / yMax * ph;
  ctx.font = '11px system-ui, sans-serif'; ctx.lineWidth = 1;
  // the speech: level of every frame sent, a strip along the bottom (louder = taller)
  ctx.fillStyle = INK.level;
  for (const [ms, db] of S ? S.levels : []) {
    const h = (db - FLOOR_DB) / -FLOOR_DB * ph * 0.3;
    ctx.fillRect(X(ms), T + ph - h, Math.max(1, X(ms + FRAME / RATE * 1000) - X(ms)), h);
  }
  // lag grid and labels
  const yStep = niceStep(yMax / 1000, 8);
  ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
  for (let s = 0; s * 1000 <= yMax; s += yStep) {
    const y = Math.round(Y(s * 1000)) + 0.5;
    ctx.strokeStyle = INK.grid; ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(L + pw, y); ctx.stroke();
    ctx.fillStyle = INK.axis; ctx.fillText(+s.toFixed(2) + ' s', L - 6, Y(s * 1000));
  }
  // chunk boundaries: one dashed line per chunk, labelled where there is room
  const every = Math.max(1, Math.ceil(44 / (chunk / xMax * pw)));
  ctx.textAlign = 'center'; ctx.textBaseline = 'top'; ctx.setLineDash([3, 3]);
  if (S) S.boundaryX = [];
  for (let k = 0; k * chunk <= xMax; k++) {
    const x = Math.round(X(k * chunk)) + 0.5;            // on a pixel's middle: a crisp line
    ctx.strokeStyle = INK.chunk; ctx.beginPath(); ctx.moveTo(x, T); ctx.lineTo(x, T + ph); ctx.stroke();
    if (S) S.boundaryX.push(Math.floor(x * dpr));
    if (k % every === 0) { ctx.fillStyle = INK.axis; ctx.fillText(sec(k * chunk), x, T + ph + 5); }
  }
  // one chunk of lag: the translation of a chunk arriving before the next chunk is complete
  ctx.strokeStyle = INK.ref; ctx.beginPath(); ctx.moveTo(L, Y(chunk)); ctx.lineTo(L + pw, Y(chunk)); ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = INK.ref; ctx.textAlign = 'left'; ctx.textBaseline = 'bottom';
  ctx.fillText('one chunk', L + 4, Y(chunk) - 2);
  ctx.fillStyle = INK.axis; ctx.textAlign = 'center'; ctx.textBaseline = 'bottom';
  ctx.fillText('speech sent (s); dashed: chunk boundaries every ' + chunk + ' ms', L + pw / 2, H - 1);
  // now: how far the audio sent has got
  if (S && !S.ended && sent > 0) {
    ctx.strokeStyle = INK.now; ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.moveTo(X(sent), T); ctx.lineTo(X(sent), T + ph); ctx.stroke(); ctx.lineWidth = 1;
  }
  // the pieces: a line through them, a dot each (orange: it wrote text; grey: the model waited)
  ctx.strokeStyle = INK.line; ctx.lineWidth = 1.5; ctx.beginPath();
  pts.forEach((p, i) => i ? ctx.lineTo(X(p.audio_ms), Y(p.lag_ms)) : ctx.moveTo(X(p.audio_ms), Y(p.lag_ms)));
  ctx.stroke(); ctx.lineWidth = 1;
  for (const p of pts) {
    ctx.fillStyle = p.text ? INK.text : INK.wait;
    ctx.beginPath(); ctx.arc(X(p.audio_ms), Y(p.lag_ms), p.text ? 4.5 : 3.5, 0, 2 * Math.PI); ctx.fill();
    p.x = X(p.audio_ms) * dpr; p.y = Y(p.lag_ms) * dpr;    // canvas pixels, for hover (and the tests)
  }
  if (S && S.hover != null && pts[S.hover]) {
    const p = pts[S.hover];
    ctx.strokeStyle = INK.now; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(p.x / dpr, p.y / dpr, 7, 0, 2 * Math.PI); ctx.stroke(); ctx.lineWidth = 1;
  }
  c.dataset.points = pts.length;
}
$('lag').onmousemove = (ev) => {
  if (!S || !S.points.length) return;
  const dpr = window.devicePixelRatio || 1, x = ev.offsetX * dpr;
  let best = 0;
  S.points.forEach((p, i) => { if (Math.abs(p.x - x) < Math.abs(S.points[best].x - x)) best = i; });
  const p = S.points[best];
  S.hover = best; draw();
  $('pick').textContent = 'chunk ' + (best + 1) + ': ' + sec(p.audio_ms) + ' s of speech, shown ' + sec(p.lag_ms) +
    ' s after it was sent' + (p.server_ms != null ? ' (' + sec(p.server_ms) + ' s of it in the server)' : '') +
    ': ' + (p.text ? '\u201c' + p.text.trim() + '\u201d' : 'no text (the model waited)');
};
window.onresize = draw;

// -- sources ---------------------------------------------------------------------------------------
function busy() { $('mic').disabled = true; $('file').disabled = true; $('stop').disabled = false; stopFile = false; }
$('mic').onclick = async () => {
  busy();
  try {
    media = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1}});
    audioCtx = new AudioContext({sampleRate: RATE});
    const url = URL.createObjectURL(new Blob([WORKLET_SRC], {type: 'application/javascript'}));
    await audioCtx.audioWorklet.addModule(url);
    const node = new AudioWorkletNode(audioCtx, 'pcm-sender');
    node.port.onmessage = (ev) => send(ev.data);
    connect('microphone', () => audioCtx.createMediaStreamSource(media).connect(node));
  } catch (e) { log('error: microphone: ' + e.message); stopAll(); }
};
$('stop').onclick = () => {
  stopFile = true;
  if (audioCtx) { audioCtx.close(); audioCtx = null; }
  if (media) { media.getTracks().forEach((t) => t.stop()); media = null; }
  finish();
};
$('file').onchange = async () => {
  const file = $('file').files[0]; if (!file) return;
  busy();
  let pcm;
  try {                     // decode, then render once more to get 16 kHz mono
    const probe = await new OfflineAudioContext(1, 1, RATE).decodeAudioData(await file.arrayBuffer());
    const off = new OfflineAudioContext(1, Math.ceil(probe.duration * RATE), RATE);
    const src = off.createBufferSource(); src.buffer = probe; src.connect(off.destination); src.start();
    pcm = (await off.startRendering()).getChannelData(0);
  } catch (e) { log('error: cannot decode ' + file.name + ': ' + e.message); stopAll(); return; }
  finally { $('file').value = ''; }          // choosing the same file again streams it again
  connect(file.name, async () => {
    const t0 = performance.now();
    for (let i = 0, k = 1; i < pcm.length && !stopFile; i += FRAME, k++) {
      const wait = t0 + k * FRAME / RATE * 1000 - performance.now();   // frame k-1 leaves once spoken
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (stopFile) break;
      const part = pcm.subarray(i, i + FRAME), out = new Int16Array(part.length);
      for (let j = 0; j < part.length; j++) { const s = Math.max(-1, Math.min(1, part[j]));
        out[j] = s < 0 ? s * 32768 : s * 32767; }
      send(out.buffer);
    }
    finish();
  });
};
document.querySelectorAll('[data-ink]').forEach((e) => { e.style.color = INK[e.dataset.ink]; });
draw(); meter(FLOOR_DB);
"""

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;color:#1e293b;background:#f4f6fa;max-width:64em;margin:1.5em auto;
  padding:0 1em}
h1{font-size:1.5em;margin:0 0 .3em} .note{color:#475569;margin:.2em 0 1em}
.warn{background:#fee;padding:.5em;border:1px solid #c00}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:.9em 1.1em;margin:0 0 1em}
.controls{display:flex;flex-wrap:wrap;gap:.6em 1.4em;align-items:center}
.controls label{color:#475569} output{font-weight:600;color:#1e293b}
button{font:inherit;padding:.35em .9em;border-radius:6px;border:1px solid #cbd5e1;background:#f8fafc;cursor:pointer}
button:disabled{opacity:.45;cursor:default} #mic{background:#fff7ed;border-color:#fdba74} .dot{color:#dc2626}
#download{margin-left:auto}
.legend{font-size:.85em;color:#475569;display:flex;gap:1.2em;margin:-.2em 0 .3em}
.row{display:flex;align-items:center;gap:1em;margin-top:.8em;color:#475569}
#meter{position:relative;flex:1;height:14px;border-radius:7px;overflow:hidden;
  background:linear-gradient(90deg,#22c55e 0 70%,#eab308 70% 88%,#ef4444 88%)}
#mask{position:absolute;top:0;right:0;bottom:0;width:100%;background:#e2e8f0;transition:width .12s linear}
#db{min-width:6em;text-align:right;font-variant-numeric:tabular-nums}
#status{font-size:.9em} #error{color:#b91c1c;font-size:.9em}
h2{font-size:1em;margin:0 0 .5em;color:#475569;font-weight:600}
#out{font-size:1.35em;line-height:1.5;min-height:3em;max-height:9em;overflow-y:auto}
#out:empty::before{content:"The translation appears here, piece by piece, as the speech is sent.";color:#94a3b8}
#out .fresh{background:#ffedd5;border-radius:3px;animation:fade 3s forwards}
@keyframes fade{to{background:transparent}}
#lag{display:block;width:100%;height:260px} #stats,#pick{font-size:.9em;color:#475569;min-height:1.3em}
"""


def page_html(config) -> str:
    """The page for `config` (the model's SSTConfig): its languages, default language and chunk."""
    notice = (f'<p class="note" id="model"><b>Model:</b> {html.escape(config.description)}.</p>' if config.trained else
              f'<p class="warn" id="untrained"><b>Untrained model.</b> {html.escape(config.description)}.</p>')
    langs = "".join(f'<option value="{html.escape(code)}"{" selected" if code == config.default_target_lang else ""}>'
                    f'{html.escape(LANGUAGE_NAMES.get(code, code))} ({html.escape(code)})</option>'
                    for code in sorted(config.instructions))
    settings = {"chunkMs": config.chunk_ms, "unspaced": list(UNSPACED_LANGUAGES)}
    script = (SCRIPT.replace("WORKLET_SRC", json.dumps(WORKLET))
              .replace("__CONFIG__", json.dumps(settings)).replace("</", "<\\/"))
    # /v1/stream has no chunk-multiplier parameter: the server translates at the checkpoint's chunk (m = 1);
    # `hpo-engine translate -m` is where HPO's m is chosen
    multiplier = ("HPO's chunk multiplier m: speech per turn = m x the checkpoint's chunk. The server streams "
                  "at the checkpoint's chunk (m = 1); hpo-engine translate -m M simulates other values.")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>hpo-engine live translation</title><style>{STYLE}</style></head><body>
<h1>Simultaneous speech translation</h1>{notice}
<div class="card"><div class="controls">
<label>Target language <select id="lang">{langs}</select></label>
<label title="{html.escape(multiplier)}">Chunk <output id="chunk">{config.chunk_ms} ms</output>
 &middot; m <output id="multiplier">1</output></label>
<span><button id="mic"><span class="dot">&#9679;</span> Microphone</button>
<button id="stop" disabled>Stop</button></span>
<label>or a file <input type="file" id="file" accept="audio/*"></label>
<button id="download" disabled title="one SimulEval JSON line (index, prediction, delays, elapsed, source_length;
ms), as hpo-engine translate writes: hpo-engine score reads it">Download log</button>
</div>
<div class="row"><span>Level</span><div id="meter"><div id="mask"></div></div><span id="db">silence</span></div>
<div class="row"><span id="status">idle (chunks of {config.chunk_ms} ms)</span><span id="error"></span></div></div>
<div class="card"><h2>Translation</h2><div id="out"></div></div>
<div class="card"><h2>Lag: how long after its speech was sent each piece arrived</h2>
<div class="legend"><span><b data-ink="text">&#9679;</b> a piece of translation</span>
<span><b data-ink="wait">&#9679;</b> a chunk with no text (the model waited)</span>
<span><b data-ink="level">&#9646;</b> level of the speech sent</span><span><b data-ink="now">|</b> sent so far</span>
<span>hover for a chunk's details</span></div>
<canvas id="lag"></canvas><div id="stats"></div><div id="pick"></div></div>
<script>{script}</script></body></html>"""

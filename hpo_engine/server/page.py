"""The page at `/`: stream the microphone (AudioWorklet, 16 kHz PCM) or a chosen audio file to
/v1/stream and show the translation live with a per-chunk latency readout.

The AudioContext runs at 16 kHz, so the browser resamples the microphone; the worklet only converts
float samples to s16le and sends 160 ms frames. A chosen file is decoded and resampled by an
OfflineAudioContext at 16 kHz and sent paced in real time. Browsers cannot set an Authorization
header on a WebSocket, so the page works with servers started without --token-file.
"""
from __future__ import annotations

import html
import json

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
const RATE = 16000, FRAME = 2560;          // 160 ms frames
let ws = null, sentMs = 0, sendTimes = [], audioCtx = null, stopFile = false;
function log(t) { $('status').textContent = t; }
function connect(onReady) {
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
              '/v1/stream?target_lang=' + encodeURIComponent($('lang').value);
  ws = new WebSocket(url); ws.binaryType = 'arraybuffer';
  sentMs = 0; sendTimes = []; $('out').textContent = ''; $('lat').innerHTML = '';
  ws.onmessage = (ev) => {
    const f = JSON.parse(ev.data);
    if (f.type === 'ready') { log('streaming (session ' + f.session + ')'); onReady(); }
    else if (f.type === 'translation') {
      $('out').textContent += f.text;
      const sent = sendTimes.find((s) => s[0] >= f.audio_ms - 0.001);
      const lat = sent ? (performance.now() - sent[1]).toFixed(0) : '?';
      const row = document.createElement('tr');
      row.innerHTML = '<td>' + (f.audio_ms / 1000).toFixed(2) + ' s</td><td>' + lat + ' ms</td><td>' +
                      f.processing_ms.toFixed(0) + ' ms</td>';
      $('lat').prepend(row);
    } else if (f.type === 'done') { log('done'); $('out').textContent = f.text; stopAll(); }
    else if (f.type === 'error') { log('error ' + f.code + ': ' + f.message); }
  };
  ws.onclose = (ev) => { if (ev.code !== 1000) log('closed (' + ev.code + ') ' + ev.reason); stopAll(); };
}
function send(buf) {
  if (!ws || ws.readyState !== 1) return;
  ws.send(buf); sentMs += buf.byteLength / 2 / RATE * 1000; sendTimes.push([sentMs, performance.now()]);
}
function finish() { if (ws && ws.readyState === 1) ws.send(JSON.stringify({type: 'end'})); }
function stopAll() {
  stopFile = true;
  if (audioCtx) { audioCtx.close(); audioCtx = null; }
  $('mic').disabled = false; $('file').disabled = false; $('stop').disabled = true;
}
$('mic').onclick = async () => {
  $('mic').disabled = true; $('file').disabled = true; $('stop').disabled = false;
  const media = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1}});
  audioCtx = new AudioContext({sampleRate: RATE});
  const url = URL.createObjectURL(new Blob([WORKLET_SRC], {type: 'application/javascript'}));
  await audioCtx.audioWorklet.addModule(url);
  const node = new AudioWorkletNode(audioCtx, 'pcm-sender');
  node.port.onmessage = (ev) => send(ev.data);
  connect(() => audioCtx.createMediaStreamSource(media).connect(node));
};
$('stop').onclick = () => { stopFile = true; if (audioCtx) { audioCtx.close(); audioCtx = null; } finish(); };
$('file').onchange = async () => {
  const file = $('file').files[0]; if (!file) return;
  $('mic').disabled = true; $('stop').disabled = false; stopFile = false;
  const data = await file.arrayBuffer();
  const probe = await new AudioContext().decodeAudioData(data.slice(0));
  const off = new OfflineAudioContext(1, Math.ceil(probe.duration * RATE), RATE);
  const src = off.createBufferSource(); src.buffer = probe; src.connect(off.destination); src.start();
  const pcm = (await off.startRendering()).getChannelData(0);
  connect(async () => {
    const t0 = performance.now();
    for (let i = 0, k = 0; i < pcm.length && !stopFile; i += FRAME, k++) {
      const wait = t0 + k * FRAME / RATE * 1000 - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const part = pcm.subarray(i, i + FRAME), out = new Int16Array(part.length);
      for (let j = 0; j < part.length; j++) { const s = Math.max(-1, Math.min(1, part[j]));
        out[j] = s < 0 ? s * 32768 : s * 32767; }
      send(out.buffer);
    }
    finish();
  });
};
"""


def page_html(config) -> str:
    notice = (f'<p class="note" id="model"><b>Model:</b> {html.escape(config.description)}.</p>' if config.trained else
              f'<p class="warn" id="untrained"><b>Untrained model.</b> {html.escape(config.description)}.</p>')
    langs = "".join(f'<option value="{html.escape(code)}"{" selected" if code == config.default_target_lang else ""}>'
                    f'{html.escape(code)}</option>' for code in sorted(config.instructions))
    script = SCRIPT.replace("WORKLET_SRC", json.dumps(WORKLET))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hpo-engine live translation</title>
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto}} .warn{{background:#fee;padding:.5em;
border:1px solid #c00}} #out{{font-size:1.4em;min-height:3em;border:1px solid #ccc;padding:.5em}}
table{{border-collapse:collapse}} td,th{{padding:0 1em;text-align:right}}</style></head><body>
<h1>Simultaneous speech translation</h1>{notice}
<p>Target language <select id="lang">{langs}</select>
<button id="mic">Microphone</button> <button id="stop" disabled>Stop</button>
or a file <input type="file" id="file" accept="audio/*"></p>
<p id="status">idle (chunks of {config.chunk_ms} ms)</p>
<div id="out"></div>
<h3>Per chunk</h3><table><thead><tr><th>audio</th><th>latency</th><th>server</th></tr></thead>
<tbody id="lat"></tbody></table>
<script>{script}</script></body></html>"""

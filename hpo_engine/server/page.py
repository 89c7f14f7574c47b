"""The page at `/` (placeholder until the full browser client lands)."""
from __future__ import annotations

import html


def page_html(config) -> str:
    notice = "" if config.trained else (f"<p class=warn><b>Untrained model.</b> {html.escape(config.description)}"
                                        "</p>")
    return f"""<!doctype html><html><head><meta charset=utf-8><title>hpo-engine</title></head><body>
<h1>hpo-engine simultaneous speech translation</h1>{notice}
<p>Stream PCM s16le mono 16 kHz to <code>ws://HOST:PORT/v1/stream?target_lang=de</code>.</p>
</body></html>"""

"""`hpo-engine serve`: streaming speech translation over WebSocket.

    config.py   ServerConfig (limits, token)
    session.py  one client stream shared by the event loop and the engine thread
    worker.py   the engine thread: encode, one batched turn for all ready streams
    admission.py  whether one more stream keeps the engine in real time (calibrated, then measured)
    app.py      the asyncio WebSocket/HTTP server (protocol, limits, backpressure, drain)
    metrics.py  Prometheus text
    page.py     the page at /
    cli.py      the click command
"""

"""Demo SST data (English speech -> German text) built from offline parts only.

    pairs.py   EN-DE sentence pairs from the Ding dictionary (Debian `trans-de-en`), split by hash
    synth.py   English speech synthesis (espeak-ng, flite) -> float32 16 kHz mono
    data.py    "talks" of 1..4 synthesised sentences -> encoder frames, manifests and test-set files

Build with `python -m hpo_engine.demo data OUT_DIR`.
"""

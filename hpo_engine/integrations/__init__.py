"""hpo-engine inside other tools' runners. Each module imports its tool, which is never a core dependency:

    simulstream.py   HpoSpeechProcessor, the SST stream as a speech processor of FBK's simulstream
                     (the IWSLT 2026 simultaneous track's runner); `pip install -e '.[simulstream]'` plus
                     `pip install --no-deps simulstream==1.0.0 librosa==0.11.0` (the Makefile does both)
"""

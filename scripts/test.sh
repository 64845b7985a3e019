#!/usr/bin/env bash
# THE test command (README; .ci/run calls exactly this): bash scripts/test.sh [pytest arguments]
#  1. installs the package with its dev extra (= every extra + the test tools) when any of it is missing
#     (CPU torch pinned, see README);
#  2. finds a headless Chromium for the app's browser test, or installs one: Debian's `chromium` through
#     apt-get (as root, or with password-less sudo), else Playwright's own download where the network allows;
#  3. finds the benchmark data (CROSSMAT_DATA_DIR, default ../shared/data next to the checkout) or stops
#     with a message saying what is missing and how to get it;
#  4. runs `ruff check .` and `python -m pytest -q` on two workers (pytest-xdist, whole files per worker: the
#     suite's many short subprocesses each spend ~10 s importing torch + transformers, so a second worker halves
#     the wall time on two cores; CROSSMAT_TEST_WORKERS=0 runs it in one process, and a later `-n N` wins).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
say() { echo "[test.sh] $*" >&2; }

# 1. the package and the dev tools
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    say "installing CPU torch 2.13.0 (on a CUDA machine install your torch first)"
    "$PY" -m pip install -q torch==2.13.0
fi
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('transformers', 'datasets', 'accelerate', 'peft', 'evaluate', 'sklearn', 'elementembeddings', 'pyarrow', 'captum', 'shapiq', 'matgl', 'chgnet', 'matminer', 'gradio', 'pytest', 'xdist', 'playwright', 'hypothesis')))" \
        || ! "$PY" -m ruff --version >/dev/null 2>&1; then
    say "installing the package with its dev extra (pip install -e '.[dev]')"
    "$PY" -m pip install -q -e ".[dev]"
fi

# 2. a headless browser for tests/test_app_browser.py
find_chromium() {
    local c
    for c in "${CROSSMAT_CHROMIUM:-}" "$(command -v chromium 2>/dev/null)" "$(command -v chromium-browser 2>/dev/null)" \
             "$(ls -d "${PLAYWRIGHT_BROWSERS_PATH:-$HOME/.cache/ms-playwright}"/chromium-*/chrome-linux*/chrome 2>/dev/null | tail -n 1)"; do
        if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
    done
    return 1
}
if ! CHROMIUM="$(find_chromium)"; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
        say "installing Debian's chromium (apt-get)"
        $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
            || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
            || say "apt-get could not install chromium"
    fi
    if ! CHROMIUM="$(find_chromium)"; then
        say "trying Playwright's own Chromium download (python -m playwright install chromium)"
        "$PY" -m playwright install chromium >/dev/null 2>&1 || say "the Playwright download failed (offline?)"
    fi
    if ! CHROMIUM="$(find_chromium)"; then
        say "WARNING: no Chromium could be found or installed: the browser test is SKIPPED."
        say "         install one (apt-get install chromium) or set CROSSMAT_CHROMIUM=/path/to/chrome"
        export CROSSMAT_SKIP_BROWSER_TEST=1
        CHROMIUM=""
    fi
fi
[ -n "$CHROMIUM" ] && export CROSSMAT_CHROMIUM="$CHROMIUM" && say "browser: $CHROMIUM"

# 3. the benchmark data (read-only; never copied into the checkout)
export CROSSMAT_DATA_DIR="${CROSSMAT_DATA_DIR:-$(cd .. && pwd)/shared/data}"
missing=()
for d in matbench_v0.1 llm4mat_bench_mp_sample perov_5; do
    [ -d "$CROSSMAT_DATA_DIR/$d" ] || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "ERROR: benchmark data not found: CROSSMAT_DATA_DIR=$CROSSMAT_DATA_DIR lacks ${missing[*]}."
    say "  The tests read the project's shared data folder (matbench_v0.1/*.csv.gz, llm4mat_bench_mp_sample/,"
    say "  perov_5/): point CROSSMAT_DATA_DIR at it, or place it at ../shared/data next to the checkout."
    say "  MatBench's official files download with: crossmat build matbench --source official --output-dir data/matbench_v0.1"
    say "  (the raw files land in \${CROSSMAT_CACHE_DIR:-~/.cache/crossmat}/matbench_v0.1); docs/datasets.md says where"
    say "  the LLM4Mat-Bench sample and perov_5 come from."
    exit 2
fi
say "data: $CROSSMAT_DATA_DIR"

# 4. lint and tests
"$PY" -m ruff check .
exec "$PY" -m pytest -q -n "${CROSSMAT_TEST_WORKERS:-2}" --dist loadfile "$@"

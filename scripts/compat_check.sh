#!/usr/bin/env bash
# Run the tiny-model invariant tests against another transformers release, and say plainly what it broke.
# Usage: PYTHON=.venv-compat/bin/python scripts/compat_check.sh LABEL REQUIREMENT TEST_FILE...
#   REQUIREMENT is "transformers" (the newest release) or "transformers==X.Y.Z"; pip brings whatever that
#   release's own dependencies need and leaves every other locked package as it is.
set -uo pipefail
label=$1
requirement=$2
shift 2
"$PYTHON" -m pip install --quiet --upgrade "$requirement" || { echo "cannot install $requirement ($label)"; exit 1; }
version=$("$PYTHON" -c 'import transformers; print(transformers.__version__)')
locked=$(sed -n 's/^transformers==//p' "$(dirname "$0")/../requirements.lock")
echo "== invariant tests on transformers $version ($label; the lock has $locked)"
if ! "$PYTHON" -m pytest -q -p no:cacheprovider -m "not real" -rf "$@"; then
    echo "transformers $version ($label) broke the tests listed as FAILED above; the locked install ($locked) is"
    echo "not affected. Fix steerlab for it, or exclude it from the range in pyproject.toml."
    exit 1
fi
echo "== transformers $version ($label): all invariant tests pass"

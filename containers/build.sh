#!/usr/bin/env bash
# Build the brainalign Apptainer images (run from anywhere; builds from the repository root).
#
#   containers/build.sh [cpu|gpu|all] [--out DIR] [--check-only] [--if-available]
#
#   cpu|gpu|all      which image(s); default all (brainalign-cpu.sif, brainalign.sif)
#   --out DIR        where the .sif files go (default build/containers)
#   --check-only     only check the recipes (containers/check_recipes.py); exit 0/1
#   --if-available   no apptainer/singularity here: say so in one line and exit 0 (default: exit 2)
#
# Labels and BRAINALIGN_GIT_COMMIT inside the image come from --build-arg BRAINALIGN_VERSION (the
# package version) and BRAINALIGN_COMMIT (git HEAD, "-dirty" with uncommitted changes).
# Needs Apptainer >= 1.2 or SingularityCE >= 4.0 (build arguments); extra flags for
# `apptainer build` (e.g. --fakeroot) through APPTAINER_BUILD_FLAGS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { echo "containers/build.sh: $*" >&2; }

WHICH=all OUT="build/containers" CHECK_ONLY=0 IF_AVAILABLE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        cpu|gpu|all) WHICH="$1" ;;
        --out) OUT="$2"; shift ;;
        --check-only) CHECK_ONLY=1 ;;
        --if-available) IF_AVAILABLE=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) say "unknown argument $1 (see --help)"; exit 64 ;;
    esac
    shift
done

case "$WHICH" in
    cpu) RECIPES=(containers/brainalign-cpu.def) ;;
    gpu) RECIPES=(containers/brainalign.def) ;;
    all) RECIPES=(containers/brainalign-cpu.def containers/brainalign.def) ;;
esac

PY=python3
[[ -x "$ROOT/.venv/bin/python" ]] && PY="$ROOT/.venv/bin/python"
"$PY" containers/check_recipes.py "${RECIPES[@]}" >&2 || { say "recipe check failed"; exit 1; }
[[ $CHECK_ONLY -eq 1 ]] && exit 0

APPTAINER=""
for exe in apptainer singularity; do
    if command -v "$exe" >/dev/null 2>&1; then APPTAINER="$exe"; break; fi
done
if [[ -z "$APPTAINER" ]]; then
    say "apptainer/singularity is not available on this machine (recipes checked OK); build on a machine that has Apptainer >= 1.2: containers/build.sh $WHICH"
    [[ $IF_AVAILABLE -eq 1 ]] && exit 0
    exit 2
fi
if ! "$APPTAINER" build --help 2>&1 | grep -q -- '--build-arg'; then
    say "$APPTAINER $("$APPTAINER" --version 2>/dev/null) has no --build-arg: Apptainer >= 1.2 or SingularityCE >= 4.0 is needed"
    exit 2
fi

VERSION="$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' toolkit/brainalign/__init__.py)"
COMMIT="unknown"
if git -C "$ROOT" rev-parse --verify -q HEAD >/dev/null 2>&1; then
    COMMIT="$(git -C "$ROOT" rev-parse HEAD)"
    [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]] && COMMIT="$COMMIT-dirty"
fi
mkdir -p "$OUT"
for def in "${RECIPES[@]}"; do
    sif="$OUT/$(basename "${def%.def}").sif"
    say "building $sif from $def (version ${VERSION:-unknown}, commit $COMMIT)"
    # shellcheck disable=SC2086
    "$APPTAINER" build --force ${APPTAINER_BUILD_FLAGS:-} \
        --build-arg "BRAINALIGN_VERSION=${VERSION:-unknown}" --build-arg "BRAINALIGN_COMMIT=$COMMIT" \
        "$sif" "$def"
    say "built $sif"
done

#!/usr/bin/env bash
# The benchmark's GPU checks in one go, for a session lent a GPU machine for a few minutes (the `device` tool:
# nothing there reaches the package registry or ../shared, and one command runs at most 10 minutes).
#
#   bash bench/cuda_checks.sh prepare     # here, with the registry: wheels and the stories260K fixture into .gpu/
#   bash bench/cuda_checks.sh run         # there, in the repository root (carry .gpu): figures and logs in $OUT
#
# `run` makes two virtual environments on top of the machine's own torch (no CUDA build travels): .gpu/ours
# (TRL 1.16, what the toolkit runs on) and .gpu/trl-1.12 (the PPO peer), then runs, each under its own time limit
# so one slow check cannot take the others' figures with it:
#   1. bench/sft_step_profile.py --device cuda: where an sft.py step's time goes, model alone against sft.py;
#   2. bench/ppo_vs_trl.py --device cuda --setting small: ppo.py against TRL 1.12's PPOTrainer;
#   3. bench/run.py --device cuda --stages sft --repeats 1: sft.py against trl sft and the bare loop, MFU.
# Budgets (seconds) come from the environment: PROFILE_S (150), PPO_S (150), SFT_S (180). Each check's output goes
# to $OUT/<check>.log (and the JSON / Markdown it writes); $OUT/summary.txt lists each check's exit status.
# A dry run here: BASE_PYTHON=<a python with torch> DEVICE=cpu PROFILE_S=60 ... bash bench/cuda_checks.sh run
set -u
cd "$(dirname "$0")/.."
GPU=.gpu
WHEELS=$GPU/wheels
# transformers 5.23.0 (the requirements' floor) needs huggingface-hub 1.x, which the machine's image holds; 5.25
# would need hub 2.x and kernels as well
OURS_WHEELS=(transformers==5.23.0 trl==1.16.0 accelerate==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1
             multiprocess==0.70.19)
PEER_WHEELS=(transformers==5.23.0 trl==1.12.0 accelerate==1.15.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1
             multiprocess==0.70.19)
FIXTURE=models/stories260K

prepare() {
    local python=${PYTHON:-python3}
    mkdir -p "$WHEELS" "$GPU/shared/fixtures/models"
    # the machine's Python is 3.12; --no-deps: its image has every other dependency (torch included)
    for spec in "${OURS_WHEELS[@]}" "${PEER_WHEELS[@]}"; do
        "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --platform manylinux2014_x86_64 --implementation cp --dest "$WHEELS" "$spec" || {
            echo "error: could not download $spec from the package registry" >&2; exit 1; }
    done
    [ -d "../shared/fixtures/$FIXTURE" ] || { echo "error: ../shared/fixtures/$FIXTURE is missing" >&2; exit 1; }
    rm -rf "${GPU:?}/shared/fixtures/$FIXTURE" && cp -r "../shared/fixtures/$FIXTURE" "$GPU/shared/fixtures/$FIXTURE"
    du -sh "$GPU"
    echo "ready: call the device tool's run with carry [\"$GPU\"] and command 'bash bench/cuda_checks.sh run'"
}

make_venv() {  # make_venv DIR SPEC...: a venv that sees the machine's packages, the given wheels installed into it
    # The machine's python3 is itself a venv, so --system-site-packages would show the interpreter's own packages,
    # not its torch: a .pth file adds the base's site-packages after the new venv's own instead.
    local dir=$1 base=${BASE_PYTHON:-python3}; shift
    rm -rf "$dir" && "$base" -m venv --without-pip "$dir" || return 1
    local site
    site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') &&
        "$base" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/_machine_packages.pth" &&
        "$base" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps --target "$site" "$@" &&
        "$dir/bin/python" -c "import torch, transformers, trl, peft, datasets, accelerate
print('$dir: torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__,
      '| trl', trl.__version__, '| peft', peft.__version__, '| datasets', datasets.__version__, '| accelerate',
      accelerate.__version__)"
}

check() {  # check NAME SECONDS COMMAND...: run under a time limit, log to $OUT/NAME.log, record the status
    local name=$1 seconds=$2; shift 2
    local started=$SECONDS
    echo "== $name (limit ${seconds} s): $*" | tee -a "$OUT/summary.txt"
    timeout --kill-after=10 "$seconds" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "   exit $status after $((SECONDS - started)) s$([ $status = 124 ] && echo ' (time limit)')" |
        tee -a "$OUT/summary.txt"
}

run() {
    OUT=${OUT:-.bench/cuda-checks}
    DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the same steps here
    mkdir -p "$OUT"
    : > "$OUT/summary.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/summary.txt" 2>&1
    # the bench scripts read ../shared/fixtures beside the repository: link the carried copy there if it is absent
    [ -e ../shared ] || ln -s "$PWD/$GPU/shared" ../shared
    local started=$SECONDS
    { make_venv "$GPU/ours" "${OURS_WHEELS[@]}" && make_venv "$GPU/trl-1.12" "${PEER_WHEELS[@]}"; } \
        > "$OUT/setup.log" 2>&1
    echo "== setup: exit $? after $((SECONDS - started)) s (two venvs from $WHEELS)" | tee -a "$OUT/summary.txt"
    local python=$GPU/ours/bin/python
    [ -x "$python" ] || { echo "no environment: see $OUT/setup.log" | tee -a "$OUT/summary.txt"; return 1; }
    check sft_profile "${PROFILE_S:-150}" "$python" bench/sft_step_profile.py --device "$DEVICE" \
        --out .bench/sft-profile-checks
    check ppo_small "${PPO_S:-150}" "$python" bench/ppo_vs_trl.py --device "$DEVICE" --setting small \
        --venv "$GPU/trl-1.12" --out .bench/ppo-small-checks
    cp .bench/ppo-small-checks/bench_results.json "$OUT/ppo_small.json" 2>/dev/null
    # its JSON and Markdown land in $OUT: eight files in all come back from the machine
    check sft_suite "${SFT_S:-180}" "$python" bench/run.py --device "$DEVICE" --stages sft --repeats 1 --out "$OUT" \
        --work .bench/suite-checks
    cat "$OUT/summary.txt"
    echo "== the figures"
    grep -h -E "ms per forward|end to end|sft.py's loop|^\| |ratios ours/TRL|^error" "$OUT"/*.log "$OUT"/*.md 2>/dev/null |
        cut -c1-300 | tail -60
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash bench/cuda_checks.sh prepare|run" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# HTCondor job wrapper for train.py on CHTC's GPU Lab (see train_h200_lab.sub and README "CHTC").
#
#   train_h200_lab.sh [train.py flags...]      every argument goes to train.py unchanged
#
# 1. unpacks $DATA_TARBALL (transferred from /staging) once per sandbox;
# 2. pip-installs only the packages the container image lacks (versions from requirements.txt);
# 3. builds index.csv from $BUILD_INDEX_ROOT with build_index.py when asked;
# 4. runs train.py (torchrun --nproc_per_node N when the job holds N > 1 GPUs) under `timeout`:
#    after $CHECKPOINT_SECONDS train.py gets SIGTERM, writes last.pt and the job exits 85, so
#    HTCondor copies the checkpoint (transfer_checkpoint_files) and starts the job again, which
#    continues from last.pt. A SIGTERM/SIGUSR1 (an eviction, or you) is forwarded the same way;
#    after an eviction nothing is transferred and the job continues from the spooled checkpoint.
# 5. the checkpoint: on exit 85, $RESUME_DIR gets what resuming needs, as hard links (no copies):
#    checkpoints/last.pt, checkpoints/best.pt and logs/, mirroring $RESULTS_DIR; the
#    checkpoint_epoch_<N>.pt files stay out. In a fresh sandbox (after an eviction) HTCondor
#    brings $RESUME_DIR back, and before step 1 its files are linked into $RESULTS_DIR, where
#    train.py finds them.
#
# Environment (defaults in brackets):
#   RESULTS_DIR [results/local]   checkpoints/ and logs/ go here (the submit file sets one per job)
#   RESUME_DIR [resume]           what resuming needs, for transfer_checkpoint_files (outside RESULTS_DIR)
#   DATA_TARBALL []               tar file to unpack into the sandbox
#   BUILD_INDEX_ROOT []           folder to index; adds --index_csv index.csv (your flags can override)
#   BUILD_INDEX_ARGS []           extra build_index.py flags, e.g. "--mode videos"
#   CHECKPOINT_SECONDS [3600]     train this long per run, then checkpoint and exit 85
#   KILL_AFTER_SECONDS [600]      SIGKILL if train.py has not exited this long after the SIGTERM
#   CACHE_DIR [cache]             decoded-frame cache inside the sandbox
#   PYTHON [python]  TORCHRUN [torchrun]
# Exit codes: 0 done; 2 bad input; 3 non-finite loss; 74 cannot write the checkpoint files;
# 85 checkpoint written, run again.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
TORCHRUN="${TORCHRUN:-torchrun}"
RESULTS_DIR="${RESULTS_DIR:-results/local}"
CHECKPOINT_SECONDS="${CHECKPOINT_SECONDS:-3600}"
RESUME_DIR="${RESUME_DIR:-resume}"
KILL_AFTER_SECONDS="${KILL_AFTER_SECONDS:-600}"
CACHE_DIR="${CACHE_DIR:-cache}"
EXIT_CHECKPOINTED=85

say() { echo "train_h200_lab.sh: $*"; }

# Output folders exist from the start, so that neither transfer_output_files nor
# transfer_checkpoint_files ever misses them (a missing one puts the job on hold).
mkdir -p "$RESULTS_DIR/checkpoints" "$RESULTS_DIR/logs" "$RESUME_DIR"

# Hard-link every file under $1 into $2 at the same relative path, skipping files $2 already has.
link_missing() {
    local from="$1" to="$2" file rel
    while IFS= read -r -d '' file; do
        rel="${file#"$from"/}"
        [[ -e "$to/$rel" ]] && continue
        mkdir -p "$(dirname "$to/$rel")"
        ln "$file" "$to/$rel" 2>/dev/null || cp -p "$file" "$to/$rel" || return 1
    done < <(find "$from" -type f -print0)
}

# The checkpoint HTCondor keeps (transfer_checkpoint_files): last.pt, best.pt and the logs, the
# new set built beside the old one and swapped in, so that a failure leaves the old one whole.
save_resume_files() {
    local next="$RESUME_DIR.next" name
    rm -rf "$next"
    mkdir -p "$next/checkpoints" "$next/logs"
    for name in last.pt best.pt; do
        if [[ -f "$RESULTS_DIR/checkpoints/$name" ]]; then
            ln "$RESULTS_DIR/checkpoints/$name" "$next/checkpoints/$name" 2>/dev/null \
                || cp -p "$RESULTS_DIR/checkpoints/$name" "$next/checkpoints/$name" || return 1
        fi
    done
    link_missing "$RESULTS_DIR/logs" "$next/logs" || return 1
    rm -rf "$RESUME_DIR" && mv "$next" "$RESUME_DIR"
}

# A fresh sandbox after an eviction: HTCondor has put back $RESUME_DIR; its files go where
# train.py looks (in the same sandbox they are already there and nothing changes).
if [[ -f "$RESUME_DIR/checkpoints/last.pt" && ! -f "$RESULTS_DIR/checkpoints/last.pt" ]]; then
    say "restoring last.pt, best.pt and logs from $RESUME_DIR"
    if ! link_missing "$RESUME_DIR" "$RESULTS_DIR"; then
        # Keep the checkpoint: moved into results/, it comes back with the job's output.
        mv "$RESUME_DIR" "$RESULTS_DIR/resume"
        say "cannot restore $RESUME_DIR into $RESULTS_DIR; the checkpoint is in $RESULTS_DIR/resume"
        exit 74
    fi
fi
rm -rf "$RESUME_DIR.next"

if [[ -n "${DATA_TARBALL:-}" && ! -e .data_unpacked ]]; then
    if [[ ! -f "$DATA_TARBALL" ]]; then
        say "DATA_TARBALL=$DATA_TARBALL not found in $(pwd); check transfer_input_files"
        exit 2
    fi
    say "unpacking $DATA_TARBALL"
    tar -xf "$DATA_TARBALL" || { say "cannot unpack $DATA_TARBALL"; exit 2; }
    rm -f "$DATA_TARBALL"  # sandbox space; restarts in this sandbox skip this step
    touch .data_unpacked
fi

# Python packages: only those the image lacks, into the sandbox (the image is read-only).
export PYTHONUSERBASE="$PWD/.pyuser"
missing=()
for pair in pytorch_msssim:pytorch-msssim cv2:opencv-python-headless pandas:pandas tqdm:tqdm matplotlib:matplotlib; do
    module="${pair%%:*}"
    package="${pair#*:}"
    if ! "$PYTHON" -c "import $module" 2>/dev/null; then
        spec="$(grep -iE "^${package}([<>=!~ ;]|$)" "$HERE/requirements.txt" 2>/dev/null | head -n 1 | tr -d ' ')"
        missing+=("${spec:-$package}")
    fi
done
if (( ${#missing[@]} )); then
    say "installing ${missing[*]}"
    "$PYTHON" -m pip install --user --quiet --no-cache-dir "${missing[@]}" || { say "pip install failed"; exit 1; }
fi

index_flags=()
if [[ -n "${BUILD_INDEX_ROOT:-}" ]]; then
    if [[ ! -f index.csv ]]; then
        say "building index.csv from $BUILD_INDEX_ROOT"
        # shellcheck disable=SC2086  # BUILD_INDEX_ARGS is a list of flags
        "$PYTHON" "$HERE/build_index.py" --root "$BUILD_INDEX_ROOT" --out index.csv ${BUILD_INDEX_ARGS:-} || exit 2
    fi
    index_flags=(--index_csv index.csv)
fi

# GPUs this job holds: HTCondor lists them in _CONDOR_AssignedGPUs (else CUDA_VISIBLE_DEVICES).
gpu_list="${_CONDOR_AssignedGPUs:-${CUDA_VISIBLE_DEVICES:-}}"
n_gpus=0
if [[ -n "$gpu_list" && "$gpu_list" != "-1" && "$gpu_list" != "none" ]]; then
    n_gpus="$(awk -F, '{print NF}' <<< "$gpu_list")"
fi
launcher=("$PYTHON")
if (( n_gpus > 1 )); then
    launcher=("$TORCHRUN" --standalone --nproc_per_node "$n_gpus")
fi
cpus="${OMP_NUM_THREADS:-4}"  # HTCondor sets it to request_cpus
workers=$(( cpus / (n_gpus > 1 ? n_gpus : 1) - 1 ))
(( workers < 1 )) && workers=1

say "$n_gpus GPU(s), ${launcher[*]}, results in $RESULTS_DIR, checkpoint every ${CHECKPOINT_SECONDS}s"
timeout --signal=TERM --kill-after="$KILL_AFTER_SECONDS" "$CHECKPOINT_SECONDS" \
    "${launcher[@]}" "$HERE/train.py" --save_dir "$RESULTS_DIR/checkpoints" --log_dir "$RESULTS_DIR/logs" \
    --cache_dir "$CACHE_DIR" --num_workers "$workers" --keep_checkpoints 2 "${index_flags[@]}" "$@" &
child=$!
signalled=""
# train.py treats SIGUSR1 like SIGTERM; `timeout` relays TERM to its command but dies of USR1.
forward() { signalled="$1"; kill -s TERM "$child" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward USR1' USR1
echo "$$" > train_h200_lab.pid  # `kill -USR1 $(cat train_h200_lab.pid)` in condor_ssh_to_job: checkpoint now

# `wait` returns early when a trapped signal arrives; keep waiting until the child is gone.
wait "$child"
rc=$?
while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    rc=$?
done

case "$rc" in
    0 | 2 | 3) ;;
    124)
        say "time limit of ${CHECKPOINT_SECONDS}s reached and train.py stopped; exit $EXIT_CHECKPOINTED to continue"
        rc=$EXIT_CHECKPOINTED ;;
    137)
        say "train.py was killed ${KILL_AFTER_SECONDS}s after the time limit's SIGTERM without exiting; exit" \
            "$EXIT_CHECKPOINTED to continue from the last checkpoint saved (the epochs since it are trained again)"
        rc=$EXIT_CHECKPOINTED ;;
    *)
        if [[ -n "$signalled" ]]; then
            say "SIG$signalled forwarded (train exit $rc); exit $EXIT_CHECKPOINTED to continue"
            rc=$EXIT_CHECKPOINTED
        fi ;;
esac
if (( rc == EXIT_CHECKPOINTED )); then
    # Exit 85 promises a checkpoint: without the files in place, say so and stop (the job ends
    # with its results/ rather than restarting from an older spooled checkpoint unnoticed).
    save_resume_files || { say "cannot put last.pt, best.pt and logs into $RESUME_DIR"; exit 74; }
fi
exit "$rc"

#!/usr/bin/env bash
# The GPU check of the distributed / mixed-precision paths (issue 12), for a CUDA machine without network:
#
#     bash bench/gpu_check.sh [RESULTS_DIR]            # default RESULTS_DIR: $OUT, else bench/results/gpu-check
#     bash bench/gpu_check.sh --dry-run [RESULTS_DIR]  # the same steps, tiny, on whatever device is there (CPU too)
#
# Two files come out (few, for result folders that take only a few files): gpu_check.json, with one entry per step
# and every step's exit status and seconds, and gpu_check.log, every step's output. The steps, each with its own
# time limit (10 minutes at most in all; a few minutes on one H200):
#   environment      python, torch, transformers, accelerate, datasets, flash_attn; the GPUs
#   benchmark-sdpa   bench/compare_with_bart.py --quick (training and generation against BART), bf16, SDPA
#   benchmark-flash  the same with flash_attention_2, only where flash_attn is installed
#   train            python train/train.py --bf16: the default task once, timed (wall time, steps/s, metrics)
#   ddp, fsdp        accelerate launch --config_file train/accelerate/{ddp,fsdp}.yaml --num_processes <GPUs>
#                    train/train.py --bf16, a short run: the distributed type and wrapper the Trainer used, steps/s,
#                    metrics, and that the saved model.safetensors loads with from_pretrained
# A failing step is recorded and the next one runs; the exit status is that of the first failure.
#
# Expects (nothing is installed, no index is reached): a python (PYTHON, default python3) with torch (CUDA),
# transformers >= 5.17, accelerate, datasets, tokenizers, safetensors and matplotlib. This checkout is put on
# PYTHONPATH ahead of anything installed: hf_tiny_transformer from the repository root, and hf_tiny_transformer_train
# (train/, a package-dir mapping in pyproject.toml) through a symbolic link in a temporary folder. So no pip install
# is needed; `pip install --no-deps --no-build-isolation -e .` would also work offline where setuptools >= 68 is
# installed, but is not required, and an installed copy from elsewhere cannot shadow this checkout.
set -uo pipefail

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="$(mkdir -p "${1:-${OUT:-$ROOT/bench/results/gpu-check}}" && cd "${1:-${OUT:-$ROOT/bench/results/gpu-check}}" && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/pythonpath"
ln -s "$ROOT/train" "$WORK/pythonpath/hf_tiny_transformer_train"
export PYTHONPATH="$ROOT:$WORK/pythonpath${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_HOME="$WORK/hf_home" HF_DATASETS_CACHE="$WORK/datasets" MPLBACKEND=Agg
cd "$ROOT" || exit 1

STATUS=0
: >"$WORK/steps"
# run_step NAME LIMIT_SECONDS COMMAND...: run it with a time limit, log to WORK/NAME.log, record rc and seconds.
run_step() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout --kill-after=15 "$limit" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $((SECONDS - start))" >>"$WORK/steps"
    echo "   exit $rc after $((SECONDS - start)) s"
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$WORK/$name.log"
        [ "$STATUS" -ne 0 ] || STATUS=$rc
    fi
    return "$rc"
}

# finish STATUS: one JSON with every step's results and status, one log with every step's output; exit STATUS.
finish() {
    "$PY" - "$WORK" "$RESULTS" "$DRY_RUN" <<'EOF'
import json, sys
from pathlib import Path
work, results = Path(sys.argv[1]), Path(sys.argv[2])
steps = [dict(zip(("step", "exit_status", "seconds"), line.split())) for line in (work / "steps").open()]
report = {"dry_run": sys.argv[3] == "1", "steps": steps}
log = []
for step in steps:
    step["exit_status"], step["seconds"] = int(step["exit_status"]), int(step["seconds"])
    name = step["step"]
    log.append(f"===== {name}: exit {step['exit_status']} after {step['seconds']} s\n{(work / f'{name}.log').read_text()}")
    if (work / f"{name}.json").is_file():
        report[name] = json.loads((work / f"{name}.json").read_text())
report["all_passed"] = all(step["exit_status"] == 0 for step in steps)
(results / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
(results / "gpu_check.log").write_text("\n".join(log))
print(json.dumps({"steps": steps, "all_passed": report["all_passed"]}))
EOF
    echo "results in $RESULTS/gpu_check.json and gpu_check.log"
    exit "$1"
}

# ------------------------------------------------------------------------------------------------- environment
cat >"$WORK/environment.py" <<'EOF'
import importlib, json, os, platform, sys
import torch
report = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
          "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
          "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count(),
          "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
for name in ("transformers", "accelerate", "datasets", "tokenizers", "safetensors", "matplotlib", "flash_attn"):
    try:
        report[name] = getattr(importlib.import_module(name), "__version__", "installed")
    except Exception as error:  # missing, or broken against this torch
        report[name] = None
        report[name + "_error"] = f"{type(error).__name__}: {error}"
import hf_tiny_transformer, hf_tiny_transformer_train
report["hf_tiny_transformer_from"] = os.path.dirname(hf_tiny_transformer.__file__)
report["hf_tiny_transformer_train_from"] = os.path.dirname(hf_tiny_transformer_train.__file__)
print(json.dumps(report, indent=2))
EOF
run_step environment 60 "$PY" "$WORK/environment.py" || { echo "no usable python: stopping"; finish 1; }
sed -n '/^{/,$p' "$WORK/environment.log" >"$WORK/environment.json"
read -r GPUS FLASH < <("$PY" -c "import json; e = json.load(open('$WORK/environment.json')); \
print(e['gpus'], int(e['flash_attn'] is not None))")
if [ "$DRY_RUN" -eq 1 ]; then
    PROCESSES=2
elif [ "$GPUS" -ge 1 ]; then
    PROCESSES=$GPUS
else
    echo "no CUDA device: run with --dry-run to check the steps on this machine"
    finish 1
fi

# --------------------------------------------------------------------------------------------------- benchmark
BENCH_SIZE=(--quick)
[ "$DRY_RUN" -eq 0 ] || BENCH_SIZE=(--smoke)
run_step benchmark-sdpa 120 "$PY" -m bench.compare_with_bart "${BENCH_SIZE[@]}" --sections training,generation \
    --attn_implementation sdpa --output "$WORK/benchmark-sdpa.json"
if [ "$FLASH" -eq 1 ]; then
    run_step benchmark-flash 90 "$PY" -m bench.compare_with_bart "${BENCH_SIZE[@]}" --sections training,generation \
        --attn_implementation flash_attention_2 --output "$WORK/benchmark-flash.json"
fi

# ------------------------------------------------------------------------------------------ train.py and launches
# Runs train.py's main (all its flags), then, on the main process, writes what the Trainer did to the JSON path given
# first, and loads the saved folder back with from_pretrained.
cat >"$WORK/probe.py" <<'EOF'
import json, sys, time
from pathlib import Path
import torch
from safetensors import safe_open
from transformers import AutoModelForSeq2SeqLM
from hf_tiny_transformer_train import train

started = time.perf_counter()
trainer = train.main(sys.argv[2:])
if trainer.is_world_process_zero():
    output_dir = Path(trainer.args.output_dir)
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    report = {
        "wall_s": time.perf_counter() - started,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "num_processes": trainer.accelerator.num_processes,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "device": str(trainer.args.device),
        "fsdp_enabled": trainer.is_fsdp_enabled,
        "fsdp_version": getattr(plugin, "fsdp_version", None),
        "wrapped_model": type(trainer.model_wrapped).__name__,
        "find_unused_parameters": getattr(trainer.model_wrapped, "find_unused_parameters", None),
        "metrics": json.loads((output_dir / "all_results.json").read_text()),
        "safetensors_files": sorted(path.name for path in output_dir.glob("*.safetensors")),
    }
    with safe_open(output_dir / "model.safetensors", "pt") as saved:
        report["saved_dtypes"] = sorted({str(saved.get_tensor(name).dtype) for name in saved.keys()})
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(output_dir)
    report["reloaded_class"] = type(reloaded).__name__
    report["reloaded_parameters"] = reloaded.num_parameters()
    Path(sys.argv[1]).write_text(json.dumps(report, indent=2) + "\n")
EOF
# The default task as `python train/train.py` trains it (corpus sizes, steps), in bf16; the launches reuse its
# cached corpus and stop after a few hundred steps.
if [ "$DRY_RUN" -eq 1 ]; then
    DATA=(--task copy --max_length 4 --train_size 512 --validation_size 32 --test_size 32 --d_model 32 --ffn_dim 64
          --per_device_eval_batch_size 32)
    FULL=(--max_steps 10 --eval_steps 10 --save_steps 10 --logging_steps 5)
    SHORT=(--max_steps 10 --eval_steps 10 --save_steps 10 --logging_steps 5)
else
    DATA=()
    FULL=()
    SHORT=(--max_steps 300 --eval_steps 300 --save_steps 300 --logging_steps 50)
fi
COMMON=(--bf16 true --disable_tqdm true "${DATA[@]}")
run_step train 180 "$PY" "$WORK/probe.py" "$WORK/train.json" "${COMMON[@]}" "${FULL[@]}" \
    --output_dir "$WORK/train"
for strategy in ddp fsdp; do
    run_step "$strategy" 90 "$PY" -m accelerate.commands.launch --config_file "train/accelerate/$strategy.yaml" \
        --num_processes "$PROCESSES" "$WORK/probe.py" "$WORK/$strategy.json" "${COMMON[@]}" "${SHORT[@]}" \
        --output_dir "$WORK/$strategy"
done

# ------------------------------------------------------------------------------------------------------ summary
finish "$STATUS"

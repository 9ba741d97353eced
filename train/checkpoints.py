"""Which checkpoint a restarted run resumes from: the newest complete one, never one a killed run half-wrote.

The Trainer writes a checkpoint's files one after another (model, tokenizer, optimizer, scheduler, RNG state) and
`trainer_state.json` last, without a temporary name. A run killed on the way leaves a `checkpoint-N` folder with some
files missing or truncated; transformers' `get_last_checkpoint` still returns it, and resuming from it then fails
on every restart ("Can't find a valid checkpoint").
"""

import json
import logging
import re
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Written by torch.save, which makes zip archives: a truncated one lacks the archive's closing directory, which
# zipfile checks without unpickling anything.
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a run cannot resume from the `checkpoint` folder, or None if it is complete."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (ValueError, UnicodeDecodeError):
        return "trainer_state.json is truncated"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json has no global_step"
    index = checkpoint / "model.safetensors.index.json"
    try:
        weight_files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else []
    except (ValueError, UnicodeDecodeError, KeyError, AttributeError):
        return f"{index.name} is truncated"
    for name in weight_files or ["model.safetensors"]:
        try:
            with safe_open(checkpoint / name, framework="pt") as weights:
                weights.keys()
        except FileNotFoundError:
            return f"{name} is missing"
        except (SafetensorError, OSError) as error:
            return f"{name} is damaged ({error})"
    for name in TORCH_STATE_FILES:
        if (checkpoint / name).exists() and not zipfile.is_zipfile(checkpoint / name):
            return f"{name} is truncated"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` that a run can resume from, or None if there is none.

    Newer folders that are incomplete are skipped with a warning and left on disk; the resumed run writes step N's
    checkpoint into the same folder again when it gets there.
    """
    steps = {}
    for path in Path(output_dir).iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir():
            steps[int(match.group(1))] = path
    for step in sorted(steps, reverse=True):
        problem = checkpoint_problem(steps[step])
        if problem is None:
            return str(steps[step])
        logger.warning("Skipping %s: %s (a run was probably stopped while writing it).", steps[step], problem)
    return None

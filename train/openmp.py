"""How torch's idle OpenMP threads wait, chosen before torch starts them (OpenMP reads `OMP_WAIT_POLICY` once).

torch's CPU kernels share their work among OpenMP threads (GNU libgomp in the Linux wheels). Between two parallel
regions an idle thread either spins, ready at once, or sleeps until the kernel wakes it. A training step of this
model runs thousands of small regions, so the choice moves the whole step (bench/README.md, "OpenMP wait policy"):

- on CPUs no other process uses, spinning (libgomp's default, what any torch program gets) made sort's and
  reverse's training steps 1.19-1.24x faster than sleeping (`OMP_WAIT_POLICY=PASSIVE`);
- next to another busy process, a spinning thread holds the core its sibling thread is waiting for: steps took
  1.6x longer than with sleeping threads (15x in an earlier measurement).

So `python train/train.py` keeps libgomp's default when the CPUs are free as it starts, and makes idle threads sleep
when other processes already keep at least half a CPU busy. An `OMP_WAIT_POLICY` the user set is left as it is.
Nothing happens when train.py is imported (by a benchmark or a test): only its `__main__` block calls
`restart_with_wait_policy`.

The policy cannot change once torch has loaded, but the number of threads can: `ThreadsFollowLoadCallback` gives
torch only the CPUs other processes leave free, measured every few seconds while the run trains and evaluates, and
all of its threads again once they are free. A reverse run's steps, next to a benchmark that kept the two cores busy:
5.1-5.4 steps/s with one thread against 3.0-3.6 with two spinning ones (bench/README.md, "OpenMP wait policy"); a
run that chose spinning on free CPUs and then met other jobs took 280 s for 400 steps that take 50 s.
"""

import logging
import os
import sys
import time
from collections.abc import Callable, MutableMapping

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

# Other processes' load, in CPUs, from which idle threads sleep instead of spinning.
BUSY_CPUS_THRESHOLD = 0.5


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat (Linux); None where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal ...: idle and iowait are the time no process ran.
    ticks = [int(value) for value in fields[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


class OtherProcessesLoad:
    """How many CPUs other processes kept busy since the previous reading: every CPU's busy time (/proc/stat) less
    this process's own CPU time (its spinning threads included), over the wall time between the two readings."""

    def __init__(self):
        self.previous = self.reading()

    @staticmethod
    def reading() -> tuple[tuple[int, int] | None, float, float]:
        return cpu_times(), time.process_time(), time.monotonic()

    def __call__(self) -> float | None:
        """Busy CPUs of other processes since the previous call (None where /proc/stat cannot be read)."""
        before, own_before, wall_before = self.previous
        after, own_after, wall_after = self.previous = self.reading()
        if before is None or after is None or after[1] <= before[1] or wall_after <= wall_before:
            return None
        all_busy = (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)
        own_busy = (own_after - own_before) / (wall_after - wall_before)
        return max(0.0, all_busy - own_busy)


def busy_cpus(interval: float = 0.1) -> float:
    """How many CPUs the machine's other processes keep busy, measured over `interval` seconds while this process
    sleeps; 0.0 where the load cannot be read (no /proc/stat)."""
    load = OtherProcessesLoad()
    time.sleep(interval)
    busy = load()
    return 0.0 if busy is None else busy


def choose_wait_policy(
    environ: MutableMapping[str, str], measure_other_load: Callable[[], float] = busy_cpus
) -> str | None:
    """Where the user set no policy, set `OMP_WAIT_POLICY=PASSIVE` in `environ` if other processes keep at least
    BUSY_CPUS_THRESHOLD CPUs busy (`measure_other_load`). Returns the policy OpenMP will use (None: libgomp's default,
    spinning). With one thread per process (`OMP_NUM_THREADS=1`, as the tests and torchrun's ranks run) no thread
    ever waits idle: nothing is measured or set."""
    if "OMP_WAIT_POLICY" in environ or environ.get("OMP_NUM_THREADS") == "1":
        return environ.get("OMP_WAIT_POLICY")
    if measure_other_load() >= BUSY_CPUS_THRESHOLD:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return environ.get("OMP_WAIT_POLICY")


def restart_with_wait_policy(environ: MutableMapping[str, str] = os.environ) -> None:
    """Where this process's idle OpenMP threads should sleep (choose_wait_policy), start the program again with the
    policy set, as the same process (os.execv keeps the process id, so a launcher such as torchrun still waits for
    it). By the time a script's `__main__` block runs, its imports have loaded torch, whose OpenMP runtime
    has read the environment already; the new program reads the policy as torch loads. It happens at most once (the
    policy is then set) and only where the CPUs are busy: on free CPUs nothing is set and nothing restarts."""
    if "OMP_WAIT_POLICY" not in environ and choose_wait_policy(environ) is not None:
        os.execv(sys.executable, sys.orig_argv)  # orig_argv keeps the interpreter's own options (torchrun's -u)


def threads_may_follow_load(training_args: TrainingArguments, environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether a run's torch threads may follow the machine's load: one process on a CPU, with more than one thread,
    and no thread count the user chose (`OMP_NUM_THREADS`, which launchers also set for their ranks)."""
    return (
        training_args.world_size == 1
        and training_args.device.type == "cpu"
        and "OMP_NUM_THREADS" not in environ
        and torch.get_num_threads() > 1
    )


class ThreadsFollowLoadCallback(TrainerCallback):
    """Every `interval` seconds of training or evaluation, set torch's intra-op threads to the CPUs other processes
    leave free (rounded, at least one, at most the run's own count as it started)."""

    def __init__(self, interval: float = 2.0, measure: Callable[[], float | None] | None = None):
        self.interval = interval
        self.threads = torch.get_num_threads()
        self.measure = measure if measure is not None else OtherProcessesLoad()
        self.last_check = time.monotonic()

    def follow_load(self) -> None:
        now = time.monotonic()
        if now - self.last_check < self.interval:
            return
        self.last_check = now
        busy = self.measure()
        if busy is None:
            return
        free = (os.cpu_count() or 1) - busy
        wanted = max(1, min(self.threads, int(free + 0.5)))
        if wanted != torch.get_num_threads():
            logger.info("Other processes keep %.1f CPUs busy: %d torch thread(s) from now on", busy, wanted)
            torch.set_num_threads(wanted)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.follow_load()

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        self.follow_load()

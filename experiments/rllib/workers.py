"""Setting up Ray's worker processes for a study (imports nothing heavy: Ray runs
`worker_setup` in every new worker, before the actor it will host is built).

    runtime_env(imports, import_path, log_dir)   the job's runtime environment: every worker
                                                 runs `worker_setup`
    worker_setup()                               its output to log_dir (if any), then the
                                                 study's `imports`
    use_assigned_cpus()                          torch's threads = the CPUs Ray gave this actor

Ray sets OMP_NUM_THREADS to an actor's CPUs, but torch fixes its thread count when first
imported; a worker that imported it earlier (a user module, RLlib) keeps one thread per core.
On 2 shared cores that made a trial 5-20x slower, so the trial and its env runners call
`use_assigned_cpus` when they start.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path

IMPORTS_VAR, IMPORT_PATH_VAR, LOG_DIR_VAR = "MEMRL_IMPORTS", "MEMRL_IMPORT_PATH", "MEMRL_LOG_DIR"


def runtime_env(imports: list[str], import_path: str, log_dir: Path | None) -> dict:
    """Ray runtime environment whose workers import `imports` (with `import_path` on sys.path:
    on a cluster that path must exist on every node) and, with a `log_dir`, write their
    output there (made on a node that lacks it); {} when there is nothing to set up."""
    env_vars = {}
    if imports:
        env_vars.update({IMPORTS_VAR: ",".join(imports), IMPORT_PATH_VAR: import_path})
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        env_vars[LOG_DIR_VAR] = str(log_dir)
    if not env_vars:
        return {}
    return {"env_vars": env_vars, "worker_process_setup_hook": f"{__name__}.worker_setup"}


def worker_setup() -> None:
    """Ray worker setup hook (see runtime_env)."""
    log_dir = os.environ.get(LOG_DIR_VAR)
    if log_dir:
        # a node without a shared filesystem has no driver's study folder: it gets its own
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a", buffering=1)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    import_modules(list(filter(None, os.environ.get(IMPORTS_VAR, "").split(","))),
                   os.environ.get(IMPORT_PATH_VAR, ""))


def import_modules(modules: list[str], import_path: str) -> None:
    """Import `modules`, with `import_path` first on sys.path."""
    if modules and import_path and import_path not in sys.path:
        sys.path.insert(0, import_path)
    for module in modules:
        importlib.import_module(module)


def use_assigned_cpus() -> None:
    """Inside a Ray actor: torch's intra-op threads = the CPUs Ray assigned to it (at least
    1). Elsewhere nothing changes."""
    import ray
    if not ray.is_initialized():
        return
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return
    import torch
    cpus = context.get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, math.floor(cpus)))

"""`rssm-train [overrides]` (or `python -m rssm`, `torchrun ... -m rssm`): the hydra app that composes the config
and runs `rssm.training.train` in hydra's output directory.

The training loop and torch are imported when the task starts, not before: hydra answers `--help` and shell
completion (`-sc query=bash`, once per Tab) without them.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rssm.cli import (
    PROG,
    HeldStderr,
    config_source,
    fail,
    merge_overrides,
    register_resolvers,
    resumed_config,
    with_general_env,
)
from rssm.config import UserError, register_configs
from rssm.messages import say

if TYPE_CHECKING:
    from rssm.distributed import Ranks


def run(cfg: DictConfig, held: HeldStderr, ranks: Ranks | None) -> float:
    """The task of `rssm-train`: a new run in hydra's output directory, or with `resume=` the run's own
    config plus what the command line changes, continued in the run's directory. Under torchrun, one rank of
    the job (`ranks`), in rank 0's directory."""
    from rssm import distributed
    from rssm.checkpoint import checkpoint_path
    from rssm.run_state import RunStopped
    from rssm.training import objective, rank_prefix, train

    held.release()
    ranks = ranks or distributed.SINGLE
    hydra_cfg = HydraConfig.get()
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)  # as typed: `${...}` unresolved
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if cfg.resume:
            cfg, overrides = resumed_config(cfg, overrides, lambda o: compose("config", overrides=o))
            run_dir = checkpoint_path(cfg.resume).parent
        else:
            overrides = merge_overrides([], overrides)
        last = train(cfg, ranks.share(run_dir), overrides, ranks)
    except UserError as e:
        fail(f"{rank_prefix(ranks)}{e}")
    except distributed.PeerLost as e:
        _ending(ranks)
        gone = distributed.absent(ranks)
        who = f"rank {', '.join(map(str, gone))} of the job ended" if gone else "another rank of the job ended"
        say(f"{PROG}: rank {ranks.rank}: {who} ({e}); stopping, the last checkpoint in {run_dir} is kept")
        sys.exit(1)
    except RunStopped as e:
        _ending(ranks)
        say(f"{PROG}: {rank_prefix(ranks)}{e}")
        if e.status == 1 and hydra_cfg.mode == RunMode.MULTIRUN:
            return float("nan")  # a diverged trial of a sweep: the sweeper goes on with the next
        sys.exit(e.status)
    return objective(cfg, last)


def _ending(ranks: Ranks) -> None:
    """A rank that is ending ignores further stops: torchrun stops the other ranks once one has exited, and this
    one's last line must not be cut short by it."""
    import signal

    if ranks.world > 1:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def main() -> None:
    """`rssm-train [overrides]`: hydra composes the config from configs/ and the command line."""
    ranks = None  # the single process; under torchrun (WORLD_SIZE above 1), this process's rank of the job
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from rssm import distributed

        ranks = distributed.start()
    try:
        register_configs()
        register_resolvers(ranks.share(datetime.now()) if ranks else None)  # rank 0's start names the run's dir
        sys.argv = [sys.argv[0], *with_general_env(sys.argv[1:])]
        with HeldStderr() as held:
            hydra.main(config_path=config_source(), config_name="config", version_base=None)(
                lambda cfg: run(cfg, held, ranks))()
    except BaseException:  # an exit with an error status, or a failure: the other ranks may be gone
        if ranks:
            distributed.stop(together=False)
        raise
    if ranks:
        distributed.stop(together=True)


if __name__ == "__main__":
    main()

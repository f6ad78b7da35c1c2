"""``kimi-lab train``'s command line before Hydra sees it.

Hydra writes into the run folder and prints its own multi-line errors before any of our
code runs, so three things happen first: the overrides are composed once (a bad one is one
``error:`` line, exit status 2, with the closest valid key), the output folder is checked
(writable; not a folder that holds a run, unless the run is being continued), and
``ckpt_path=auto`` without a folder gets the folder of the run it continues.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from kimi_lab.errors import ConfigError, KimiLabError, one_line


def prepare(argv: list[str]) -> list[str]:
    """Check the command line; the arguments to hand Hydra (with the resumed run's folder)."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc") for a in argv):
        return argv
    composed = _check_config(argv)
    if not any(a in ("--cfg", "-c") for a in argv):
        preflight_output(argv)
    return _inject_resume_dir(argv, composed)


# Hydra's command-line flags that take a value (``--cfg job``); ``--info`` may take one.
_HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
_HYDRA_VALUE_FLAGS |= {"--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _overrides_of(argv: list[str]) -> list[str]:
    """The overrides of a Hydra command line, without its flags and their values."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a in _HYDRA_VALUE_FLAGS:
            skip = True
        elif a in ("--info", "-i"):
            skip = i + 1 < len(argv) and argv[i + 1] in _INFO_TOPICS
        elif not a.startswith("-"):
            out.append(a)
    return out


def _check_config(argv: list[str]) -> DictConfig | None:
    """Compose once before Hydra does: a bad override is one ``error:`` line and exit status 2
    (for a sweep, its first job's overrides stand for all). The composed config, for a single run."""
    from kimi_lab.config import compose
    from kimi_lab.config.overrides import first_of_sweeps
    from kimi_lab.config.store import check

    sweep = any(a in ("-m", "--multirun") for a in argv)
    try:
        overrides = _overrides_of(argv)
        if sweep:
            check(overrides)  # every value of every sweep names a key or an option
        composed = compose(first_of_sweeps(overrides) if sweep else overrides)
    except KimiLabError as exn:
        print(f"error: {one_line(exn)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return None if sweep else composed


def _inject_resume_dir(argv: list[str], composed: DictConfig | None) -> list[str]:
    """``ckpt_path=auto`` without an explicit run dir continues the newest unfinished run of the experiment."""
    if "ckpt_path=auto" not in argv or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    if composed is None:
        return argv  # sweeps resume with hydra.sweep.dir=<the old sweep folder>
    from kimi_lab.tracking.resume import choose_run_to_resume

    choice = choose_run_to_resume(Path(composed.runs_dir) / str(composed.experiment))
    for note in choice.notes:
        print(f"ckpt_path=auto: {note}", flush=True)
    return argv if choice.run is None else [*argv, f"hydra.run.dir={choice.run}"]


def preflight_output(argv: list[str]) -> None:
    """Hydra writes into the run folder before our code runs: check the folder first."""
    from kimi_lab.tracking.preflight import check_writable

    explicit = [a.split("=", 1)[1] for a in argv if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    if explicit:  # the last of a key wins, as in Hydra
        target = Path(explicit[-1])
    else:
        runs = [a.split("=", 1)[1] for a in argv if a.startswith("runs_dir=")]
        target = Path(runs[-1] if runs else "runs")
    run_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    try:
        check_writable(target, "output folder")
        if run_dirs and not any(a.startswith(("ckpt_path=", "+ckpt_path=")) for a in argv):
            _refuse_to_overwrite(Path(run_dirs[-1]))
    except KimiLabError as exn:
        print(f"error: {one_line(exn)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _refuse_to_overwrite(run_dir: Path) -> None:
    """A fresh run into a folder that holds a run would overwrite its files and curves."""
    from kimi_lab.metrics import STATUS_FILE
    from kimi_lab.tracking.resume import describe

    if (run_dir / STATUS_FILE).is_file():
        raise ConfigError(
            f"hydra.run.dir={run_dir} already holds a run, {describe(run_dir)}: add ckpt_path=auto to "
            "continue it, or choose a new folder"
        )

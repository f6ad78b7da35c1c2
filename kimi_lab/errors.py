"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class KimiLabError(Exception):
    """A problem the user can fix (bad config, missing data, ...); no traceback needed."""


class ConfigError(KimiLabError):
    """A config value is out of range or inconsistent with another one."""


class DataError(KimiLabError):
    """A shard path is missing, empty or unreadable."""


class NonFiniteError(KimiLabError):
    """Too many NaN/Inf steps in a row: training stopped before it could corrupt a checkpoint."""


class OutputDirError(KimiLabError):
    """The run directory cannot take the run's files (read-only, not a folder, too little space)."""


def one_line(exn: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with its traceback."""
    text = str(exn).strip()
    if "Original Traceback" in text:  # torch.utils.data re-raising a worker's exception
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(exn).__name__

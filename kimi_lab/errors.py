"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class KimiLabError(Exception):
    """A problem the user can fix (bad config, missing data, ...); no traceback needed."""


class ConfigError(KimiLabError):
    """A config value is out of range or inconsistent with another one."""


class DataError(KimiLabError):
    """A shard path is missing, empty or unreadable."""

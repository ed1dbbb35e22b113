"""User-facing errors: one line, naming the field and the fix; the CLI prints them without a traceback."""


class RayflError(Exception):
    """Base class of errors caused by user input (config, data, paths)."""


class ConfigError(RayflError):
    """An invalid experiment configuration: names the field and how to fix it."""


class DataError(RayflError):
    """A data set that cannot be loaded or partitioned as asked."""

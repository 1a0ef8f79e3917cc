"""The one exception type of :mod:`gtpe.datasets`."""


class DatasetError(ValueError):
    """A dataset cannot be loaded: unknown name, a mirror file that is missing, unreadable or not
    the staged version, ... The message says what is wrong and names the file involved."""

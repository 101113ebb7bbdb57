"""The one error type of the data layer."""


class DataError(ValueError):
    """The data named by the config cannot be used; the message names the field and the fix."""

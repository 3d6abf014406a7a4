"""The one exception type that the CLI turns into a one-line message and exit status 2."""


class ConfigError(ValueError):
    """A bad user input: the message names the key and what is allowed. The CLI prints it, exits 2."""

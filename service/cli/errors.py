"""The CLI's one error: a one-line reason to exit non-zero."""


class CliError(Exception):
    """Printed as ``linnaeus-metrics: error: <message>``; exit code 2."""

"""Errors a user can act on. The CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user: a bad argument, a missing file, a malformed source."""


class QualityGateError(RuntimeError):
    """A data-quality gate failed: later steps must not publish."""

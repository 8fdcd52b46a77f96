"""Error classes shared across the package. Each subclasses a builtin."""


class DecodeError(ValueError):
    """Coded data that cannot be decoded: corrupt, truncated, or not ours."""

"""Error types. Messages name the input, the value and what is allowed, so a user can act on them."""


class SpacetimeValueError(ValueError):
    """Bad input: a size, a frame count, a preset name, a checkpoint that does not fit."""


class SpacetimeRuntimeError(RuntimeError):
    """Something failed while running (a missing optional dependency, a file that cannot be read)."""


class CheckpointMismatchError(SpacetimeValueError):
    """A checkpoint's keys or shapes do not match the model it was loaded into."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=(), suggestion=None):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.suggestion = suggestion

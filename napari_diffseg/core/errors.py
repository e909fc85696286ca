"""User-facing errors: one-line messages that the CLI prints and the GUI shows as notifications."""


class DiffsegError(Exception):
    """A problem the user can fix; the message is one line and says what to do."""


class InputError(DiffsegError):
    """Bad user data or paths: missing folders, unreadable files, shape mismatches, bad label values."""


class ModelError(DiffsegError):
    """A model folder or checkpoint that is missing, corrupt or was not written by napari-diffseg."""


class DuplicateImageError(InputError):
    """An image whose pixels are already in the project (``existing`` names it there)."""

    def __init__(self, message: str, existing: str):
        super().__init__(message)
        self.existing = existing


class UntrainedRunError(InputError):
    """A run that ended before its first optimisation step (the budget was too small): nothing was learned, and a
    model folder made for it holds nothing worth keeping."""

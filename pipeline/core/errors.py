"""The error type for problems the user can fix, kept import-light so the CLI can catch it cheaply."""


class JobError(Exception):
    """A problem with the user's input, recipe or output folder: printed, not traced."""

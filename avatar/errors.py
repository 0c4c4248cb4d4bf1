"""User-facing errors.

Anything a user can cause (bad file, bad option, incomplete dataset) raises `AvatarError` with one
line that names the file and the fix; the CLI prints it without a traceback and exits non-zero.
"""


class AvatarError(Exception):
    """A one-line, user-facing error. `exit_code` is what the CLI exits with."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

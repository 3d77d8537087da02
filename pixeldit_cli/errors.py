"""One exception for everything a user can get wrong; the CLI prints it as one line and exits non-zero."""


class PixelDiTError(Exception):
    """A user error: `message` says what is wrong, `hint` what to do about it."""

    def __init__(self, message: str, hint: str = "", exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

"""The classification scripts' one error for bad input: main.py and predict.py catch it at the top and report it
as one `error:` line without a traceback."""

__all__ = ['UserInputError']


class UserInputError(ValueError):
    """Bad input from the command line or the data: reported as one message, without a traceback."""

"""The one exception type for mistakes a user can make (bad path, bad data, bad flag).

The CLI prints these as a single line and exits with status 2; anything else is a bug and
keeps its traceback.
"""


class GptminiError(Exception):
    """A user-facing error whose message names the file/record and the fix."""

"""The one exception type that means "the user can fix this"."""


class NanoGPTError(Exception):
    """A problem caused by user input (a bad flag, a missing file, an unavailable device).

    The CLI prints these as a single line and exits non-zero; anything else is a bug and raises.
    The message should name the problem and the fix.
    """

"""The installed nano-gpt's version, in one place: checkpoints, exports and model cards record it."""

from importlib.metadata import PackageNotFoundError, version


def nano_gpt_version() -> str | None:
    """The installed package's version; None when running from a source tree that is not installed."""
    try:
        return version("nano-gpt")
    except PackageNotFoundError:
        return None

"""Sub-commands of the model area (filled in by the model work)."""


def register(subparsers):
    pass

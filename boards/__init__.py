"""Board data: one JSON file per board, every figure with its source.

A package only so that an installed ``moevit`` carries the files
(``importlib.resources.files("moevit.boards")``); the loader is
:mod:`moevit.hw.boards`.
"""

"""The instruction set: each unit's run-time descriptor as data (``descriptor``),
the one definition the units, the sequencer and the cost model read."""

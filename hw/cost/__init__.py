"""The cost model of a compiled program (cycles per instruction) and, later, the design-space search."""

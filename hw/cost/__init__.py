"""The cost model of a compiled program (cycles per instruction); the design-space search
to come."""

"""The accelerator's units in Amaranth: the reusable linear kernel, the streaming
attention kernel, softmax, GELU, LayerNorm, and the arithmetic they share
(``intexpr``: the golden model's formulas as expressions; ``seqmath``: divider and
square root)."""

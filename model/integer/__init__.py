"""The integer side of the model: the integer primitives (``intops``), quantization
(``quantize``), the bit-exact golden model (``golden``) and its evaluation and
commands (``evaluate``)."""

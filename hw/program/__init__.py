"""The instruction set and its compiler: each unit's run-time descriptor as data
(``descriptor``), the opcode table (``isa``), the memory image (``layout``), the
program and its files (``program``), the compiler from a quantized model
(``compiler``) and an instruction-level interpreter in numpy (``interpreter``)."""

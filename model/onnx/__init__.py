"""ONNX: export of the float model per task or with a task-id input (``export``),
the QDQ graph of a quantized model (``qdq``), checks and statistics in ONNX Runtime
(``check``) and their commands (``commands``)."""

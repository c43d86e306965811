"""HLS C++ of the accelerator units and its configuration generator.

* ``include/moevit_*.h``: the hand-written kernels in Vitis HLS style
  (``ap_int``, ``hls::stream``, pragmas), templated on a ``CONFIG_T``: the
  linear kernel, softmax, GELU, LayerNorm, attention and the MoE unit, each
  exactly :mod:`moevit.model.integer.intops`;
* :mod:`moevit.hls.generate`: ``parameters.h``, the ``CONFIG_T`` structs of a
  :class:`~moevit.hw.config.HwConfig`;
* ``tb/`` and :mod:`moevit.hls.csim`: one g++ testbench per kernel, run on the
  cases of :mod:`moevit.hls.cases` and compared in full with the golden model
  (``moevit hls csim``).
"""

"""HLS C++ of the accelerator units and its configuration generator.

* ``include/moevit_*.h``: the hand-written kernels in Vitis HLS style
  (``ap_int``, ``hls::stream``, pragmas), templated on a ``CONFIG_T``: the
  linear kernel, softmax, GELU, LayerNorm, attention and the MoE unit, each
  exactly :mod:`moevit.model.integer.intops`;
* :mod:`moevit.hls.generate`: ``parameters.h``, the ``CONFIG_T`` structs of a
  :class:`~moevit.hw.config.HwConfig`;
* ``tb/`` and :mod:`moevit.hls.csim`: one g++ testbench per kernel, run on the
  cases of :mod:`moevit.hls.cases` and compared in full with the golden model
  (``moevit hls csim``);
* :mod:`moevit.hls.scripts`: the Vitis HLS Tcl and ``v++ -c`` scripts of the
  HLS top per board and their ``tclsh`` dry run (``moevit hls scripts``,
  ``moevit hls synth``);
* :mod:`moevit.hls.hls4ml_baseline`: one expert FFN through hls4ml beside the
  golden model and our linear kernel (``moevit bench hls4ml``).
"""

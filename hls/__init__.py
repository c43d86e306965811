"""HLS C++ of the accelerator units and its configuration generator.

* ``include/moevit_*.h``: the hand-written kernels in Vitis HLS style
  (``ap_int``, ``hls::stream``, pragmas), templated on a ``CONFIG_T``: the
  linear kernel, softmax, GELU, LayerNorm, attention and the MoE unit, each
  exactly :mod:`moevit.model.integer.intops`;
* ``src/top.cpp``: the HLS top ``moevit_top``, which executes the compiled
  program (:mod:`moevit.hw.program`) on those kernels, as the RTL top does;
* :mod:`moevit.hls.generate`: ``parameters.h``, the ``CONFIG_T`` structs of a
  :class:`~moevit.hw.config.HwConfig` and the program format the top decodes;
* ``tb/`` and :mod:`moevit.hls.csim`: one g++ testbench per kernel, run on the
  cases of :mod:`moevit.hls.cases` and compared in full with the golden model,
  and the top's testbench, which runs the whole program as a host and is
  compared with the instruction-level interpreter (``moevit hls csim``);
* :mod:`moevit.hls.scripts`: the Vitis HLS Tcl and ``v++ -c`` scripts of the
  HLS top per board and their ``tclsh`` dry run (``moevit hls scripts``,
  ``moevit hls synth``);
* :mod:`moevit.hls.hls4ml_baseline`: one expert FFN through hls4ml beside the
  golden model and our linear kernel (``moevit bench hls4ml``).
"""

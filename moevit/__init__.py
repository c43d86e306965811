"""moevit: a co-design flow for Mixture-of-Experts Vision Transformers on FPGAs.

The sub-packages live in the repository's top-level folders (``model/`` is
``moevit.model``, ``hw/`` is ``moevit.hw``, ...); this package holds what they
share: the error types, the build folder and the command line.

It also names the flow's main objects, for a notebook. The whole flow on one
object (:class:`moevit.Flow`)::

    import moevit

    flow = moevit.Flow.from_checkpoint("build/demo/tiny/model.pt")
    flow.quantize(images)                                   # the integer golden model
    flow.compile(hw="tiny")                                 # or board="zcu102"
    maps = flow.predict(images, "depth", backend="sim")     # equal to backend="golden"
    print(flow.summary())

or step by step::

    import moevit

    model, meta = moevit.load_checkpoint("build/demo/tiny/model.pt")
    images = moevit.SyntheticDataset(model.config, "val", size=8).images
    qmodel = moevit.quantize(model, images)                      # int8, calibrated
    depth = moevit.golden_predict(qmodel, images, "depth")       # the integer golden model
    moevit.export_onnx(model, "semseg", "build/tiny-semseg.onnx")
    hw = moevit.get_hw_config("tiny")

Each name is imported on first use (torch, onnx and amaranth are heavy), so
``import moevit`` and ``moevit --help`` stay fast.
"""

import os

# The float kernels pinned to AVX2 on every x86-64 machine (unless the caller says
# otherwise): AVX-512 ones round differently, and the signal models' random weights come
# from vectorized kernels (their quantization calibrates in float64, machine-independent).
# Set before torch loads, which reads them once.
for _name, _isa in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
                    ("ONEDNN_MAX_CPU_ISA", "AVX2")):
    os.environ.setdefault(_name, _isa)

import importlib

from moevit.errors import CheckpointError, ConfigError, MoevitError

__version__ = "0.1.0"

# name -> "module:attribute", imported on first access (PEP 562).
_LAZY = {
    # configs
    "CONFIGS": "moevit.model.config:CONFIGS",
    "ModelConfig": "moevit.model.config:ModelConfig",
    "TaskSpec": "moevit.model.config:TaskSpec",
    "get_config": "moevit.model.config:get_config",
    # the float model, its data, training and evaluation
    "MoEViT": "moevit.model.moevit:MoEViT",
    "load_checkpoint": "moevit.model.checkpoint:load_checkpoint",
    "save_checkpoint": "moevit.model.checkpoint:save_checkpoint",
    "SyntheticDataset": "moevit.model.data:SyntheticDataset",
    "open_dataset": "moevit.model.datasets:open_dataset",
    "TrainOptions": "moevit.model.train:TrainOptions",
    "train": "moevit.model.train:train",
    "evaluate": "moevit.model.evaluate:evaluate",
    # quantization and the integer golden model
    "QuantizedModel": "moevit.model.integer.quantize:QuantizedModel",
    "quantize": "moevit.model.integer.quantize:quantize",
    "load_quantized": "moevit.model.integer.quantize:load_quantized",
    "save_quantized": "moevit.model.integer.quantize:save_quantized",
    "golden_predict": "moevit.model.integer.golden:predict",
    "golden_run": "moevit.model.integer.golden:run",
    # ONNX
    "export_onnx": "moevit.model.onnx.export:export_onnx",
    "export_qdq": "moevit.model.onnx.qdq:export_qdq",
    # hardware
    "HwConfig": "moevit.hw.config:HwConfig",
    "get_hw_config": "moevit.hw.config:get_hw_config",
    # the whole flow on one object, and the host driver
    "Flow": "moevit.flow:Flow",
    "Accelerator": "moevit.host.driver:Accelerator",
    "open_backend": "moevit.host.backend:open_backend",
}

__all__ = ["__version__", "MoevitError", "ConfigError", "CheckpointError", *_LAZY]


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'moevit' has no attribute {name!r}")
    module, attribute = target.split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

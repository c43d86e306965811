"""A compiled program: instructions, memory layout and packed weights; its files.

``program.bin`` is the instruction stream the sequencer fetches, little-endian
32-bit words: a header of :data:`HEADER_WORDS` words, then each
instruction's descriptor words (its opcode, in the low byte of its first
word, gives its length through :data:`~moevit.hw.program.isa.OPCODES`).

=====  ==============  ======================================================
word   field           meaning
=====  ==============  ======================================================
0      magic           ``b"MVPG"``
1      version         :data:`VERSION`
2      header_words    :data:`HEADER_WORDS`
3, 4   hw_hash         first 8 bytes of the SHA-256 of the HwConfig (its JSON)
5      bus_bits        data width of the memory bus
6      tasks           tasks of the model (a larger task id is an error)
7      instructions    number of instructions
8      body_words      words after the header
9      memory_bytes    size of the memory image; every address lies below it
10     scratch_at      first byte of the activation scratch (weights below)
11     input_at        first byte of the input image
12     output_at       first byte of the output (the input's pitch: output_at - input_at)
13     output_end      first byte past the output (its pitch: output_end - output_at),
                       and the on-chip window's first byte
14     onchip_end      first byte past the on-chip window (the program follows);
                       ``onchip_end - output_end`` at most the HwConfig's ``onchip_bytes``
15     body_crc        CRC-32 of the body's bytes
16     batch           images one run of the body computes (1..); the input and
                       output regions hold them one after the other
17-30  reserved        0
31     header_crc      CRC-32 of words 0..30
=====  ==============  ======================================================

Words 10..14 are :meth:`~moevit.hw.program.layout.Layout.boundaries`: the top
relocates each address by the kind of region they give it to the host's
buffer of that kind (weights, scratch, input, output: the ``s_axi_control``
arguments), so the host may place the buffers anywhere; an address in the
on-chip window ``[output_end, onchip_end)`` is served by the accelerator's
own activation memory and has no host buffer. The header fills 128 bytes, so
the body starts on a bus word of every width up to 1024 bits.

Version 3 added the window (``onchip_end``) and grew the header from 16 to 32
words; version 4 added ``batch`` (a batched program runs its body on ``batch``
images at once, :mod:`moevit.hw.program.compiler`; with ``batch`` 1 its body,
weights and layout are those version 3 gave). An older program is refused with a
message to compile it again.

The top's ``images`` register counts runs of the body, so a start computes
``images * batch`` images: run N reads the input region N region sizes on (its
batch of images) and writes the output region as far on. The top does not read
``batch``: the regions' pitches carry it; the host reads it to split its images.

A folder written by :func:`write_program` holds ``program.bin``,
``weights.bin`` (the bytes of the memory image from 0 to the end of the last
``weights`` region, in whole bus words), ``layout.json`` (format, version, the model and
hardware configs, the regions, the tasks and the SHA-256 of both binary
files) and ``program.lst`` (:func:`listing`). :func:`read_program` checks
all of it and rejects a corrupt or mismatched file with a
:class:`ProgramError` naming the file and the field.
"""

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moevit.errors import CheckpointError, ConfigError
from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import DescriptorError
from moevit.hw.program.isa import CONCURRENT_BIT, OPCODES
from moevit.hw.program.layout import Layout

__all__ = ["Program", "ProgramError", "encode", "decode", "hw_hash", "listing",
           "write_program", "read_program", "MAGIC", "VERSION", "HEADER_WORDS", "HEADER_FIELDS",
           "BOUNDARY_FIELDS", "FILES"]

MAGIC = int.from_bytes(b"MVPG", "little")
VERSION = 4
HEADER_WORDS = 32
#: Words reserved (0) between the body's CRC and the header's.
RESERVED_FIELDS = tuple(f"reserved{k}" for k in range(17, 31))
HEADER_FIELDS = ("magic", "version", "header_words", "hw_hash_lo", "hw_hash_hi", "bus_bits",
                 "tasks", "instructions", "body_words", "memory_bytes", "scratch_at", "input_at",
                 "output_at", "output_end", "onchip_end", "body_crc", "batch", *RESERVED_FIELDS,
                 "header_crc")
#: The header words that place the regions (``Layout.boundaries``), in order.
BOUNDARY_FIELDS = ("scratch_at", "input_at", "output_at", "output_end", "onchip_end")
FILES = ("program.bin", "weights.bin", "layout.json", "program.lst")
LAYOUT_FORMAT = "moevit-layout"


class ProgramError(CheckpointError):
    """A compiled program's file is missing, corrupt, or made for another hardware."""


def hw_hash(hw: HwConfig) -> int:
    """The 64-bit fingerprint of a HwConfig that a program records (of its hardware:
    :meth:`HwConfig.rtl`)."""
    text = json.dumps(hw.rtl().to_dict(), sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass
class Program:
    """One program for every task of a model.

    Attributes
    ----------
    hw : HwConfig
    instructions : list of Descriptor
    layout : Layout
        Every region of the memory image, the program's own included.
    weights : bytes
        The image's bytes from 0 to the end of the last ``weights`` region, in
        whole bus words.
    tasks : list of dict
        Per task: ``name``, ``index``, ``classes`` and ``output_shape`` (the
        head's int8 output ``(patches, classes*patch*patch)`` in the
        ``output`` region).
    model : dict
        The model config (``ModelConfig.to_dict()``).
    batch : int
        Images one run of the body computes (the header's ``batch``).
    concurrent : tuple of bool
        Per instruction, on a top of two issue lanes (``hw.issue_lanes``): it does not
        depend on the instruction last issued to the other lane
        (:data:`~moevit.hw.program.isa.LANE_OF`), so it may start while that one runs;
        empty: none is. Bit :data:`~moevit.hw.program.isa.CONCURRENT_BIT` of its first word.
    streams : tuple of int
        Per instruction of a program of two streams (two issue lanes): the half batch it
        computes, 0 or 1, or -1 after both (the head); empty for one stream. What the
        compiler interleaved (``layout.json``'s ``streams``), not in the binary.
    """

    hw: HwConfig
    instructions: list
    layout: Layout
    weights: bytes
    tasks: list = field(default_factory=list)
    model: dict = field(default_factory=dict)
    batch: int = 1
    concurrent: tuple = ()
    streams: tuple = ()

    def encode(self) -> bytes:
        return encode(self.hw, self.instructions, tasks=len(self.tasks),
                      bus_bits=self.layout.bus_bits, memory_bytes=self.layout.size,
                      boundaries=self.layout.boundaries(), batch=self.batch,
                      concurrent=self.concurrent)

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)`` of one input image (the input region holds ``batch`` of them)."""
        return (self.model["in_chans"], *self.model["image_size"])

    @property
    def image_rows(self) -> int:
        """Rows from one image's first output row to the next image's, in the ``output``
        region: the tokens of an image (its patches, then the row the next image's
        class token takes; see :mod:`moevit.hw.program.compiler`)."""
        return (self.layout["output"].shape[0] + 1) // self.batch

    def memory_image(self) -> np.ndarray:
        """The memory image before a run: weights and program in place, the rest 0."""
        image = np.zeros(self.layout.size, np.uint8)
        image[:len(self.weights)] = np.frombuffer(self.weights, np.uint8)
        region, binary = self.layout["program"], self.encode()
        if len(binary) > region.size:
            raise ProgramError(f"Program of {len(binary)} bytes does not fit its "
                               f"{region.size}-byte region")
        image[region.offset:region.offset + len(binary)] = np.frombuffer(binary, np.uint8)
        return image

    def listing(self) -> str:
        text = listing(self.instructions, self.layout, self.concurrent)
        if self.batch > 1:
            text += (f"# batch: {self.batch} images per run of the body, image b's input "
                     f"{self.layout['input'].size // self.batch} bytes and its output "
                     f"{self.image_rows} rows on from image b-1's\n")
        return text


# The binary -----------------------------------------------------------------------------
def program_size(instructions) -> int:
    """Bytes of ``program.bin`` for these instructions."""
    return 4 * (HEADER_WORDS + sum(d.words() for d in instructions))


def encode(hw, instructions, *, tasks, bus_bits, memory_bytes, boundaries, batch=1,
           concurrent=()) -> bytes:
    """``program.bin`` of ``instructions`` (see the module's table); ``boundaries`` as
    ``Layout.boundaries()`` gives them; ``batch`` images per run of the body;
    ``concurrent``: per instruction, its :data:`~moevit.hw.program.isa.CONCURRENT_BIT`."""
    words = []
    for k, d in enumerate(instructions):
        packed_words = list(d.pack())
        if k < len(concurrent) and concurrent[k]:
            packed_words[0] |= CONCURRENT_BIT
        words += packed_words
    body = np.array(words, "<u4").tobytes()
    digest = hw_hash(hw)
    header = [MAGIC, VERSION, HEADER_WORDS, digest & 0xFFFFFFFF, digest >> 32, bus_bits, tasks,
              len(instructions), len(body) // 4, memory_bytes,
              *(boundaries[name] for name in BOUNDARY_FIELDS), zlib.crc32(body), batch,
              *(0 for _ in RESERVED_FIELDS)]
    header.append(zlib.crc32(np.array(header, "<u4").tobytes()))
    return np.array(header, "<u4").tobytes() + body


def read_header(data: bytes, what="Program") -> dict:
    """The header fields of ``program.bin``'s bytes, checked for magic, version and CRC."""
    if len(data) < 4 * HEADER_WORDS:
        raise ProgramError(f"{what} is truncated: {len(data)} bytes, shorter than its "
                           f"{4 * HEADER_WORDS}-byte header")
    words = np.frombuffer(data[:4 * HEADER_WORDS], "<u4").astype(int)
    header = dict(zip(HEADER_FIELDS, (int(w) for w in words)))
    if header["magic"] != MAGIC:
        raise ProgramError(f"{what} is not a moevit program (magic {header['magic']:#010x})")
    if header["version"] != VERSION:
        hint = "; compile it again (moevit hw compile)" if header["version"] < VERSION else ""
        raise ProgramError(f"{what} has format version {header['version']}; this moevit reads "
                           f"version {VERSION}{hint}")
    if header["header_crc"] != zlib.crc32(data[:4 * (HEADER_WORDS - 1)]):
        raise ProgramError(f"{what} fails its header CRC: the header was changed or damaged")
    if header["header_words"] != HEADER_WORDS:
        raise ProgramError(f"{what} has a {header['header_words']}-word header; version "
                           f"{VERSION} has {HEADER_WORDS}")
    if any(header[name] for name in RESERVED_FIELDS):
        raise ProgramError(f"{what} has reserved header words that are not 0")
    if header["batch"] < 1:
        raise ProgramError(f"{what} has batch {header['batch']}; a run computes at least "
                           f"one image")
    return header


def decode(data: bytes, hw: HwConfig, what="Program"):
    """Instructions and header of ``program.bin``'s bytes, every check made.

    Raises
    ------
    ProgramError
        Truncated or longer than its header says, another magic, version or
        hardware, a CRC that fails, an unknown opcode, a descriptor that
        breaks a rule of ``hw``, an address outside the memory image.
    """
    data = bytes(data)
    header = read_header(data, what)
    digest = header["hw_hash_lo"] | header["hw_hash_hi"] << 32
    if digest != hw_hash(hw):
        raise ProgramError(f"{what} was compiled for another hardware than {hw.name!r} "
                           f"(HwConfig hash {digest:016x}, not {hw_hash(hw):016x})")
    bounds = [header[name] for name in (*BOUNDARY_FIELDS, "memory_bytes")]
    if bounds != sorted(bounds):
        raise ProgramError(f"{what} places its regions out of order: " + ", ".join(
            f"{name} {header[name]:#x}" for name in (*BOUNDARY_FIELDS, "memory_bytes")))
    window = header["onchip_end"] - header["output_end"]
    if window > hw.onchip_bytes:
        raise ProgramError(f"{what} has a {window}-byte on-chip window; hardware {hw.name!r} "
                           f"has {hw.onchip_bytes} bytes on chip")
    size = 4 * (HEADER_WORDS + header["body_words"])
    if len(data) != size:
        raise ProgramError(f"{what} has {len(data)} bytes; its header says {size}")
    body = data[4 * HEADER_WORDS:]
    if zlib.crc32(body) != header["body_crc"]:
        raise ProgramError(f"{what} fails its body CRC: the instructions were changed or damaged")
    words = np.frombuffer(body, "<u4").astype(np.int64)
    instructions, concurrent, at = [], [], 0
    while at < len(words):
        k = len(instructions)
        opcode = int(words[at]) & 0xFF & ~CONCURRENT_BIT
        cls = OPCODES.get(opcode)
        if cls is None:
            raise ProgramError(f"{what} instruction {k} has an unknown opcode {opcode}")
        if at + cls.words() > len(words):
            raise ProgramError(f"{what} instruction {k} ({cls.MNEMONIC}) is cut short")
        concurrent.append(bool(words[at] & CONCURRENT_BIT))
        if concurrent[-1] and hw.issue_lanes == 1:
            raise ProgramError(f"{what} instruction {k} ({cls.MNEMONIC}) is marked concurrent; "
                               f"hardware {hw.name!r} has one issue lane")
        try:
            image = words[at:at + cls.words()].copy()
            image[0] &= ~CONCURRENT_BIT
            desc = cls.unpack(hw, image)
        except (DescriptorError, ConfigError) as error:
            raise ProgramError(f"{what} instruction {k} ({cls.MNEMONIC}): {error}") from None
        for name, value in desc.to_dict().items():
            if name.endswith("_addr") and value >= header["memory_bytes"]:
                raise ProgramError(
                    f"{what} instruction {k} ({cls.MNEMONIC}): {name} {value:#x} lies outside "
                    f"the {header['memory_bytes']:#x}-byte memory image")
        instructions.append(desc)
        at += cls.words()
    if len(instructions) != header["instructions"]:
        raise ProgramError(f"{what} holds {len(instructions)} instructions; its header says "
                           f"{header['instructions']}")
    header["concurrent"] = tuple(concurrent) if any(concurrent) else ()
    return instructions, header


# The listing ----------------------------------------------------------------------------
_SHAPE_FIELDS = ("tokens", "rows", "in_features", "out_features", "max_out", "dim", "hidden",
                 "heads", "head_dim", "experts", "top_k", "expert", "channels", "columns",
                 "patch", "length", "tasks")


def _address(value, layout, when=None):
    region = layout.at(value, when)
    if region is None:
        return f"{value:#x}"
    offset = value - region.offset
    return f"{region.name}{f'+{offset}' if offset else ''}@{value:#x}"


def listing(instructions, layout, concurrent=()) -> str:
    """One line per instruction: index (``|`` after it: marked ``concurrent``), mnemonic,
    unit, shape, constants, addresses (named by their region, an on-chip one by the tensor
    live there) and the tensor it produces; with an on-chip window, a last line on what
    it holds."""
    lines = []
    for k, desc in enumerate(instructions):
        mark = "|" if k < len(concurrent) and concurrent[k] else " "
        fields = desc.to_dict()
        # The constants and operands of a fusion that is off say nothing.
        for flag, prefix in (("gelu", "gelu_"), ("residual", "res_")):
            if fields.get(flag) == 0:
                fields = {n: v for n, v in fields.items() if not n.startswith(prefix)}
        shape = " ".join(f"{n}={fields[n]}" for n in _SHAPE_FIELDS if n in fields)
        consts = " ".join(f"{n}={v}" for n, v in fields.items()
                          if n not in _SHAPE_FIELDS and not n.endswith("_addr")
                          and n not in ("token_tiles", "out_tiles", "chunks", "rounds"))
        addrs = " ".join(f"{n[:-5]}={_address(v, layout, k)}" for n, v in fields.items()
                         if n.endswith("_addr") and n != desc.OUTPUT)
        out = layout.at(fields[desc.OUTPUT], k)
        produces = out.name if out is not None else f"{fields[desc.OUTPUT]:#x}"
        if out is not None and out.kind == "onchip":
            produces += " (on chip)"
        lines.append(f"{k:4d}{mark} {desc.MNEMONIC:<11} {desc.UNIT:<9} {shape} | {consts} | "
                     f"{addrs} -> {produces}@{fields[desc.OUTPUT]:#x}")
    onchip = layout.onchip()
    if onchip["tensors"]:
        lines.append(f"# on chip: {onchip['tensors']} tensors in a {onchip['window']}-byte "
                     f"window (peak live {onchip['peak']} bytes; {onchip['sum']} one after "
                     f"the other)")
    return "\n".join(lines) + "\n"


# Files ----------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_program(program: Program, folder) -> list:
    """Write the four files of ``program`` into ``folder`` (each atomically); their paths."""
    from moevit.paths import output_folder, write_atomically

    folder = output_folder(folder, "program folder")
    binary = program.encode()
    meta = {"format": LAYOUT_FORMAT, "version": VERSION, "model": program.model,
            "hw": program.hw.to_dict(), "hw_hash": f"{hw_hash(program.hw):016x}",
            "batch": program.batch, "streams": list(program.streams),
            "layout": program.layout.to_dict(),
            "onchip": program.layout.onchip(), "tasks": program.tasks,
            "sha256": {"program.bin": _sha256(binary), "weights.bin": _sha256(program.weights)}}
    contents = {"program.bin": binary, "weights.bin": program.weights,
                "layout.json": (json.dumps(meta, indent=1) + "\n").encode(),
                "program.lst": program.listing().encode()}
    return [write_atomically(folder / name, lambda partial, data=data: partial.write_bytes(data),
                             name) for name, data in contents.items()]


def _read(folder, name):
    path = Path(folder) / name
    if not path.is_file():
        raise ProgramError(f"Program folder {folder} has no {name}")
    return path.read_bytes()


def read_program(folder) -> Program:
    """The program written by :func:`write_program` into ``folder``, every file checked.

    Raises
    ------
    ProgramError
        A file missing, corrupt or not matching the others.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ProgramError(f"Program folder {folder} does not exist")
    try:
        meta = json.loads(_read(folder, "layout.json").decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProgramError(f"{folder}/layout.json is not valid JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != LAYOUT_FORMAT:
        raise ProgramError(f"{folder}/layout.json is not a moevit program layout")
    if meta.get("version") != VERSION:
        older = isinstance(meta.get("version"), int) and meta["version"] < VERSION
        raise ProgramError(f"{folder}/layout.json has format version {meta.get('version')!r}; "
                           f"this moevit reads version {VERSION}"
                           f"{'; compile it again (moevit hw compile)' if older else ''}")
    try:
        hw = HwConfig.from_dict(meta["hw"])
        layout = Layout.from_dict(meta["layout"])
        tasks, model, sums = list(meta["tasks"]), dict(meta["model"]), dict(meta["sha256"])
        batch = int(meta["batch"])
        streams = tuple(int(k) for k in meta.get("streams", ()))
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise ProgramError(f"{folder}/layout.json is malformed: {error}") from None
    if layout.size != meta["layout"].get("size"):
        raise ProgramError(f"{folder}/layout.json says the image has {meta['layout'].get('size')} "
                           f"bytes; its regions end at {layout.size}")
    binary, weights = _read(folder, "program.bin"), _read(folder, "weights.bin")
    for name, data in (("program.bin", binary), ("weights.bin", weights)):
        if _sha256(data) != sums.get(name):
            raise ProgramError(f"{folder}/{name} does not match layout.json (SHA-256 differs): "
                               f"changed, damaged, or from another compilation")
    # A weights.bin of another length with its SHA-256 rewritten would leave weights
    # silently zero (shorter) or spill into the scratch (longer).
    need = max((r.end for r in layout.regions if r.kind == "weights"), default=0)
    if not need <= len(weights) <= layout.boundaries()["scratch_at"]:
        raise ProgramError(f"{folder}/weights.bin has {len(weights)} bytes; the layout's "
                           f"weights take {need} (up to {layout.boundaries()['scratch_at']} "
                           f"with padding)")
    instructions, header = decode(binary, hw, f"{folder}/program.bin")
    if header["memory_bytes"] != layout.size or header["tasks"] != len(tasks) \
            or header["bus_bits"] != layout.bus_bits or header["batch"] != batch \
            or any(header[k] != v for k, v in layout.boundaries().items()):
        raise ProgramError(f"{folder}/program.bin does not match layout.json (memory size, "
                           f"tasks, bus width, batch or region bounds differ)")
    if streams and (len(streams) != len(instructions) or not set(streams) <= {-1, 0, 1}):
        raise ProgramError(f"{folder}/layout.json's streams do not fit its "
                           f"{len(instructions)} instructions (one of -1, 0, 1 each)")
    return Program(hw, instructions, layout, weights, tasks, model, batch, header["concurrent"],
                   streams)

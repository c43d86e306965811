"""The device memory image of a program: named regions, and the weights in their beat order.

A :class:`Layout` places named :class:`Region` s one after the other, each
starting on a bus-word boundary, so no two overlap and every burst starts
aligned. Regions have a kind: ``weights`` (constants written once:
weights, per-channel constants, LayerNorm parameters, embeddings, task
tables), ``scratch`` (activations of one image), ``input``, ``output``,
``onchip`` and ``program``.

``onchip`` regions are the exception to "no two overlap": they are
activations the compiler placed in the accelerator's on-chip window (the
addresses between the output and the program), each with the instructions
``live`` during which it holds a value; two of them share bytes only when
their live ranges are disjoint (:meth:`Layout.place` puts them at the
offset the compiler chose).

The packers turn the quantized model's arrays into the bytes the units'
streams take (``moevit.hw.units.linear``'s ``w`` and ``chan``,
``moevit.hw.units.layernorm``'s ``param``); the unpackers read them back
(the interpreter and the tests use them, so a packing bug cannot hide).
"""

from dataclasses import dataclass, field

import numpy as np

from moevit.errors import ConfigError

__all__ = ["Region", "Layout", "KINDS", "BUS_WIDTHS", "pack_weight", "unpack_weight", "chan_bytes",
           "pack_chan", "unpack_chan", "pack_ln_params", "unpack_ln_params"]

KINDS = ("weights", "scratch", "input", "output", "onchip", "program")
#: Data widths of the AXI masters, in bits (Zynq HP ports 128, HBM 256-512).
BUS_WIDTHS = (32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Region:
    """``size`` bytes at byte ``offset`` of the image; ``shape`` and ``dtype``
    describe the tensor it holds (empty for packed beats); ``live``, for an
    ``onchip`` region, the first and the last instruction that use it."""

    name: str
    kind: str
    offset: int
    size: int
    shape: tuple = ()
    dtype: str = "uint8"
    live: tuple = ()

    @property
    def end(self) -> int:
        return self.offset + self.size

    def live_at(self, instruction) -> bool:
        """It holds a value during ``instruction`` (always, when it has no live range)."""
        return not self.live or self.live[0] <= instruction <= self.live[1]

    def to_dict(self) -> dict:
        data = {"name": self.name, "kind": self.kind, "offset": self.offset, "size": self.size,
                "shape": list(self.shape), "dtype": self.dtype}
        if self.live:
            data["live"] = list(self.live)
        return data

    @classmethod
    def from_dict(cls, data) -> "Region":
        if data["kind"] not in KINDS:
            raise ConfigError(f"Region kind must be one of {KINDS}, not {data['kind']!r}")
        return cls(str(data["name"]), str(data["kind"]), int(data["offset"]), int(data["size"]),
                   tuple(int(n) for n in data["shape"]), str(data["dtype"]),
                   tuple(int(n) for n in data.get("live", ())))


@dataclass
class Layout:
    """Regions placed in order, each aligned to the bus word.

    Parameters
    ----------
    bus_bits : int
        Data width of the memory bus (one of :data:`BUS_WIDTHS`).
    """

    bus_bits: int = 128
    regions: list = field(default_factory=list)

    def __post_init__(self):
        if self.bus_bits not in BUS_WIDTHS:
            raise ConfigError(f"Bus width must be one of {list(BUS_WIDTHS)} bits, "
                              f"not {self.bus_bits!r}")
        self._by_name = {r.name: r for r in self.regions}

    @property
    def align(self) -> int:
        return self.bus_bits // 8

    @property
    def size(self) -> int:
        """Bytes of the image (the end of the last region, aligned)."""
        end = max((r.end for r in self.regions), default=0)
        return -(-end // self.align) * self.align

    def add(self, name, kind, size, shape=(), dtype="uint8") -> Region:
        """Place a region of ``size`` bytes after the last one."""
        if kind not in KINDS:
            raise ValueError(f"Region kind must be one of {KINDS}, not {kind!r}")
        if name in self._by_name:
            raise ValueError(f"Region {name!r} is placed twice")
        region = Region(name, kind, self.size, int(size), tuple(int(n) for n in shape), dtype)
        self.regions.append(region)
        self._by_name[name] = region
        return region

    def tensor(self, name, kind, shape, dtype="int8") -> Region:
        """Place a tensor of ``shape`` and ``dtype``, row-major."""
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.add(name, kind, size, shape, dtype)

    def place(self, name, offset, shape, dtype, live) -> Region:
        """Place an ``onchip`` tensor at byte ``offset`` (aligned, at or past the regions
        of the other kinds), live during instructions ``live = (first, last)``."""
        if name in self._by_name:
            raise ValueError(f"Region {name!r} is placed twice")
        if offset % self.align:
            raise ValueError(f"On-chip tensor {name!r} at {offset:#x} is not bus-aligned")
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        region = Region(name, "onchip", int(offset), size, tuple(int(n) for n in shape), dtype,
                        tuple(int(k) for k in live))
        self.regions.append(region)
        self._by_name[name] = region
        return region

    def __getitem__(self, name) -> Region:
        return self._by_name[name]

    def __contains__(self, name) -> bool:
        return name in self._by_name

    def at(self, address: int, when=None):
        """The region holding byte ``address`` (with ``when``, an instruction: the one
        live then, as on-chip tensors share bytes); None outside every region."""
        for region in self.regions:
            if region.offset <= address < region.end \
                    and (when is None or region.live_at(when)):
                return region
        return None

    def of_kind(self, kind) -> list:
        return [r for r in self.regions if r.kind == kind]

    def boundaries(self) -> dict:
        """Where each kind of region starts: ``scratch_at``, ``input_at``, ``output_at``,
        ``output_end`` (where the output ends and the on-chip window begins) and
        ``onchip_end`` (where the window ends and the program begins). The top
        relocates an address by the kind these bounds give it (weights below
        ``scratch_at``) to the host's buffer of that kind; an image's input and
        output lie ``input_at..output_at`` and ``output_at..output_end`` apart
        (the pitch of a multi-image run).

        Raises
        ------
        ConfigError
            When the kinds are not placed in the order of :data:`KINDS`, each
            kind in one stretch, and the input, output and program present.
        """
        kinds = [r.kind for r in self.regions]
        order = [KINDS.index(k) for k in kinds]
        if order != sorted(order) or not {"input", "output", "program"} <= set(kinds):
            raise ConfigError("Layout regions must be placed weights, scratch, input, output, "
                              "program, in that order")

        def first(kind, default):
            return next((r.offset for r in self.regions if r.kind == kind), default)

        input_at = first("input", None)
        output_end = max(r.end for r in self.regions if r.kind == "output")
        return {"scratch_at": first("scratch", input_at), "input_at": input_at,
                "output_at": first("output", None),
                "output_end": -(-output_end // self.align) * self.align,
                "onchip_end": first("program", None)}

    def onchip_regions(self) -> list:
        """The on-chip tensors, in the order placed."""
        return self.of_kind("onchip")

    def onchip(self) -> dict:
        """What the on-chip window holds: ``tensors`` on chip, ``window`` bytes
        (``onchip_end - output_end``), ``peak`` (the most of their bytes live at one
        instruction: the least any placement needs) and ``sum`` (their bytes one after
        the other, as in DRAM scratch)."""
        tensors = self.onchip_regions()
        bounds = self.boundaries()
        last = max((r.live[1] for r in tensors), default=-1)
        peak = max((sum(r.size for r in tensors if r.live_at(k)) for k in range(last + 1)),
                   default=0)
        return {"tensors": len(tensors), "window": bounds["onchip_end"] - bounds["output_end"],
                "peak": peak, "sum": sum(r.size for r in tensors)}

    def to_dict(self) -> dict:
        return {"bus_bits": self.bus_bits, "size": self.size,
                "regions": [r.to_dict() for r in self.regions]}

    @classmethod
    def from_dict(cls, data) -> "Layout":
        return cls(int(data["bus_bits"]), [Region.from_dict(r) for r in data["regions"]])


# Packers: arrays -> the bytes of a unit's stream -------------------------------------------
def pack_weight(weight, cols: int) -> bytes:
    """The ``w`` beats of a linear layer: beat ``(ot, i)`` holds ``W[ot*cols + c, i]`` in
    lane ``c``; the output channels padded with zeros to whole tiles."""
    weight = np.asarray(weight, np.int8)
    out, width = weight.shape
    tiles = -(-out // cols)
    padded = np.zeros((tiles * cols, width), np.int8)
    padded[:out] = weight
    return padded.reshape(tiles, cols, width).transpose(0, 2, 1).tobytes()


def unpack_weight(data, out_features: int, in_features: int, cols: int) -> np.ndarray:
    """Inverse of :func:`pack_weight`: int8 ``(out_features, in_features)``."""
    tiles = -(-out_features // cols)
    beats = np.frombuffer(bytes(data), np.int8).reshape(tiles, in_features, cols)
    return beats.transpose(0, 2, 1).reshape(tiles * cols, in_features)[:out_features]


def chan_bytes(out_features: int, cols: int) -> int:
    """Bytes of the ``chan`` beats of ``out_features`` channels (whole tiles, 8 each)."""
    return -(-out_features // cols) * cols * 8


def pack_chan(bias, mult, shift, cols: int) -> bytes:
    """The ``chan`` beats: per channel one little-endian u64, bias s32 in bits
    0..31, multiplier in 32..46, shift in 47..52; padding channels (to whole
    tiles) have bias 0, multiplier 1, shift 1."""
    bias = np.asarray(bias, np.int64)
    padded = chan_bytes(len(bias), cols) // 8
    b, m, s = np.zeros(padded, np.int64), np.ones(padded, np.int64), np.ones(padded, np.int64)
    b[:len(bias)], m[:len(bias)], s[:len(bias)] = bias, mult, shift
    words = (b & 0xFFFFFFFF).astype(np.uint64) | (m.astype(np.uint64) << np.uint64(32)) \
        | (s.astype(np.uint64) << np.uint64(47))
    return words.astype("<u8").tobytes()


def unpack_chan(data, out_features: int):
    """Inverse of :func:`pack_chan`: ``(bias int32, mult, shift)`` of the first channels."""
    words = np.frombuffer(bytes(data), "<u8")[:out_features].astype(np.uint64)
    bias = (words & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)
    mult = ((words >> np.uint64(32)) & np.uint64(0x7FFF)).astype(np.int64)
    shift = ((words >> np.uint64(47)) & np.uint64(0x3F)).astype(np.int64)
    return bias, mult, shift


def pack_ln_params(gamma, beta) -> bytes:
    """The LayerNorm ``param`` beats: per channel one little-endian u64, gamma s16
    in bits 0..15, beta s41 in 16..56."""
    gamma = np.asarray(gamma, np.int64)
    beta = np.asarray(beta, np.int64)
    words = (gamma & 0xFFFF).astype(np.uint64) | ((beta & ((1 << 41) - 1)).astype(np.uint64)
                                                  << np.uint64(16))
    return words.astype("<u8").tobytes()


def unpack_ln_params(data, dim: int):
    """Inverse of :func:`pack_ln_params`: ``(gamma, beta)`` int64."""
    words = np.frombuffer(bytes(data), "<u8")[:dim].astype(np.uint64)
    gamma = (words & np.uint64(0xFFFF)).astype(np.int64)
    gamma = np.where(gamma >= 1 << 15, gamma - (1 << 16), gamma)
    beta = ((words >> np.uint64(16)) & np.uint64((1 << 41) - 1)).astype(np.int64)
    beta = np.where(beta >= 1 << 40, beta - (1 << 41), beta)
    return gamma, beta

"""Run-time descriptors: the operand of one accelerator instruction, as data.

A descriptor says what one unit computes in one operation (shape, tiling,
flags, per-tensor constants, buffer addresses). It is a frozen dataclass with
a fixed bit layout, so the same object

- packs to 32-bit words for the instruction stream and the host driver
  (:meth:`Descriptor.pack`, :meth:`Descriptor.unpack`),
- gives the RTL its port layout (:meth:`Descriptor.layout`, an Amaranth
  ``data.StructLayout`` whose fields read as ``desc.p.tokens``), and
- gives the cost model its work (:attr:`LinearDescriptor.macs`,
  :meth:`LinearDescriptor.ideal_cycles`).

It is validated against a :class:`~moevit.hw.config.HwConfig` when it is made.
A new unit adds its descriptor beside :class:`LinearDescriptor`: subclass
:class:`Descriptor`, give it an ``OPCODE``, ``MNEMONIC``, ``UNIT`` and
``OUTPUT``, declare each packed field with :func:`packed`, check it in
``validate``, and list it in :data:`moevit.hw.program.isa.OPCODES`.
"""

import dataclasses
import enum
from dataclasses import dataclass, field

from moevit.errors import ConfigError
from moevit.hw.config import HwConfig

__all__ = ["DescriptorError", "Descriptor", "LinearDescriptor", "AttentionDescriptor",
           "LayerNormDescriptor", "MoeDescriptor", "Fault", "FAULT_WIDTH", "fault_code",
           "shift_out_of_range", "packed", "OPCODE_WIDTH", "WORD_WIDTH"]

OPCODE_WIDTH = 8
WORD_WIDTH = 32


class DescriptorError(ConfigError):
    """A descriptor breaks a rule of its unit or of the hardware instance."""


class Fault(enum.IntEnum):
    """What a unit found wrong with a descriptor it was handed (its ``error`` port).

    The hardware does not trust the descriptor: a unit checks the opcode, the
    shape against its buffers, the derived fields against the others and the
    constants against their ranges. A faulty descriptor is taken from the
    ``desc`` stream and its operation skipped (no beat taken or produced); the
    unit's ``error`` port holds the code until the next descriptor is taken.
    """

    NONE = 0
    OPCODE = 1  # not this unit's opcode
    SHAPE = 2  # a size is zero or exceeds the unit's buffers
    DERIVED = 3  # a derived field disagrees with the fields it is derived from
    CONSTANT = 4  # a constant is out of its range (a zero multiplier, a shift not in 1..47)
    ALIGN = 5  # an address or a row of memory is not on the bus word the engine needs


#: Bits of a unit's ``error`` port.
FAULT_WIDTH = 3


def fault_code(checks):
    """The Amaranth expression of the first :class:`Fault` whose condition holds.

    ``checks``: ``(fault, condition)`` pairs in order of priority.
    """
    from amaranth.hdl import Const, Mux

    code = Const(Fault.NONE, FAULT_WIDTH)
    for fault, bad in reversed(checks):
        code = Mux(bad, Const(fault, FAULT_WIDTH), code)
    return code


def shift_out_of_range(shift):
    """A requantization shift outside 1..47, as an Amaranth expression."""
    return (shift == 0) | (shift > 47)


def packed(width: int, *, signed: bool = False, doc: str = "", derived: bool = False, **kwargs):
    """A dataclass field that is packed into the descriptor's words.

    Parameters
    ----------
    width : int
        Bits of the field.
    signed : bool
        Two's complement field.
    doc : str
        What the field means (listed by :meth:`Descriptor.describe`).
    derived : bool
        Computed from the other fields and the HwConfig in ``validate``
        (not a constructor argument).
    """
    metadata = {"bits": width, "signed": signed, "doc": doc}
    if derived:
        return field(default=0, init=False, metadata=metadata)
    return field(metadata=metadata, **kwargs)


@dataclass(frozen=True)
class Descriptor:
    """Base of every unit's descriptor.

    Subclasses are frozen dataclasses whose first field is ``hw`` (the
    :class:`HwConfig`, not packed) and whose other fields come from
    :func:`packed`. The packed image is ``opcode`` in the low
    ``OPCODE_WIDTH`` bits, then the fields in declaration order, LSB first,
    padded to whole 32-bit words.
    """

    OPCODE = None
    #: Mnemonic in listings, the unit that runs it, the field that addresses its output.
    MNEMONIC = None
    UNIT = None
    OUTPUT = None

    hw: HwConfig = field(compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.hw, HwConfig):
            raise DescriptorError(f"Descriptor needs a HwConfig, not {self.hw!r}")
        self.validate()
        for f in self.packed_fields():
            value = getattr(self, f.name)
            if isinstance(value, bool):
                object.__setattr__(self, f.name, value := int(value))
            if not isinstance(value, int):
                raise DescriptorError(
                    f"{type(self).__name__} field {f.name} must be an integer, not {value!r}")
            low, high = _range(f)
            if not low <= value <= high:
                raise DescriptorError(
                    f"{type(self).__name__} field {f.name} of {f.metadata['bits']} bits cannot "
                    f"hold {value}; its range is {low}..{high}")

    def validate(self) -> None:
        """Check the fields against ``self.hw`` and set the derived ones."""

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    # Layout -----------------------------------------------------------------
    @classmethod
    def packed_fields(cls):
        return [f for f in dataclasses.fields(cls) if "bits" in f.metadata]

    @classmethod
    def width(cls) -> int:
        """Bits of the packed image, opcode included (before padding to words)."""
        return OPCODE_WIDTH + sum(f.metadata["bits"] for f in cls.packed_fields())

    @classmethod
    def words(cls) -> int:
        """32-bit words of the packed image."""
        return -(-cls.width() // WORD_WIDTH)

    @classmethod
    def layout(cls):
        """The Amaranth ``data.StructLayout`` of the packed image (opcode first)."""
        from amaranth.hdl import signed, unsigned
        from amaranth.lib import data

        members = {"opcode": unsigned(OPCODE_WIDTH)}
        for f in cls.packed_fields():
            shape = signed if f.metadata["signed"] else unsigned
            members[f.name] = shape(f.metadata["bits"])
        return data.StructLayout(members)

    @classmethod
    def describe(cls) -> list:
        """Rows (name, offset, bits, signed, doc) of the bit layout, for documentation."""
        rows, offset = [("opcode", 0, OPCODE_WIDTH, False, "operation code")], OPCODE_WIDTH
        for f in cls.packed_fields():
            rows.append((f.name, offset, f.metadata["bits"], f.metadata["signed"],
                         f.metadata["doc"]))
            offset += f.metadata["bits"]
        return rows

    # Packing ----------------------------------------------------------------
    def to_int(self) -> int:
        """The packed image as one unsigned integer (LSB = opcode bit 0)."""
        image, offset = self.OPCODE, OPCODE_WIDTH
        for f in self.packed_fields():
            bits = f.metadata["bits"]
            image |= (getattr(self, f.name) & ((1 << bits) - 1)) << offset
            offset += bits
        return image

    def to_int_with(self, **fields) -> int:
        """The packed image with some fields (``opcode`` too) overwritten, unvalidated:
        what a faulty program could hand a unit (for tests of the units' own checks)."""
        image = self.to_int()
        for name, offset, bits, _, _ in self.describe():
            if name in fields:
                value = fields.pop(name)
                if not 0 <= value < 1 << bits:
                    raise ValueError(f"{name} = {value} does not fit its {bits} bits")
                image = image & ~(((1 << bits) - 1) << offset) | value << offset
        if fields:
            raise ValueError(f"{type(self).__name__} has no field {', '.join(fields)}")
        return image

    def pack(self) -> list:
        """The packed image as a list of 32-bit words, least significant first."""
        image = self.to_int()
        mask = (1 << WORD_WIDTH) - 1
        return [(image >> (WORD_WIDTH * k)) & mask for k in range(self.words())]

    @classmethod
    def unpack(cls, hw: HwConfig, words) -> "Descriptor":
        """Rebuild a descriptor from its words (validated again against ``hw``)."""
        words = list(words)
        if len(words) != cls.words():
            raise DescriptorError(
                f"{cls.__name__} packs to {cls.words()} words, not {len(words)}")
        image = sum((int(w) & 0xFFFFFFFF) << (WORD_WIDTH * k) for k, w in enumerate(words))
        opcode = image & ((1 << OPCODE_WIDTH) - 1)
        if opcode != cls.OPCODE:
            raise DescriptorError(
                f"{cls.__name__} has opcode {cls.OPCODE}, not {opcode}")
        values, offset = {}, OPCODE_WIDTH
        for f in cls.packed_fields():
            bits = f.metadata["bits"]
            value = (image >> offset) & ((1 << bits) - 1)
            if f.metadata["signed"] and value >> (bits - 1):
                value -= 1 << bits
            values[f.name] = value
            offset += bits
        init = {f.name: values[f.name] for f in cls.packed_fields() if f.init}
        made = cls(hw, **init)
        derived = {f.name: values[f.name] for f in cls.packed_fields() if not f.init}
        for name, value in derived.items():
            if getattr(made, name) != value:
                raise DescriptorError(
                    f"{cls.__name__} field {name} is {value} in the words but {getattr(made, name)} "
                    f"for this HwConfig")
        return made

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in self.packed_fields()}

    # Cost -------------------------------------------------------------------
    @staticmethod
    def sequence_cycles(descriptors) -> list:
        """Each operation's ``expected_cycles`` when they run back to back on one unit:
        the first from its descriptor's acceptance, each next one from the previous
        one's last output beat (``expected_cycles(following=True)``)."""
        return [d.expected_cycles(following=k > 0) for k, d in enumerate(descriptors)]


def _check_positive(descriptor, kind, names):
    """Each ``(what, name)`` field of ``descriptor`` a positive integer."""
    for what, name in names:
        value = getattr(descriptor, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DescriptorError(
                f"{kind} descriptor {what} must be a positive integer, not {value!r}")


def _check_range(what, value, low, high):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DescriptorError(f"{what} must be an integer in [{low}, {high}], not {value!r}")


def _range(f):
    bits = f.metadata["bits"]
    if f.metadata["signed"]:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@dataclass(frozen=True)
class LinearDescriptor(Descriptor):
    """One linear operation: ``y = post(requantize(x @ W.T + b, M, S))``.

    ``x`` is ``tokens x in_features`` int8, ``W`` is ``out_features x
    in_features`` int8, ``b`` int32 and ``M``, ``S`` (multiplier, shift) per
    output channel; ``post`` is the fused integer GELU when ``gelu`` is set,
    then the residual add when ``residual`` is set (the residual stream holds
    the skip tensor, ``tokens x out_features`` int8). The kernel tiles the work
    as ``out_tiles`` x ``token_tiles`` tiles of ``hw.rows`` tokens by
    ``hw.cols`` outputs (output-stationary, out tile outermost), each tile
    ``in_features`` cycles.

    The per-channel constants live in memory at ``chan_addr`` and reach the
    kernel on its ``chan`` stream; the per-tensor constants of the fused
    operations (``gelu_*``, ``res_*``) are fields here.

    Raises
    ------
    DescriptorError
        When the shape exceeds the buffers of ``hw`` or a field its width.
    """

    OPCODE = 1
    MNEMONIC, UNIT, OUTPUT = "LINEAR", "linear", "y_addr"

    tokens: int = packed(16, doc="tokens (rows of x and y)", default=1)
    in_features: int = packed(16, doc="input features (columns of x)", default=1)
    out_features: int = packed(16, doc="output features (rows of W)", default=1)
    gelu: int = packed(1, doc="fused integer GELU after requantization", default=0)
    residual: int = packed(1, doc="residual add of the skip stream after GELU", default=0)
    token_tiles: int = packed(16, derived=True, doc="ceil(tokens / hw.rows)")
    out_tiles: int = packed(16, derived=True, doc="ceil(out_features / hw.cols)")
    gelu_b: int = packed(12, doc="intops.gelu constant b (u12)", default=0)
    gelu_c: int = packed(22, doc="intops.gelu constant c (u22)", default=0)
    gelu_mult: int = packed(15, doc="requantize multiplier of the GELU output (u15)", default=0)
    gelu_shift: int = packed(6, doc="requantize shift of the GELU output (1..47)", default=0)
    res_mult_y: int = packed(15, doc="intops.residual_add multiplier of this op's output",
                             default=0)
    res_mult_skip: int = packed(15, doc="intops.residual_add multiplier of the skip stream",
                                default=0)
    res_shift: int = packed(6, doc="intops.residual_add shift (1..47)", default=0)
    x_addr: int = packed(32, doc="byte address of x", default=0)
    w_addr: int = packed(32, doc="byte address of W (tile-major beats)", default=0)
    chan_addr: int = packed(32, doc="byte address of the per-channel bias, multiplier, shift",
                            default=0)
    res_addr: int = packed(32, doc="byte address of the skip tensor", default=0)
    y_addr: int = packed(32, doc="byte address of y", default=0)

    def validate(self):
        hw = self.hw
        _check_positive(self, "Linear", (("tokens", "tokens"), ("input features", "in_features"),
                                         ("output features", "out_features")))
        if self.tokens > hw.max_tokens:
            raise DescriptorError(
                f"Linear descriptor of {self.tokens} tokens exceeds the {hw.max_tokens}-token "
                f"buffer of hardware {hw.name!r}")
        if self.in_features > hw.max_in:
            raise DescriptorError(
                f"Linear descriptor of {self.in_features} input features exceeds the "
                f"{hw.max_in}-feature buffer of hardware {hw.name!r}")
        if self.gelu:
            _check_range("GELU constant b", self.gelu_b, 1, 2**12 - 1)
            _check_range("GELU constant c", self.gelu_c, 1, 2**22 - 1)
            if 2 * self.gelu_c < self.gelu_b ** 2:
                raise DescriptorError(
                    f"GELU constants need 2*c >= b*b, not c={self.gelu_c}, b={self.gelu_b}")
            _check_range("GELU multiplier", self.gelu_mult, 1, 2**15 - 1)
            _check_range("GELU shift", self.gelu_shift, 1, 47)
        if self.residual:
            _check_range("Residual multiplier of the output", self.res_mult_y, 1, 2**15 - 1)
            _check_range("Residual multiplier of the skip", self.res_mult_skip, 1, 2**15 - 1)
            _check_range("Residual shift", self.res_shift, 1, 47)
        self._set("token_tiles", -(-self.tokens // hw.rows))
        self._set("out_tiles", -(-self.out_features // hw.cols))

    # Cost -------------------------------------------------------------------
    @property
    def macs(self) -> int:
        """Multiply-accumulates of the operation."""
        return self.tokens * self.in_features * self.out_features

    def ideal_cycles(self) -> int:
        """Cycles with every MAC unit busy every cycle: MACs / MAC units (rounded up)."""
        return -(-self.macs // self.hw.macs)

    @property
    def steps(self) -> int:
        """Steps of the array a tile takes: ``in_features``, ``chain_depth`` a step."""
        return -(-self.in_features // self.hw.chain_depth)

    def array_cycles(self) -> int:
        """Cycles the array issues (padded tiles included): tiles x steps."""
        return self.token_tiles * self.out_tiles * self.steps

    # Latencies of hw/units/linear.py (checked against simulation in tests/test_sim_linear.py
    # and tests/test_sim_linear_random.py): a tile's last step issued -> its copy into
    # the shadow bank; a chunk popped from the shadow bank -> its beat written into the
    # output FIFO; that write -> the beat taken from the FIFO. A chain of D > 1 links
    # adds D stages to the first (issue_to_copy).
    ISSUE_TO_COPY = 4
    POP_TO_FIFO = 14
    FIFO_LATENCY = 2

    @property
    def issue_to_copy(self) -> int:
        """Cycles from a tile's last step issued to its copy into the shadow bank."""
        depth = self.hw.chain_depth
        return self.ISSUE_TO_COPY + (depth if depth > 1 else 0)

    def drain_cycles(self, rows=None) -> int:
        """Cycles to drain one finished tile of ``rows`` valid rows (default: all):
        ``rows * cols / post_lanes``; padding rows are not drained."""
        hw = self.hw
        return (hw.rows if rows is None else rows) * (hw.cols // hw.post_lanes)

    @property
    def x_beats(self) -> int:
        """Beats of the kernel's ``x`` stream a token tile: ``hw.x_features`` features of
        every row a beat."""
        return -(-self.in_features // self.hw.x_features)

    @property
    def w_beats(self) -> int:
        """Beats of the kernel's ``w`` stream an out tile: ``hw.w_features`` features of
        its weights a beat."""
        return -(-self.in_features // self.hw.w_features)

    def expected_cycles(self, *, following=False) -> int:
        """Cycles of the operation on the kernel, fed without gaps and drained without
        back-pressure, from its descriptor's acceptance to its last output beat.

        The cost model of the design-space search, exact for any shape on any array
        (``tests/test_sim_linear_random.py`` checks it on every case with no pauses).
        The kernel's timing rules, cycle 0 being the descriptor's acceptance:

        * weight bank ``ot % 2`` loads from cycle ``A_ot`` (``A_0 = 1``), taking
          :attr:`w_beats` weight beats and ``cols`` channel beats at once, and is
          ready ``max(w_beats, cols) + 1`` cycles later (``F_ot``); the next bank's
          load starts then, or when that bank is released if later;
        * a tile issues :attr:`steps` steps, one per cycle, the first when its bank
          is ready (with ``hw.weight_streaming``: once its first step's weight beats are
          in, ``chain_depth / hw.w_features`` cycles after ``A_ot``, each step behind its
          weight beats, the last one not before ``F_ot``) and the previous
          tile has issued; its last step waits until the previous tile is through the
          shadow bank (``issue_to_copy + 1`` cycles plus the previous tile's drain after
          that tile's last step);
        * the activations come a beat (``hw.x_features`` features of a token tile) a
          cycle from cycle 1, so token tile ``tt``'s last step issues at ``1 + (tt + 1) *
          x_beats`` at the earliest (:attr:`x_beats`): with a beat a step (``chain_depth``
          1, or ``wide_x``) this never binds, with more the first out tile may wait for
          them (its first token tile only where the bank loads faster, ``wide_w``);
        * a bank is released after the drain of its out tile's last token tile.

        Parameters
        ----------
        following : bool
            The operation follows another one back to back: count from that one's
            last output beat instead. The kernel takes the descriptor in the cycle
            after the previous last beat enters the output FIFO, ``FIFO_LATENCY - 1``
            cycles before that beat leaves it.
        """
        hw, steps = self.hw, self.steps
        through = self.issue_to_copy + 1          # last step -> the shadow bank is free again
        load = max(self.w_beats, hw.cols) + 1
        full_drain = self.drain_cycles()
        last_drain = self.drain_cycles(self.tokens - (self.token_tiles - 1) * hw.rows)
        start, ready = 1, 1 + load                # A_0, F_0
        released = []                             # per out tile: its bank free again
        last = None                               # last step of the previous tile
        for ot in range(self.out_tiles):
            if ot:
                # This bank started loading when the previous one was ready (or
                # when its own was released by out tile ot - 2, if later).
                start = ready if ot < 2 else max(ready, released[ot - 2])
                ready = start + load
            # The first step: once the bank is full, or (weight streaming) once its first
            # beat is in, a cycle after its load starts; the last step once it is full.
            # (A step holds chain_depth beats; a tile of one step needs the bank full.)
            first = (start + hw.chain_depth // hw.w_features if hw.weight_streaming and steps > 1
                     else ready)
            if last is None:
                # (the first token tile's x: it binds only where a bank loads faster than
                # its inputs arrive, hw.wide_w without hw.wide_x)
                last = max(first + steps - 1, ready, 1 + self.x_beats)
            else:
                last = max(max(last + 1, first) + steps - 1, ready, last + through + last_drain)
            # The other token tiles of the out tile: full drains before each last one.
            tile = max(steps, through + full_drain)
            later = self.token_tiles - 1
            last += later * tile
            if ot == 0 and later:
                # ... and, with the first, the activations' arrival (see above).
                beats = self.x_beats
                arrival = 1 + beats + (later * beats if beats >= tile
                                       else beats + (later - 1) * tile)
                last = max(last, arrival)
            released.append(last + through + last_drain)
        end = last + self.issue_to_copy + last_drain + self.POP_TO_FIFO + self.FIFO_LATENCY
        return end - (self.FIFO_LATENCY - 1 if following else 0)


def _check_constants(what, pairs):
    """Requantization multipliers u15 (>= 1) and shifts 1..47, as intops requires."""
    for name, (mult, shift) in pairs.items():
        _check_range(f"{what} descriptor {name} multiplier", mult, 1, 2**15 - 1)
        _check_range(f"{what} descriptor {name} shift", shift, 1, 47)


@dataclass(frozen=True)
class AttentionDescriptor(Descriptor):
    """Attention of ``heads`` heads of ``rows`` query rows over ``tokens`` keys (the
    attention kernel).

    Per head: ``out = requantize(weighted_sum(softmax(q @ k.T, sm_mult,
    sm_shift), v), out_mult, out_shift)`` (``moevit.model.integer.intops``), with
    ``k``, ``v`` int8 ``tokens x head_dim`` and ``q``, ``out`` ``rows x head_dim``: a
    range of an image's query rows (``q_addr`` and ``out_addr`` at its first) attends to
    every key, so a program can split an image's attention by rows. The kernel's
    ``hw.heads_parallel`` lanes take ``rounds = heads / heads_parallel``
    heads each; a score takes ``chunks = head_dim / hw.score_lanes`` cycles.

    Raises
    ------
    DescriptorError
        When the sequence exceeds the key/value buffers, the query rows are
        not 1 to the tokens, the score lanes do not divide the head width, the
        lanes do not divide the heads, or a constant is out of its range.
    """

    OPCODE = 2
    MNEMONIC, UNIT, OUTPUT = "ATTENTION", "attention", "out_addr"

    tokens: int = packed(16, doc="sequence length (rows of k and v)", default=1)
    heads: int = packed(8, doc="attention heads", default=1)
    head_dim: int = packed(16, doc="width of one head", default=1)
    sm_mult: int = packed(15, doc="softmax multiplier M (intops.softmax)", default=1)
    sm_shift: int = packed(6, doc="softmax shift S", default=1)
    out_mult: int = packed(15, doc="context requantization multiplier", default=1)
    out_shift: int = packed(6, doc="context requantization shift", default=1)
    chunks: int = packed(8, derived=True, doc="head_dim / hw.score_lanes")
    rounds: int = packed(8, derived=True, doc="heads / hw.heads_parallel")
    q_addr: int = packed(32, doc="byte address of q (tokens x heads*head_dim)", default=0)
    k_addr: int = packed(32, doc="byte address of k", default=0)
    v_addr: int = packed(32, doc="byte address of v", default=0)
    out_addr: int = packed(32, doc="byte address of the context", default=0)
    row_pitch: int = packed(16, doc="bytes from one row of q, k, v to the next "
                            "(3 x heads x head_dim: the thirds of one QKV output); "
                            "0 given: heads x head_dim", default=0)
    rows: int = packed(16, doc="query rows (of q and of the context); 0 given: tokens",
                       default=0)

    def validate(self):
        hw = self.hw
        _check_positive(self, "Attention", (("tokens", "tokens"), ("heads", "heads"),
                                            ("head dim", "head_dim")))
        if self.rows == 0:
            self._set("rows", self.tokens)
        elif not 0 < self.rows <= self.tokens:
            raise DescriptorError(
                f"Attention descriptor of {self.rows} query rows is outside 1 to its "
                f"{self.tokens} tokens")
        if self.tokens > hw.kv_depth:
            raise DescriptorError(
                f"Attention descriptor of {self.tokens} tokens exceeds the {hw.kv_depth}-token "
                f"key/value buffers of hardware {hw.name!r}")
        if self.head_dim % hw.score_lanes:
            raise DescriptorError(
                f"Attention descriptor head dim {self.head_dim} is not divisible by the "
                f"{hw.score_lanes} score lanes of hardware {hw.name!r}")
        if self.head_dim > hw.max_head_dim:
            raise DescriptorError(
                f"Attention descriptor head dim {self.head_dim} exceeds the {hw.max_head_dim}-wide "
                f"key/value buffers of hardware {hw.name!r}")
        if self.heads % hw.heads_parallel:
            raise DescriptorError(
                f"Attention descriptor of {self.heads} heads is not divisible by the "
                f"{hw.heads_parallel} head lanes of hardware {hw.name!r}")
        _check_constants("Attention", {"softmax": (self.sm_mult, self.sm_shift),
                                       "output": (self.out_mult, self.out_shift)})
        self._set("chunks", self.head_dim // hw.score_lanes)
        self._set("rounds", self.heads // hw.heads_parallel)
        width = self.heads * self.head_dim
        if self.row_pitch == 0:
            self._set("row_pitch", width)
        elif self.row_pitch < width:
            raise DescriptorError(
                f"Attention descriptor row pitch {self.row_pitch} is shorter than a row of "
                f"{self.heads} heads of {self.head_dim}")

    @property
    def macs(self) -> int:
        """Multiply-accumulates: ``q @ k.T`` and ``p @ v`` of every head."""
        return 2 * self.heads * self.rows * self.tokens * self.head_dim

    def ideal_cycles(self) -> int:
        """MACs / MAC units (``hw.attention_macs``), rounded up."""
        return -(-self.macs // self.hw.attention_macs)

    def expected_cycles(self, *, following=False) -> int:
        """Cycles from the descriptor's acceptance to the last context beat, fed without
        gaps and drained without back-pressure: ``rounds`` heads
        (:func:`moevit.hw.units.attention.heads_cycles`). With ``following``, from the
        previous operation's last beat (the kernel takes the next descriptor
        :func:`~moevit.hw.units.attention.restart_cycles` later). Exact
        (tests/test_sim_random_units.py)."""
        from moevit.hw.units.attention import heads_cycles, restart_cycles

        parts = self.hw.score_lanes // self.hw.context_width
        pipelined = bool(self.hw.pipelined_heads)
        return heads_cycles(self.tokens, self.chunks, self.rounds, self.hw.row_lanes, parts,
                            self.hw.kv_banks, self.rows, pipelined, self.hw.score_packing) \
            + (restart_cycles(parts, pipelined) if following else 0)


@dataclass(frozen=True)
class LayerNormDescriptor(Descriptor):
    """LayerNorm of ``tokens`` rows of ``dim`` int8 values (``intops.layernorm``).

    The per-channel ``gamma`` and ``beta`` live at ``param_addr`` and reach the
    unit on its ``param`` stream before the rows; ``eps`` and ``shift`` are
    per tensor.

    Raises
    ------
    DescriptorError
        When the width exceeds the unit's parameter buffer or is not a multiple of its
        lanes (``HwConfig.norm_lanes``), or a constant is out of its range.
    """

    OPCODE = 3
    MNEMONIC, UNIT, OUTPUT = "LAYERNORM", "layernorm", "y_addr"

    tokens: int = packed(16, doc="rows", default=1)
    dim: int = packed(16, doc="width of a row", default=1)
    eps: int = packed(40, doc="integer epsilon (intops.layernorm)", default=0)
    shift: int = packed(6, doc="output shift", default=1)
    x_addr: int = packed(32, doc="byte address of x", default=0)
    param_addr: int = packed(32, doc="byte address of gamma and beta", default=0)
    y_addr: int = packed(32, doc="byte address of y", default=0)

    def validate(self):
        hw = self.hw
        _check_positive(self, "LayerNorm", (("tokens", "tokens"), ("width", "dim")))
        if self.dim > hw.max_in:
            raise DescriptorError(
                f"LayerNorm descriptor width {self.dim} exceeds the {hw.max_in}-feature "
                f"buffer of hardware {hw.name!r}")
        if self.dim % hw.norm_lanes:
            raise DescriptorError(
                f"LayerNorm descriptor width {self.dim} is not a multiple of the "
                f"{hw.norm_lanes} LayerNorm lanes of hardware {hw.name!r}")
        if not isinstance(self.eps, int) or isinstance(self.eps, bool) \
                or not 0 <= self.eps < 2**34:
            raise DescriptorError(
                f"LayerNorm descriptor eps must be an integer in [0, 2**34), not {self.eps!r}")
        _check_range("LayerNorm descriptor shift", self.shift, 1, 47)

    def expected_cycles(self, *, following=False) -> int:
        """Cycles from the descriptor's acceptance to the last output, fed without gaps
        and drained without back-pressure (:func:`moevit.hw.units.layernorm.layernorm_cycles`).
        With ``following``, from the previous operation's last output (the unit takes
        the next descriptor ``RESTART_CYCLES`` later). Exact
        (tests/test_sim_random_units.py)."""
        from moevit.hw.units.layernorm import RESTART_CYCLES, layernorm_cycles

        return (layernorm_cycles(self.tokens, self.dim, self.hw.norm_lanes)
                + (RESTART_CYCLES if following else 0))


@dataclass(frozen=True)
class MoeDescriptor(Descriptor):
    """One MoE layer on the MoE unit (:mod:`moevit.hw.units.moe`).

    ``tokens`` tokens each select ``top_k`` of ``experts`` experts; the gate
    weights follow ``intops.softmax`` with ``(sm_mult, sm_shift)`` over all the
    logits (``renorm = 0``, the V-MoE rule) or over the selected ones
    (``renorm = 1``); the experts' outputs, ``dim`` wide, are combined and
    requantized with ``(out_mult, out_shift)``.

    Raises
    ------
    DescriptorError
        When a size exceeds the unit of ``hw`` (``experts`` above the kernel's
        ``cols`` lanes, ``tokens`` above ``max_tokens``, ``dim`` above
        ``max_in``), ``top_k`` is not in ``1..experts``, or a constant is out
        of its range.
    """

    OPCODE = 10  # after the instruction set's 1..9 (hw/program/isa.py)

    tokens: int = packed(16, doc="tokens (gate beats)", default=1)
    experts: int = packed(8, doc="experts E (gate logits per token)", default=1)
    top_k: int = packed(8, doc="experts selected per token", default=1)
    renorm: int = packed(1, doc="gate rule: 0 vmoe (softmax over all E), 1 renorm (over k)",
                         default=0)
    dim: int = packed(16, doc="width of an expert's output", default=1)
    out_tiles: int = packed(16, derived=True, doc="ceil(dim / hw.cols)")
    sm_mult: int = packed(15, doc="gate softmax multiplier (intops.softmax)", default=1)
    sm_shift: int = packed(6, doc="gate softmax shift", default=1)
    out_mult: int = packed(15, doc="combine requantize multiplier", default=1)
    out_shift: int = packed(6, doc="combine requantize shift", default=1)

    def validate(self):
        hw = self.hw
        for what, value, limit, where in (
                ("tokens", self.tokens, hw.max_tokens, "token lists"),
                ("experts", self.experts, hw.cols, "lanes of a gate beat"),
                ("output width", self.dim, hw.max_in, "accumulator features")):
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise DescriptorError(
                    f"MoE descriptor {what} {value} exceeds the {limit} {where} of hardware "
                    f"{hw.name!r}")
            _check_range(f"MoE descriptor {what}", value, 1, limit)
        _check_range("MoE descriptor top-k", self.top_k, 1, self.experts)
        _check_range("MoE descriptor gate softmax multiplier", self.sm_mult, 1, 2**15 - 1)
        _check_range("MoE descriptor gate softmax shift", self.sm_shift, 1, 47)
        _check_range("MoE descriptor combine multiplier", self.out_mult, 1, 2**15 - 1)
        _check_range("MoE descriptor combine shift", self.out_shift, 1, 47)
        self._set("out_tiles", -(-self.dim // hw.cols))

    @classmethod
    def for_layer(cls, hw, qmodel, block, task, tokens=None):
        """The descriptor of MoE block ``block`` of a quantized model for ``task``."""
        config = qmodel.config
        sm_mult, sm_shift = (int(v) for v in qmodel[f"blocks.{block}.mlp.gate.softmax"][task])
        out_mult, out_shift = (int(v) for v in qmodel[f"blocks.{block}.mlp.combine"])
        return cls(hw, tokens=config.tokens if tokens is None else tokens,
                   experts=config.experts, top_k=config.top_k,
                   renorm=int(config.gate == "renorm"), dim=config.dim, sm_mult=sm_mult,
                   sm_shift=sm_shift, out_mult=out_mult, out_shift=out_shift)

    # Cost -------------------------------------------------------------------
    # Latencies of the unit (checked against simulation in tests/test_sim_moe.py):
    # the softmax unit, idle, from a row's last score taken to its last probability
    # taken, takes SOFTMAX_BASE + 2 * row length cycles: the exp pipeline reads the
    # row after it is in (row + 7), the 41-bit restoring divider (43), the emit
    # stage (row + 3).
    SOFTMAX_BASE = 53
    COMBINE_LATENCY = 3   # fc2 beat taken -> its sum written (list read, acc read, write)

    def token_cycles(self) -> int:
        """Cycles of one token in the gate stage: its beat, the walk over the E
        logits, (renorm: the k selected into the softmax), the softmax, the k list
        writes."""
        row = self.top_k if self.renorm else self.experts
        feed = self.top_k if self.renorm else 0
        return 1 + self.experts + feed + self.SOFTMAX_BASE + 2 * row + self.top_k

    def expected_cycles(self, experts_used=None) -> int:
        """Cycles from the descriptor's acceptance to the operation's last beat, fed
        without gaps and drained without back-pressure.

        ``experts_used``: experts at least one token selected (default: all, or
        ``tokens * top_k`` if fewer), each a header beat on ``lists``. Experts no
        token selected cost no cycle (a priority encoder finds the next listed
        one). The gate stage takes the tokens one at a time (:meth:`token_cycles`);
        the lists stream, and the combine and emit, follow it.
        """
        used = min(self.experts, self.tokens * self.top_k) if experts_used is None \
            else experts_used
        entries = self.tokens * self.top_k
        gate_end = self.tokens * self.token_cycles()
        # Lists: a header per listed expert, one beat per entry, the output register.
        lists_end = gate_end + used + entries + 1
        # Combine: one fc2 beat per cycle, then its pipeline; emit: one beat per cycle
        # after the memory read and the output register.
        combine_end = gate_end + entries * self.out_tiles + self.COMBINE_LATENCY
        emit_end = combine_end + self.tokens * self.out_tiles + 1
        return max(lists_end, emit_end)

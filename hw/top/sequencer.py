"""The instruction sequencer: fetches the program from memory and issues its instructions.

On ``start`` it reads the program's header (:mod:`moevit.hw.program.program`)
at ``args.program`` and checks it against this hardware: magic, format
version, header length, HwConfig fingerprint, bus width, regions in order, an
on-chip window no larger than ``hw.onchip_bytes``, and a body no longer than
its instructions can take nor shorter than one word each (else error
``program``), and the task register against the program's task count (else
``task``). Then, for each of the run's ``images`` (runs of the body: images, or
batches of a batched program, whose header's ``batch`` it does not read: the
regions' pitches carry it), it streams the body in one
request and assembles each instruction's words (the opcode in the low byte of
the first word gives the count: :data:`~moevit.hw.program.isa.OPCODES`; an
unknown one stops the run with ``opcode``; a body whose end is not the end of
its last instruction, ``program``), checks that every address field lies below
``onchip_end`` (the output's end, or the on-chip window's; else ``address``),
reads the task's table entry for the instructions that take one (TASK_LINEAR,
ROUTE: entry ``task`` of the table, :class:`~moevit.hw.program.isa.TaskEntry`),
and issues the instruction on ``issue``; the next is issued when the top
reports it ``finished``. With ``hw.expert_prefetch`` the next instruction is
assembled (and its table entry read) while the one before it runs, and shown
as ``pending`` until it is issued; an error found in it (opcode, program,
address) stops the run only once the one before it has finished, as without
the look-ahead.

On a top of two issue lanes (``hw.issue_lanes = 2``) the look-ahead is always on and an
instruction goes to its lane (``main``: LINEAR, TASK_LINEAR, EXPERT; ``side``: the rest,
:data:`~moevit.hw.program.isa.LANE_OF`): it is issued once that lane's instruction has
finished and, unless its first word has the concurrent bit
(:data:`~moevit.hw.program.isa.CONCURRENT_BIT`, cleared in what is issued), the other
lane's too; so two instructions run at most, one a lane. ``finished`` has a bit a lane.

The task is a register: the same program and weights serve every task, and
the only thing a task switch changes is which table entry these reads
fetch, so it costs no cycle.

Errors (the codes of :data:`~moevit.hw.program.regmap.ERROR_CODES`): the
sequencer's own, or ``abort`` from the top (a refused descriptor, a memory
error) stop the run: ``halting`` rises, the sequencer drops whatever its
reads still bring, and when the top reports everything ``idle`` it ends the
run with ``done`` and the code in ``error``. The next start runs normally.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig
from moevit.hw.program.isa import LANE_OF, OPCODES, TASK_ENTRY_BYTES, RouteDescriptor, \
    TaskLinearDescriptor
from moevit.hw.program.program import (BOUNDARY_FIELDS, HEADER_FIELDS, HEADER_WORDS, MAGIC,
                                      VERSION, hw_hash)
from moevit.hw.program.regmap import ERROR_CODES
from moevit.hw.top.interconnect import BOUND_FIELDS, bounds_layout
from moevit.hw.top.movers import Repack
from moevit.hw.top.ports import ReadPort

__all__ = ["Sequencer", "issue_layout", "INSTRUCTION_BITS", "code"]

#: Bits of the longest instruction.
MAX_INSTRUCTION_WORDS = max(cls.words() for cls in OPCODES.values())
INSTRUCTION_BITS = 32 * MAX_INSTRUCTION_WORDS
#: Instructions that read their task's table entry (its field ``table_addr``).
TABLE_OPCODES = (TaskLinearDescriptor.OPCODE, RouteDescriptor.OPCODE)
#: Instructions of the main issue lane (``hw.issue_lanes = 2``,
#: :data:`~moevit.hw.program.isa.LANE_OF`).
MAIN_OPCODES = tuple(op for op, cls in OPCODES.items() if LANE_OF[cls.MNEMONIC] == "main")


def code(name: str) -> int:
    """The error register's code of ``name`` (``ERROR_CODES``)."""
    return ERROR_CODES[name][0]


def issue_layout():
    """An issued instruction: its opcode, its words (LSB first) and, for TASK_LINEAR
    and ROUTE, the task's table entry (four words: w_addr, chan_addr, out_features,
    consts)."""
    return data.StructLayout({"opcode": 8, "image": INSTRUCTION_BITS,
                              "entry": data.ArrayLayout(32, 4)})


def _field(cls, name):
    """(offset, bits) of a descriptor field in its image."""
    for field, offset, bits, _, _ in cls.describe():
        if field == name:
            return offset, bits
    raise KeyError(name)


class Sequencer(wiring.Component):
    """The sequencer (see the module's description).

    Attributes
    ----------
    start : In(1)
    program, weights : In(64)
        The byte addresses of the program and of the weights buffer.
    task, images : In(32)
    prog, entry : Out(ReadPort)
        Reads of the program and of table entries, at physical addresses.
    issue : Out(stream.Signature(issue_layout()))
    finished : In(hw.issue_lanes)
        The instruction issued to a lane (bit 0 main, bit 1 side; one bit on one lane) is
        complete (its writes answered).
    abort : In(8)
        Non-zero: stop the run with this error code.
    idle : In(1)
        No engine, mover or burst is active (the top's view).
    halting : Out(1)
        Stopping on an error: the top holds the engines and drains the movers.
    done : Out(1)
    error : Out(8)
        The code of the last run (0: it finished), valid from its ``done``.
    instruction, image : Out(16)
        Where the run is (or stopped).
    bounds : Out(bounds_layout())
        The program's region bounds, from the header.
    onchip_end : Out(32)
        The end of the program's on-chip window (which starts at ``bounds.output_end``).
    running : Out(1)
    pending : Out(1)
        The instruction on ``issue`` is assembled (its table entry read) and
        waits to be issued: with ``hw.expert_prefetch``, while the instruction
        before it still runs, so the top can read its operands ahead.
    """

    def __init__(self, hw: HwConfig):
        self._hw = hw
        super().__init__({
            "start": In(1), "program": In(64), "weights": In(64), "task": In(32),
            "images": In(32),
            "prog": Out(ReadPort(hw.bus_width)), "entry": Out(ReadPort(hw.bus_width)),
            "issue": Out(stream.Signature(issue_layout())),
            "finished": In(hw.issue_lanes), "abort": In(8), "idle": In(1),
            "halting": Out(1), "done": Out(1), "error": Out(8),
            "instruction": Out(16), "image": Out(16),
            "bounds": Out(bounds_layout()), "onchip_end": Out(32),
            "running": Out(1), "pending": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self._hw
        nbytes = hw.bus_width // 8
        m.submodules.words = words = Repack(nbytes, 4)
        wiring.connect(m, wiring.flipped(self.prog.data), words.i)
        word = words.o.payload.data
        got = Signal()
        m.d.comb += got.eq(words.o.valid & words.o.ready)

        header = Array32(m, "header", HEADER_WORDS)
        field = {name: header[k] for k, name in enumerate(HEADER_FIELDS)}
        for name in BOUND_FIELDS:
            m.d.comb += self.bounds[name].eq(field[name])
        m.d.comb += self.onchip_end.eq(field["onchip_end"])

        at = Signal(range(HEADER_WORDS + 1))
        image = Signal(INSTRUCTION_BITS)
        opcode = Signal(8)
        length = Signal(range(INSTRUCTION_BITS // 32 + 1))    # words of this instruction
        filled = Signal.like(length)                         # of them assembled
        count = Signal(16)                                   # instructions issued this image
        entry_bytes = max(TASK_ENTRY_BYTES, nbytes)
        entry = Signal(8 * entry_bytes)
        entry_offset = Signal(range(nbytes))
        entry_got = Signal(range(entry_bytes // nbytes + 1))
        failure = Signal(8)

        lanes = hw.issue_lanes
        ahead = bool(hw.expert_prefetch) or lanes == 2
        # Per lane (bit 0 main, bit 1 side): an issued instruction has not finished.
        inflight = Signal(lanes)
        lane = Signal(range(lanes))  # the assembled instruction's
        concurrent = Signal()        # ... and its concurrent bit (two lanes)
        if lanes == 2:
            m.d.comb += lane.eq(~opcode.matches(*MAIN_OPCODES))
        issued = Signal(lanes)
        m.d.comb += issued.eq(Mux(self.issue.valid & self.issue.ready, 1 << lane, 0))
        with m.If(self.start):
            m.d.sync += inflight.eq(0)
        with m.Else():
            m.d.sync += inflight.eq((inflight & ~self.finished) | issued)
        # Whether the assembled instruction may be issued: its lane free, and the other
        # lane too unless the instruction is concurrent.
        free = Signal()
        if lanes == 2:
            mine, other = inflight.bit_select(lane, 1), inflight.bit_select(~lane, 1)
            m.d.comb += free.eq(~mine & (concurrent | ~other))
        else:
            m.d.comb += free.eq(~inflight)

        def stop(m, name_or_code):
            value = code(name_or_code) if isinstance(name_or_code, str) else name_or_code
            m.d.sync += failure.eq(value)
            m.next = "HALT"

        def fail(m, name):
            """The instruction being assembled (number ``count``) is bad."""
            m.d.sync += failure.eq(code(name))
            if ahead:
                m.next = "FAIL"
            else:
                m.d.sync += self.instruction.eq(count)
                m.next = "HALT"

        def next_image(m):
            with m.If(self.image + 1 >= self.images):
                m.next = "FINISH"
            with m.Else():
                m.d.sync += [self.image.eq(self.image + 1), self.instruction.eq(0)]
                m.next = "BODY_REQUEST"

        digest = hw_hash(hw)
        header_ok = ((field["magic"] == MAGIC) & (field["version"] == VERSION)
                     & (field["header_words"] == HEADER_WORDS)
                     & (field["hw_hash_lo"] == (digest & 0xFFFFFFFF))
                     & (field["hw_hash_hi"] == (digest >> 32))
                     & (field["bus_bits"] == hw.bus_width)
                     & (field["onchip_end"] >= field["output_end"])
                     & (field["onchip_end"] - field["output_end"] <= hw.onchip_bytes)
                     # The body is fetched in one request that a stop lets finish: its length
                     # is bounded by what its instructions can take (status counts them in
                     # 16 bits), so a corrupt header cannot hold the read mover for hours.
                     & (field["instructions"] < 1 << 16)
                     & (field["body_words"] <= field["instructions"] * MAX_INSTRUCTION_WORDS)
                     # ... and a word at least each (a request of 0 bytes brings no word).
                     & (field["body_words"] >= field["instructions"])
                     # The regions in order, as decode checks: out of order, one kind would
                     # cover another's addresses, relocated past its host buffer (fuzzing).
                     & Cat(*(field[a] <= field[b] for a, b in
                             zip(BOUNDARY_FIELDS, BOUNDARY_FIELDS[1:]))).all())

        # The words an opcode takes; 0 for an unknown one. On two lanes the top bit of the
        # opcode byte is the concurrent bit; on one, an opcode with it is unknown.
        opcode_bits = 7 if lanes == 2 else 8
        known_length = Signal.like(length)
        first_word = Cat(word[:7], Const(0, 1), word[8:]) if lanes == 2 else word
        with m.Switch(word[:opcode_bits]):
            for op, cls in OPCODES.items():
                with m.Case(op):
                    m.d.comb += known_length.eq(cls.words())

        # Every address field of the assembled instruction below onchip_end.
        addresses_ok = Signal()
        with m.Switch(opcode):
            for op, cls in OPCODES.items():
                with m.Case(op):
                    checks = [image[o:o + b] < field["onchip_end"]
                              for name, o, b, _, _ in cls.describe() if name.endswith("_addr")]
                    m.d.comb += addresses_ok.eq(Cat(*checks).all() if checks else 1)

        # The task's entry in the instruction's table.
        table_addr = Signal(32)
        with m.Switch(opcode):
            for op in TABLE_OPCODES:
                offset, bits = _field(OPCODES[op], "table_addr")
                with m.Case(op):
                    m.d.comb += table_addr.eq(image[offset:offset + bits])
        entry_at = Signal(32)
        m.d.comb += entry_at.eq(table_addr + TASK_ENTRY_BYTES * self.task[:8])

        m.d.comb += [self.prog.req.payload.addr.eq(self.program),
                     self.issue.payload.opcode.eq(opcode),
                     self.issue.payload.image.eq(image),
                     self.error.eq(failure)]
        for k in range(4):
            m.d.comb += self.issue.payload.entry[k].eq(
                (entry >> (8 * entry_offset))[32 * k:32 * k + 32])

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [failure.eq(0), at.eq(0), self.image.eq(0),
                                 self.instruction.eq(0)]
                    m.next = "HEADER_REQUEST"
            with m.State("HEADER_REQUEST"):
                m.d.comb += [self.running.eq(1), self.prog.req.valid.eq(1),
                             self.prog.req.payload.length.eq(4 * HEADER_WORDS)]
                with m.If(self.prog.req.ready):
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [self.running.eq(1), words.o.ready.eq(1)]
                with m.If(self.abort != 0):
                    stop(m, self.abort)
                with m.Elif(got):
                    header.write(m, at, word)
                    m.d.sync += at.eq(at + 1)
                    with m.If(words.o.payload.last):
                        m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.running.eq(1)
                with m.If(~header_ok | (at != HEADER_WORDS)):
                    stop(m, "program")
                with m.Elif(self.task >= field["tasks"]):
                    stop(m, "task")
                with m.Elif((self.images == 0) | (field["instructions"] == 0)):
                    m.next = "FINISH"
                with m.Else():
                    m.next = "BODY_REQUEST"
            with m.State("BODY_REQUEST"):
                m.d.comb += [self.running.eq(1), self.prog.req.valid.eq(1),
                             self.prog.req.payload.addr.eq(self.program + 4 * HEADER_WORDS),
                             self.prog.req.payload.length.eq(4 * field["body_words"])]
                with m.If(self.prog.req.ready):
                    m.d.sync += [count.eq(0), filled.eq(0)]
                    m.next = "WORD"
            with m.State("WORD"):
                m.d.comb += [self.running.eq(1), words.o.ready.eq(1)]
                with m.If(self.abort != 0):
                    stop(m, self.abort)
                with m.Elif(got):
                    # The body's last word must be the last instruction's last word: a
                    # body that ends sooner would leave this state waiting for words that
                    # never come, and words past it would be read as the next image's.
                    final = Mux(filled == 0, known_length == 1, filled + 1 == length)
                    last_instruction = count + 1 == field["instructions"]
                    with m.If((filled == 0) & (known_length == 0)):
                        fail(m, "opcode")
                    with m.Elif(words.o.payload.last != (final & last_instruction)):
                        fail(m, "program")
                    with m.Elif(filled == 0):
                        m.d.sync += [opcode.eq(word[:opcode_bits]), image.eq(first_word),
                                     length.eq(known_length), filled.eq(1)]
                        if lanes == 2:
                            m.d.sync += concurrent.eq(word[7])
                        with m.If(known_length == 1):
                            m.d.sync += filled.eq(0)
                            m.next = "ADDRESSES"
                    with m.Else():
                        m.d.sync += [image.eq(image | (word << (32 * filled))),
                                     filled.eq(filled + 1)]
                        with m.If(filled + 1 == length):
                            m.d.sync += filled.eq(0)
                            m.next = "ADDRESSES"
            with m.State("ADDRESSES"):
                m.d.comb += self.running.eq(1)
                with m.If(self.abort != 0):
                    stop(m, self.abort)
                with m.Elif(~addresses_ok):
                    fail(m, "address")
                with m.Elif(opcode.matches(*TABLE_OPCODES)):
                    m.next = "ENTRY_REQUEST"
                with m.Else():
                    m.d.sync += entry.eq(0)
                    m.next = "ISSUE"
            with m.State("ENTRY_REQUEST"):
                aligned = entry_at & ~(nbytes - 1)
                m.d.comb += [self.running.eq(1), self.entry.req.valid.eq(1),
                             self.entry.req.payload.addr.eq(self.weights + aligned),
                             self.entry.req.payload.length.eq(entry_bytes)]
                with m.If(self.entry.req.ready):
                    m.d.sync += [entry_offset.eq(entry_at[:max(1, (nbytes - 1).bit_length())]
                                                 if nbytes > 1 else 0),
                                 entry_got.eq(0)]
                    m.next = "ENTRY"
            with m.State("ENTRY"):
                m.d.comb += [self.running.eq(1), self.entry.data.ready.eq(1)]
                with m.If(self.abort != 0):
                    stop(m, self.abort)
                with m.Elif(self.entry.data.valid):
                    m.d.sync += [entry.eq((entry >> (8 * nbytes))
                                          | (self.entry.data.payload.data
                                             << (8 * (entry_bytes - nbytes)))),
                                 entry_got.eq(entry_got + 1)]
                    with m.If(self.entry.data.payload.last):
                        m.next = "ISSUE"
            with m.State("ISSUE"):
                # Look-ahead: the instruction waits here, assembled, while the one
                # before it runs (``pending``), and is issued when that one finishes.
                m.d.comb += [self.running.eq(1), self.issue.valid.eq(free),
                             self.pending.eq(1)]
                with m.If(self.abort != 0):
                    stop(m, self.abort)
                with m.Elif(self.issue.valid & self.issue.ready):
                    m.d.sync += self.instruction.eq(count)
                    if ahead:
                        last = count + 1 == field["instructions"]
                        with m.If(~last):
                            m.d.sync += count.eq(count + 1)
                            m.next = "WORD"
                        with m.Else():
                            m.next = "LAST"    # of this image: the next waits for it
                    else:
                        m.next = "RUN"
            if ahead:
                with m.State("LAST"):
                    m.d.comb += self.running.eq(1)
                    with m.If(self.abort != 0):
                        stop(m, self.abort)
                    with m.Elif(inflight == 0):
                        next_image(m)
                with m.State("FAIL"):
                    # A look-ahead's own error stops the run once the instruction before
                    # it has finished, as it would have without the look-ahead.
                    m.d.comb += self.running.eq(1)
                    with m.If(self.abort != 0):
                        stop(m, self.abort)
                    with m.Elif(inflight == 0):
                        m.d.sync += self.instruction.eq(count)
                        m.next = "HALT"
            else:
                with m.State("RUN"):
                    m.d.comb += self.running.eq(1)
                    with m.If(self.abort != 0):
                        stop(m, self.abort)
                    with m.Elif(self.finished):
                        with m.If(count + 1 == field["instructions"]):
                            next_image(m)
                        with m.Else():
                            m.d.sync += count.eq(count + 1)
                            m.next = "WORD"
            with m.State("HALT"):
                # Drop what the reads still bring until the top is idle.
                m.d.comb += [self.running.eq(1), self.halting.eq(1), words.o.ready.eq(1),
                             self.entry.data.ready.eq(1)]
                with m.If(self.idle & ~words.busy):
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += [self.running.eq(1), self.done.eq(1)]
                m.next = "IDLE"
        return m


class Array32:
    """``n`` 32-bit registers written by index (the header)."""

    def __init__(self, m, name, n):
        self._regs = [Signal(32, name=f"{name}{k}") for k in range(n)]

    def __getitem__(self, k):
        return self._regs[k]

    def write(self, m, index, value):
        with m.Switch(index):
            for k, reg in enumerate(self._regs):
                with m.Case(k):
                    m.d.sync += reg.eq(value)

"""The accelerator top: a Vitis RTL kernel that runs a compiled program on one image after another.

::

    s_axi_control ──► Control ──start/args──► Sequencer ──issue──► dispatch by opcode
                        ▲  (ap_ctrl_hs,          │ prog, entry reads      │
                        │   registers)           │                        ▼
                        └──── done, error ◄──────┘        engines: LINEAR (linear kernel),
                                                          ATTENTION, LAYERNORM, PATCHIFY, COPY,
                                                          ROUTE, EXPERT (+ linear), COMBINE
                                                                 │ rd[0..3], rd[4], wr
                                                                 ▼
                          relocation (program address -> host buffer) ─► read movers ─►
                          ReadArbiter per port ─► m_axi_gmem, m_axi_gmem1 ... (read);
                          write mover ─► its port (write)   (moevit.hw.top.memory_ports)

One instruction runs at a time (its engine owns the read channels and the
write channel; EXPERT runs with the linear engine, which executes the two
linear jobs it emits); the next one is issued when the previous one's writes
are all answered, so an instruction always reads what the ones before it
wrote.

With two issue lanes (``hw.issue_lanes = 2``) two run at once, one a lane: the
*main* lane's (LINEAR, TASK_LINEAR, EXPERT: the linear engine) on read channels
0 to 4 and the write channel, the *side* lane's (every other engine) on
:data:`SIDE_CHANNELS` read channels and a write channel of their own, with their
own relocators, movers (:data:`~moevit.hw.top.memory_ports.SIDE_MOVERS`) and, with
a window, routers (their writes share the on-chip RAM's write port a beat at a time,
:class:`~moevit.hw.top.onchip.OnChipMemory`). Each lane is finished when its engine
is done and its own channels' bursts are answered; the sequencer issues an
instruction once its lane is finished and, unless the program marks it
``concurrent``, the other lane too (:mod:`moevit.hw.top.sequencer`), so an
instruction still reads what the ones it depends on wrote.

The ports are those of an XRT-managed RTL kernel (``ap_clk``, ``ap_rst_n``,
``interrupt``, ``s_axi_control``, ``m_axi_gmem_*`` with 64-bit addresses and the
HwConfig's ``bus_width``, and ``m_axi_gmem1_*`` ... for its ``memory_ports``), so one
top serves a Vivado block design (ZCU102, ZCU104) and a v++ link (U280).

With ``hw.onchip_bytes`` a router sits in front of each channel's relocation
and serves the program's on-chip window ``[output_end, onchip_end)`` from the
on-chip activation RAM instead (:mod:`moevit.hw.top.onchip`); without it the
top is built exactly as before.

A run stops on the first error with its code in the ``error`` register
(:data:`~moevit.hw.program.regmap.ERROR_CODES`): the sequencer's own (header,
task, opcode, address), a descriptor an engine refused, an address the
relocation finds outside the program's regions, an AXI error response. The
engines are then held in reset while the movers finish the bursts they
issued (read beats dropped; the write channel given zero bytes for a write
already requested, inside that instruction's output); then ``ap_done``
rises, the interrupt fires if enabled, and the next start runs normally.
"""

from amaranth.hdl import Cat, ClockDomain, Const, Module, ResetInserter, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import LinearDescriptor
from moevit.hw.program.isa import (LANE_OF, OPCODES, AttentionDescriptor, CombineDescriptor,
                                   CopyDescriptor, ExpertDescriptor, LayerNormDescriptor,
                                   PatchifyDescriptor, RouteDescriptor, TaskLinearDescriptor)
from moevit.hw.top.control import AxiLiteSignature, Control
from moevit.hw.top.memory_ports import connect_ports, port_members
from moevit.hw.top.movers import ReadMover, WriteMover
from moevit.hw.top.sequencer import Sequencer, code

__all__ = ["Accelerator", "ENGINES", "ENGINE_OF", "ENGINE_CHANNELS", "SIDE_CHANNELS",
           "ENGINE_LANE"]

#: Read channels of the engines: the running engine's rd[0..3]; EXPERT's own list read on 4.
ENGINE_CHANNELS = 5

#: The engines, by name: "module:class" (each takes the HwConfig).
ENGINES = {
    "linear": "moevit.hw.top.linear_engine:LinearEngine",
    "attention": "moevit.hw.top.attention_engine:AttentionEngine",
    "layernorm": "moevit.hw.top.layernorm_engine:LayerNormEngine",
    "patchify": "moevit.hw.top.patchify_engine:PatchifyEngine",
    "copy": "moevit.hw.top.copy:CopyEngine",
    "route": "moevit.hw.top.moe:RouteEngine",
    "expert": "moevit.hw.top.moe:ExpertEngine",
    "combine": "moevit.hw.top.moe:CombineEngine",
}

#: The engine each opcode runs on (EXPERT also drives the linear engine).
ENGINE_OF = {
    LinearDescriptor.OPCODE: "linear", TaskLinearDescriptor.OPCODE: "linear",
    AttentionDescriptor.OPCODE: "attention", LayerNormDescriptor.OPCODE: "layernorm",
    PatchifyDescriptor.OPCODE: "patchify", CopyDescriptor.OPCODE: "copy",
    RouteDescriptor.OPCODE: "route", ExpertDescriptor.OPCODE: "expert",
    CombineDescriptor.OPCODE: "combine",
}
assert set(ENGINE_OF) == set(OPCODES), "every opcode has an engine"


#: Read channels of the side lane (``hw.issue_lanes = 2``): its engines' most (ATTENTION's
#: q, k, v; COMBINE's three), after the main lane's :data:`ENGINE_CHANNELS`.
SIDE_CHANNELS = 3

#: The lane of each engine on a top of two issue lanes: 0 main (the linear kernel's), 1 side.
ENGINE_LANE = {name: int(name not in ("linear", "expert")) for name in ENGINES}
assert all(ENGINE_LANE[ENGINE_OF[op]] == (LANE_OF[cls.MNEMONIC] == "side")
           for op, cls in OPCODES.items())


def _lane(opcode, hw):
    """The lane opcode ``opcode`` runs on: 0 on a top of one issue lane."""
    return ENGINE_LANE[ENGINE_OF[opcode]] if hw.issue_lanes == 2 else 0


def _engine(name, hw):
    import importlib

    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(hw)


def _linear_from_task(m, image, entry, hw):
    """The LinearDescriptor image of a TASK_LINEAR with its task's table entry."""
    task = data.View(TaskLinearDescriptor.layout(), image[:TaskLinearDescriptor.width()])
    op = Signal(LinearDescriptor.layout())
    out = entry[2][:16]
    m.d.comb += [op.opcode.eq(LinearDescriptor.OPCODE), op.tokens.eq(task.tokens),
                 op.in_features.eq(task.in_features), op.out_features.eq(out),
                 op.token_tiles.eq((task.tokens + hw.rows - 1) // hw.rows),
                 op.out_tiles.eq((out + hw.cols - 1) // hw.cols),
                 op.x_addr.eq(task.x_addr), op.y_addr.eq(task.y_addr),
                 op.w_addr.eq(entry[0]), op.chan_addr.eq(entry[1])]
    return op


class Accelerator(wiring.Component):
    """The top (see the module's description).

    Parameters
    ----------
    hw : HwConfig
    engines : sequence of str, optional
        The engines to build (names of :data:`ENGINES`; default all). An
        instruction whose engine is missing stops the run with error
        ``opcode`` (a smaller top for programs without them, and faster
        simulations of short programs).
    """

    def __init__(self, hw: HwConfig, engines=None):
        self._hw = hw
        self._engines = tuple(ENGINES if engines is None else engines)
        unknown = set(self._engines) - set(ENGINES)
        if unknown or ("expert" in self._engines and "linear" not in self._engines):
            self._MustUse__silence = True
            raise ValueError(f"Engines must be among {list(ENGINES)} (expert with linear), "
                             f"not {list(self._engines)}")
        self._control = Control.from_config(hw)
        members = {"ap_clk": In(1), "ap_rst_n": In(1), "interrupt": Out(1),
                   "s_axi_control": In(AxiLiteSignature(self._control.regmap.address_width))}
        members.update(port_members(hw))       # m_axi_gmem, m_axi_gmem1 ... (memory_ports)
        super().__init__(members)

    @property
    def regmap(self):
        return self._control.regmap

    def elaborate(self, platform):
        from moevit.hw.top.interconnect import Relocator

        hw = self._hw
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        m.d.comb += [sync.clk.eq(self.ap_clk), sync.rst.eq(~self.ap_rst_n)]

        control = m.submodules.control = self._control
        wiring.connect(m, wiring.flipped(self.s_axi_control), control.s_axi_control)
        m.d.comb += self.interrupt.eq(control.interrupt)
        seq = m.submodules.sequencer = Sequencer(hw)
        args = control.args
        m.d.comb += [seq.start.eq(control.start), seq.program.eq(args.program),
                     seq.weights.eq(args.weights), seq.task.eq(args.task),
                     seq.images.eq(args.images), control.done.eq(seq.done),
                     control.report.status.instruction.eq(seq.instruction),
                     control.report.status.image.eq(seq.image),
                     control.report.error.code.eq(seq.error)]

        # Engines, held in reset while a run stops on an error.
        halt = seq.halting
        engines = {name: _engine(name, hw) for name in self._engines}
        for name, engine in engines.items():
            m.submodules[name] = ResetInserter(halt)(engine)
        linear, expert = engines.get("linear"), engines.get("expert")
        if expert is not None:
            wiring.connect(m, linear.x_index, expert.x_index)
            wiring.connect(m, linear.y_index, expert.y_index)
            # hw.expert_prefetch: the weights of the expert's next job read ahead; any
            # other instruction may rewrite the routing the EXPERT engine noted.
            wiring.connect(m, expert.ahead, linear.ahead)
            m.d.comb += expert.forget.eq(seq.issue.valid & seq.issue.ready
                                         & (seq.issue.payload.opcode != ExpertDescriptor.OPCODE))
            # ... and the next EXPERT's fc1 weights, read during this one's fc2.
            m.d.comb += [expert.next_desc.eq(seq.issue.payload.image[:ExpertDescriptor.width()]),
                         expert.next_valid.eq(seq.pending & (seq.issue.payload.opcode
                                                             == ExpertDescriptor.OPCODE))]

        # Which engine an opcode runs on, on which lane, and the payload it gets.
        lanes = hw.issue_lanes
        issue = seq.issue.payload
        image, entry = issue.image, issue.entry
        by_opcode = {op: name for op, name in ENGINE_OF.items() if name in engines}
        lane_of = {op: _lane(op, hw) for op in by_opcode}
        active = [Signal(8, name=f"active{lane}") for lane in range(lanes)]  # 0: none
        with m.If(seq.issue.valid & seq.issue.ready):
            for op, lane in lane_of.items():
                with m.If(issue.opcode == op):
                    m.d.sync += active[lane].eq(op)
        with m.If(seq.done):
            m.d.sync += [a.eq(0) for a in active]

        def running(op):
            return active[lane_of[op]] == op

        # The linear engine's jobs: from the sequencer, or from the EXPERT engine.
        if linear is not None:
            linear_job = linear.desc.payload
            with m.If(issue.opcode == TaskLinearDescriptor.OPCODE):
                m.d.comb += linear_job.op.eq(_linear_from_task(m, image, entry, hw))
            with m.Else():
                m.d.comb += linear_job.op.eq(image[:LinearDescriptor.width()])
        for name, engine in engines.items():
            desc = engine.desc.payload
            if name == "route":
                m.d.comb += [desc.route.eq(image[:RouteDescriptor.width()]),
                             desc.mult.eq(entry[3][:15]), desc.shift.eq(entry[3][15:21])]
            elif name != "linear":
                m.d.comb += desc.eq(image[:len(desc.as_value())])

        # Issue: the opcode's engine takes it; an opcode without one stops the run.
        missing = Signal()
        m.d.comb += missing.eq(1)
        for opcode, name in by_opcode.items():
            with m.If(issue.opcode == opcode):
                m.d.comb += [engines[name].desc.valid.eq(seq.issue.valid),
                             seq.issue.ready.eq(engines[name].desc.ready), missing.eq(0)]
        # While an EXPERT runs the linear engine takes its jobs only, whatever instruction
        # waits on the issue port (with two lanes or the look-ahead, a LINEAR may); but
        # not once the next linear instruction is issued (the EXPERT has finished then).
        if expert is not None:
            to_linear = Signal()
            m.d.comb += to_linear.eq(seq.issue.valid & issue.opcode.matches(
                LinearDescriptor.OPCODE, TaskLinearDescriptor.OPCODE))
            with m.If(running(ExpertDescriptor.OPCODE) & ~to_linear):
                m.d.comb += [linear_job.eq(expert.job.payload),
                             linear.desc.valid.eq(expert.job.valid),
                             expert.job.ready.eq(linear.desc.ready)]

        # Memory: engine channels (relocated; with two lanes the side lane's after the main
        # lane's), then the sequencer's reads (memory_ports.MOVERS); a write channel a lane.
        channels = ENGINE_CHANNELS + (SIDE_CHANNELS if lanes == 2 else 0)
        reads = [ReadMover(hw.bus_width, max_outstanding=hw.max_outstanding)
                 for _ in range(channels + 2)]
        writes = [WriteMover(hw.bus_width, max_outstanding=hw.max_outstanding)
                  for _ in range(lanes)]
        for k, mover in enumerate(reads):
            m.submodules[f"read{k}"] = mover
        for lane, mover in enumerate(writes):
            m.submodules["write" if lane == 0 else f"write{lane}"] = mover
        relocators = [Relocator(writes=k >= channels) for k in range(channels + lanes)]
        for k, relocator in enumerate(relocators):
            m.submodules[f"relocate{k}"] = relocator
            m.d.comb += [relocator.bounds.eq(seq.bounds), relocator.image.eq(seq.image)]
            for kind in ("weights", "scratch", "input", "output"):
                m.d.comb += relocator.bases[kind].eq(getattr(args, kind))
            target = reads[k].req if k < channels else writes[k - channels].req
            wiring.connect(m, relocator.o, target)
        # Where the engines' channels meet memory: the relocation and the movers, or with
        # hw.onchip_bytes the routers in front of them (moevit.hw.top.onchip).
        rd_ports = [(relocators[k].i, reads[k].data) for k in range(channels)]
        wr_ports = [(relocators[channels + lane].i, writes[lane].data) for lane in range(lanes)]
        onchip_busy, onchip_error = Const(0, 1), Const(0, 1)
        routers_busy = [Const(0, 1)] * (channels + lanes)
        if hw.onchip_bytes:
            rd_ports, wr_ports, onchip_busy, onchip_error, routers_busy = _onchip(
                m, hw, halt, seq, relocators, reads[:channels], writes)
            if linear is not None:   # its x a word of each row at a time from the window
                m.d.comb += [linear.window_at.eq(seq.bounds.output_end),
                             linear.window_end.eq(seq.onchip_end)]

        def base_of(name):
            """The first channel of engine ``name``'s read ports."""
            return ENGINE_CHANNELS if lanes == 2 and ENGINE_LANE[name] else 0

        def owner_of(k):
            """(engine, its port) per opcode running on engine channel ``k``."""
            owners = {}
            for opcode, name in by_opcode.items():
                engine, base = engines[name], base_of(name)
                if opcode == ExpertDescriptor.OPCODE:
                    if k < len(linear.rd):
                        owners[opcode] = linear.rd[k]
                    elif k == 4:
                        owners[opcode] = expert.rd[0]
                elif base <= k < base + len(engine.rd):
                    owners[opcode] = engine.rd[k - base]
            return owners

        for k in range(channels):
            (req, beats), mover = rd_ports[k], reads[k]
            for opcode, port in owner_of(k).items():
                with m.If(running(opcode)):
                    m.d.comb += [req.valid.eq(port.req.valid), req.payload.eq(port.req.payload),
                                 port.req.ready.eq(req.ready),
                                 port.data.valid.eq(beats.valid),
                                 port.data.payload.eq(beats.payload),
                                 beats.ready.eq(port.data.ready)]
            with m.If(halt):
                m.d.comb += mover.data.ready.eq(1)
        for opcode, name in by_opcode.items():
            engine = linear if name == "expert" else engines[name]
            req, beats = wr_ports[lane_of[opcode]]
            with m.If(running(opcode)):
                m.d.comb += [req.valid.eq(engine.wr.req.valid),
                             req.payload.eq(engine.wr.req.payload),
                             engine.wr.req.ready.eq(req.ready),
                             beats.valid.eq(engine.wr.data.valid),
                             beats.payload.eq(engine.wr.data.payload),
                             engine.wr.data.ready.eq(beats.ready)]
        with m.If(halt):
            m.d.comb += [w.data.valid.eq(1) for w in writes] + [w.data.payload.eq(0)
                                                                 for w in writes]

        # The sequencer's own reads, at physical addresses.
        for port, mover in ((seq.prog, reads[channels]), (seq.entry, reads[channels + 1])):
            wiring.connect(m, port.req, mover.req)
            wiring.connect(m, mover.data, port.data)

        # The movers onto the memory ports, by the table of moevit.hw.top.memory_ports.
        main_reads = reads[:ENGINE_CHANNELS] + reads[channels:]
        side = (*reads[ENGINE_CHANNELS:channels], writes[1]) if lanes == 2 else None
        connect_ports(m, self, hw, main_reads, writes[0], side)

        # Completion, per lane: its engine handed its work over and every burst of its
        # channels is answered.
        lane_channels = [range(ENGINE_CHANNELS), range(ENGINE_CHANNELS, channels)]
        lane_busy = [Signal(name=f"lane_busy{lane}") for lane in range(lanes)]
        for lane, busy in enumerate(lane_busy):
            mine = list(lane_channels[lane]) if lanes == 2 else list(range(channels))
            m.d.comb += busy.eq(writes[lane].busy | _any(reads[k].busy for k in mine)
                                | _any(routers_busy[k] for k in mine)
                                | routers_busy[channels + lane]
                                | (onchip_busy if lanes == 1 else 0))
        movers_busy, all_busy = Signal(), Signal()   # engine channels; and the sequencer's
        m.d.comb += [movers_busy.eq(_any(lane_busy) | onchip_busy),
                     all_busy.eq(movers_busy | _any(r.busy for r in reads[channels:]))]
        done_seen = [Signal(name=f"done_seen{lane}") for lane in range(lanes)]
        fault = Signal(8)
        for opcode, name in by_opcode.items():
            engine = engines[name]
            with m.If(running(opcode) & engine.done):
                m.d.sync += done_seen[lane_of[opcode]].eq(1)
                with m.If(engine.error != 0):
                    m.d.sync += fault.eq(code("descriptor"))
        for lane, seen in enumerate(done_seen):
            with m.If(seq.finished[lane] | seq.start):
                m.d.sync += seen.eq(0)
        with m.If(seq.start):
            m.d.sync += fault.eq(0)

        # EXPERT: a linear job is done for it when its writes are answered too (fc2 reads
        # the hidden rows fc1 wrote).
        if expert is not None:
            job_seen = Signal()
            with m.If(linear.done):
                m.d.sync += job_seen.eq(1)
            m.d.comb += expert.job_done.eq(job_seen & ~lane_busy[0])
            with m.If(expert.job_done | halt):
                m.d.sync += job_seen.eq(0)

        # Errors: a refused descriptor, an address outside the regions, an AXI error.
        # A mover's failure is an event: its count of failed requests moves (its error
        # code stays until its next request, which a stopped run never makes).
        failed = []
        for k, mover in enumerate([*reads, *writes]):
            seen = Signal.like(mover.failures, name=f"failures_seen{k}")
            m.d.sync += seen.eq(mover.failures)
            failed.append(seen != mover.failures)
        memory_error, address_error = Signal(), Signal()
        m.d.sync += [memory_error.eq(memory_error | _any(failed)),
                     address_error.eq(address_error | _any(r.error for r in relocators)
                                      | onchip_error)]
        with m.If(control.start):
            m.d.sync += [memory_error.eq(0), address_error.eq(0)]
        # A failure counted as the movers fall idle (the last B or R of the instruction)
        # reaches memory_error a cycle later: the instruction is not finished before it
        # does, or the run's last instruction would end it with no error.
        clean = Signal()
        m.d.comb += [clean.eq((fault == 0) & ~_any(failed) & ~memory_error),
                     seq.finished.eq(Cat(*(seen & ~busy & clean
                                           for seen, busy in zip(done_seen, lane_busy))))]
        unsupported = Signal()
        with m.If(seq.issue.valid & missing):
            m.d.sync += unsupported.eq(1)
        with m.If(control.start):
            m.d.sync += unsupported.eq(0)
        with m.If(unsupported):
            m.d.comb += seq.abort.eq(code("opcode"))
        with m.Elif(fault != 0):
            m.d.comb += seq.abort.eq(fault)
        with m.Elif(memory_error):
            m.d.comb += seq.abort.eq(code("memory"))
        with m.Elif(address_error):
            m.d.comb += seq.abort.eq(code("address"))
        engines_busy = _any(engine.busy for engine in engines.values())
        m.d.comb += seq.idle.eq(~engines_busy & ~all_busy)

        # The busy cycles the control block counts, per unit.
        busy = control.unit_busy

        def busy_of(*names):
            return _any(engines[n].busy for n in names if n in engines)

        m.d.comb += [busy.linear.eq(busy_of("linear")), busy.attention.eq(busy_of("attention")),
                     busy.layernorm.eq(busy_of("layernorm")),
                     busy.moe.eq(busy_of("route", "expert", "combine")),
                     busy.read.eq(_any(mover.busy for mover in reads)),
                     busy.write.eq(_any(w.busy for w in writes))]
        return m


def _onchip(m, hw, halt, seq, relocators, reads, writes):
    """The on-chip activation memory and a router in front of each channel's relocator
    (:mod:`moevit.hw.top.onchip`; with two write channels, both on its write port), held
    in reset with the engines while a run stops. Returns the channels' new meeting points (``(req, data)``
    per read channel, and per write channel), the on-chip side's ``busy`` and ``error``,
    and each router's ``busy`` (read channels, then write channels)."""
    from moevit.hw.top.onchip import OnChipMemory, ReadRouter, WriteRouter

    channels = len(reads)
    ram = OnChipMemory(hw.bus_width, depth=hw.onchip_bytes // (hw.bus_width // 8),
                       channels=channels, writers=len(writes), eager=hw.x_by_words)
    m.submodules.onchip = ResetInserter(halt)(ram)
    routers = [ReadRouter(hw.bus_width, in_flight=hw.max_outstanding) for _ in reads]
    routers += [WriteRouter(hw.bus_width, in_flight=hw.max_outstanding) for _ in writes]
    for k, router in enumerate(routers):
        m.submodules[f"route{k}"] = ResetInserter(halt)(router)
        m.d.comb += [router.window_at.eq(seq.bounds.output_end),
                     router.window_end.eq(seq.onchip_end)]
        wiring.connect(m, router.mem.req, relocators[k].i)
    for k, router in enumerate(routers[:channels]):
        wiring.connect(m, reads[k].data, router.mem.data)
        wiring.connect(m, router.ram, ram.rd[k])
    for router, write in zip(routers[channels:], writes):
        wiring.connect(m, router.mem.data, write.data)
    for k, router in enumerate(routers[channels:]):
        wiring.connect(m, router.ram, ram.wr[k])
    return ([(r.i.req, r.i.data) for r in routers[:channels]],
            [(r.i.req, r.i.data) for r in routers[channels:]],
            ram.busy | _any(r.busy for r in routers), _any(r.error for r in routers),
            [r.busy for r in routers])


def _any(values):
    values = list(values)
    result = Const(0, 1)
    for value in values:
        result = result | value
    return result

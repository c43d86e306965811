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
wrote. The ports are those of an XRT-managed RTL kernel (``ap_clk``,
``ap_rst_n``, ``interrupt``, ``s_axi_control``, ``m_axi_gmem_*`` with 64-bit
addresses and the HwConfig's ``bus_width``, and ``m_axi_gmem1_*`` ... for its
``memory_ports``), so one top serves a Vivado block
design (ZCU102, ZCU104) and a v++ link (U280).

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

from amaranth.hdl import ClockDomain, Const, Module, ResetInserter, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import LinearDescriptor
from moevit.hw.program.isa import (OPCODES, AttentionDescriptor, CombineDescriptor,
                                   CopyDescriptor, ExpertDescriptor, LayerNormDescriptor,
                                   PatchifyDescriptor, RouteDescriptor, TaskLinearDescriptor)
from moevit.hw.top.control import AxiLiteSignature, Control
from moevit.hw.top.memory_ports import connect_ports, port_members
from moevit.hw.top.movers import ReadMover, WriteMover
from moevit.hw.top.sequencer import Sequencer, code

__all__ = ["Accelerator", "ENGINES", "ENGINE_OF", "ENGINE_CHANNELS"]

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
        if hw.issue_lanes != 1:
            self._MustUse__silence = True
            raise ValueError("The top of two issue lanes is not built yet: its programs are "
                             "(moevit.hw.program.compiler.interleave), its sequencer and "
                             "engines' second lane are not")
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

        # Which engine an opcode runs on, and the payload it gets.
        issue = seq.issue.payload
        image, entry = issue.image, issue.entry
        by_opcode = {op: name for op, name in ENGINE_OF.items() if name in engines}
        active = Signal(8)   # the opcode running (0: none)
        with m.If(seq.issue.valid & seq.issue.ready):
            m.d.sync += active.eq(issue.opcode)
        with m.If(seq.done):
            m.d.sync += active.eq(0)

        # The linear engine's jobs: from the sequencer, or from the EXPERT engine.
        if linear is not None:
            linear_job = linear.desc.payload
            with m.If(issue.opcode == TaskLinearDescriptor.OPCODE):
                m.d.comb += linear_job.op.eq(_linear_from_task(m, image, entry, hw))
            with m.Else():
                m.d.comb += linear_job.op.eq(image[:LinearDescriptor.width()])
        if expert is not None:
            with m.If(active == ExpertDescriptor.OPCODE):
                m.d.comb += [linear_job.eq(expert.job.payload),
                             linear.desc.valid.eq(expert.job.valid),
                             expert.job.ready.eq(linear.desc.ready)]
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

        # Memory: engine channels (relocated), then the sequencer's reads (memory_ports.MOVERS).
        reads = [ReadMover(hw.bus_width, max_outstanding=hw.max_outstanding)
                 for _ in range(ENGINE_CHANNELS + 2)]
        write = m.submodules.write = WriteMover(hw.bus_width, max_outstanding=hw.max_outstanding)
        for k, mover in enumerate(reads):
            m.submodules[f"read{k}"] = mover
        relocators = [Relocator(writes=k == ENGINE_CHANNELS) for k in range(ENGINE_CHANNELS + 1)]
        for k, relocator in enumerate(relocators):
            m.submodules[f"relocate{k}"] = relocator
            m.d.comb += [relocator.bounds.eq(seq.bounds), relocator.image.eq(seq.image)]
            for kind in ("weights", "scratch", "input", "output"):
                m.d.comb += relocator.bases[kind].eq(getattr(args, kind))
            target = reads[k].req if k < ENGINE_CHANNELS else write.req
            wiring.connect(m, relocator.o, target)
        # Where the engines' channels meet memory: the relocation and the movers, or with
        # hw.onchip_bytes the routers in front of them (moevit.hw.top.onchip).
        rd_ports = [(relocators[k].i, reads[k].data) for k in range(ENGINE_CHANNELS)]
        wr_port = (relocators[ENGINE_CHANNELS].i, write.data)
        onchip_busy, onchip_error = Const(0, 1), Const(0, 1)
        if hw.onchip_bytes:
            rd_ports, wr_port, onchip_busy, onchip_error = _onchip(
                m, hw, halt, seq, relocators, reads, write)

        def owner_of(k):
            """(engine, its port) per opcode running on engine channel ``k``."""
            owners = {}
            for opcode, name in by_opcode.items():
                engine = engines[name]
                if opcode == ExpertDescriptor.OPCODE:
                    if k < len(linear.rd):
                        owners[opcode] = linear.rd[k]
                    elif k == 4:
                        owners[opcode] = expert.rd[0]
                elif k < len(engine.rd):
                    owners[opcode] = engine.rd[k]
            return owners

        for k in range(ENGINE_CHANNELS):
            (req, beats), mover = rd_ports[k], reads[k]
            for opcode, port in owner_of(k).items():
                with m.If(active == opcode):
                    m.d.comb += [req.valid.eq(port.req.valid), req.payload.eq(port.req.payload),
                                 port.req.ready.eq(req.ready),
                                 port.data.valid.eq(beats.valid),
                                 port.data.payload.eq(beats.payload),
                                 beats.ready.eq(port.data.ready)]
            with m.If(halt):
                m.d.comb += mover.data.ready.eq(1)
        writer = {opcode: (linear if name == "expert" else engines[name])
                  for opcode, name in by_opcode.items()}
        req, beats = wr_port
        for opcode, engine in writer.items():
            with m.If(active == opcode):
                m.d.comb += [req.valid.eq(engine.wr.req.valid),
                             req.payload.eq(engine.wr.req.payload),
                             engine.wr.req.ready.eq(req.ready),
                             beats.valid.eq(engine.wr.data.valid),
                             beats.payload.eq(engine.wr.data.payload),
                             engine.wr.data.ready.eq(beats.ready)]
        with m.If(halt):
            m.d.comb += [write.data.valid.eq(1), write.data.payload.eq(0)]

        # The sequencer's own reads, at physical addresses.
        for port, mover in ((seq.prog, reads[ENGINE_CHANNELS]),
                            (seq.entry, reads[ENGINE_CHANNELS + 1])):
            wiring.connect(m, port.req, mover.req)
            wiring.connect(m, mover.data, port.data)

        # The movers onto the memory ports, by the table of moevit.hw.top.memory_ports.
        connect_ports(m, self, hw, reads, write)

        # Completion: the engine handed its work over and every burst is answered.
        movers_busy, all_busy = Signal(), Signal()   # engine channels; and the sequencer's
        m.d.comb += [movers_busy.eq(write.busy | _any(r.busy for r in reads[:ENGINE_CHANNELS])
                                    | onchip_busy),
                     all_busy.eq(movers_busy | _any(r.busy for r in reads[ENGINE_CHANNELS:]))]
        done_seen, fault = Signal(), Signal(8)
        for opcode, name in by_opcode.items():
            engine = engines[name]
            with m.If((active == opcode) & engine.done):
                m.d.sync += done_seen.eq(1)
                with m.If(engine.error != 0):
                    m.d.sync += fault.eq(code("descriptor"))
        with m.If(seq.finished | seq.start):
            m.d.sync += done_seen.eq(0)
        with m.If(seq.start):
            m.d.sync += fault.eq(0)

        # EXPERT: a linear job is done for it when its writes are answered too (fc2 reads
        # the hidden rows fc1 wrote).
        if expert is not None:
            job_seen = Signal()
            with m.If(linear.done):
                m.d.sync += job_seen.eq(1)
            m.d.comb += expert.job_done.eq(job_seen & ~movers_busy)
            with m.If(expert.job_done | halt):
                m.d.sync += job_seen.eq(0)

        # Errors: a refused descriptor, an address outside the regions, an AXI error.
        # A mover's failure is an event: its count of failed requests moves (its error
        # code stays until its next request, which a stopped run never makes).
        failed = []
        for k, mover in enumerate([*reads, write]):
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
        m.d.comb += seq.finished.eq(done_seen & ~movers_busy & (fault == 0) & ~_any(failed)
                                    & ~memory_error)
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
                     busy.read.eq(_any(mover.busy for mover in reads)), busy.write.eq(write.busy)]
        return m


def _onchip(m, hw, halt, seq, relocators, reads, write):
    """The on-chip activation memory and a router in front of each channel's relocator
    (:mod:`moevit.hw.top.onchip`), held in reset with the engines while a run stops.
    Returns the channels' new meeting points (``(req, data)`` per read channel, and the
    write channel's), and the on-chip side's ``busy`` and ``error``."""
    from moevit.hw.top.onchip import OnChipMemory, ReadRouter, WriteRouter

    ram = OnChipMemory(hw.bus_width, depth=hw.onchip_bytes // (hw.bus_width // 8),
                       channels=ENGINE_CHANNELS)
    m.submodules.onchip = ResetInserter(halt)(ram)
    routers = [ReadRouter(hw.bus_width, in_flight=hw.max_outstanding)
               for _ in range(ENGINE_CHANNELS)]
    routers.append(WriteRouter(hw.bus_width, in_flight=hw.max_outstanding))
    for k, router in enumerate(routers):
        m.submodules[f"route{k}"] = ResetInserter(halt)(router)
        m.d.comb += [router.window_at.eq(seq.bounds.output_end),
                     router.window_end.eq(seq.onchip_end)]
        wiring.connect(m, router.mem.req, relocators[k].i)
    for k, router in enumerate(routers[:-1]):
        wiring.connect(m, reads[k].data, router.mem.data)
        wiring.connect(m, router.ram, ram.rd[k])
    wiring.connect(m, routers[-1].mem.data, write.data)
    wiring.connect(m, routers[-1].ram, ram.wr)
    return ([(r.i.req, r.i.data) for r in routers[:-1]], (routers[-1].i.req, routers[-1].i.data),
            ram.busy | _any(r.busy for r in routers), _any(r.error for r in routers))


def _any(values):
    values = list(values)
    result = Const(0, 1)
    for value in values:
        result = result | value
    return result

"""cocotb drivers for ``amaranth.lib.stream`` valid/ready ports.

Amaranth names the Verilog ports of a stream member ``x`` as ``x__valid``,
``x__ready`` and ``x__payload`` (the payload flattened LSB first as its
``data.Layout`` says). :class:`StreamSource` drives an input stream,
:class:`StreamSink` receives an output stream; both take a *pause* pattern
(as cocotbext-axi's ``set_pause_generator``): an iterator of booleans, one
per cycle, ``True`` meaning "idle this cycle" for a source (a gap) and "not
ready this cycle" for a sink (back-pressure). :func:`pauses` makes the three
patterns the benches sweep: none, a fixed one and a seeded random one; given
a stream's name, the fixed pattern is that stream's own
(:func:`fixed_pattern`), so the gaps of two streams do not line up.

:func:`pack` and :func:`unpack` convert between Python values (ints, lists for
``ArrayLayout``, dicts for ``StructLayout``) and payload integers.

A source holds ``valid`` (and the payload) until the beat is taken, as the
Amaranth stream rules require.
"""

import itertools
import random
import zlib
from collections import deque

__all__ = ["pauses", "fixed_pattern", "pack", "unpack", "StreamSource", "StreamSink",
           "PAUSE_KINDS"]

PAUSE_KINDS = ("none", "fixed", "random")


def fixed_pattern(stream: str) -> tuple:
    """The fixed pause pattern of the stream named ``stream``: drawn once from its
    name, of a prime length (7 to 17) so that two streams' patterns drift apart,
    starting with a beat and ending with a pause."""
    rng = random.Random(zlib.crc32(stream.encode()))
    pattern = [rng.random() < 0.4 for _ in range(rng.choice((7, 11, 13, 17)))]
    pattern[0], pattern[-1] = False, True
    return tuple(pattern)


def pauses(kind: str = "none", *, seed: int = 0, probability: float = 0.3,
           pattern=(False, False, True, False, True, True), stream: str = None):
    """An endless pause pattern (``True`` = pause this cycle).

    Parameters
    ----------
    kind : str
        ``"none"`` (never pause), ``"fixed"`` (``pattern`` repeated) or
        ``"random"`` (each cycle pauses with ``probability``, from ``seed``).
    stream : str, optional
        The stream's name: its own fixed pattern (:func:`fixed_pattern`)
        instead of ``pattern``, and a random one seeded by ``seed`` and the name.
    """
    if stream is not None:
        pattern = fixed_pattern(stream)
        seed = seed * 1_000_003 + zlib.crc32(stream.encode())
    if kind == "none":
        return itertools.repeat(False)
    if kind == "fixed":
        return itertools.cycle(pattern)
    if kind == "random":
        rng = random.Random(seed)
        return (rng.random() < probability for _ in itertools.count())
    raise ValueError(f"Pause kind must be one of {PAUSE_KINDS}, not {kind!r}")


# Payload packing ---------------------------------------------------------------
def pack(layout, value) -> int:
    """The payload integer of ``value`` under ``layout`` (an Amaranth shape or layout).

    ``value`` is an int for a plain shape, a sequence for an ``ArrayLayout``
    and a mapping for a ``StructLayout`` (missing members are 0).
    """
    from amaranth.hdl import Shape
    from amaranth.lib import data

    if not isinstance(layout, data.Layout):
        width = Shape.cast(layout).width
        return int(value) & ((1 << width) - 1)
    image = 0
    if isinstance(layout, data.ArrayLayout):
        items = enumerate(value)
    else:
        items = value.items()
    for key, item in items:
        field = layout[key]
        image |= pack(field.shape, item) << field.offset
    return image


def unpack(layout, image: int):
    """The Python value of a payload integer (inverse of :func:`pack`)."""
    from amaranth.hdl import Shape
    from amaranth.lib import data

    image = int(image)
    if not isinstance(layout, data.Layout):
        shape = Shape.cast(layout)
        value = image & ((1 << shape.width) - 1)
        if shape.signed and value >> (shape.width - 1):
            value -= 1 << shape.width
        return value
    if isinstance(layout, data.ArrayLayout):
        elem = layout.elem_shape
        width = data.Layout.cast(elem).size if isinstance(elem, data.Layout) \
            else Shape.cast(elem).width
        return [unpack(elem, image >> (k * width)) for k in range(layout.length)]
    return {name: unpack(field.shape, image >> field.offset) for name, field in layout}


def _port(dut, name, part):
    try:
        return getattr(dut, f"{name}__{part}")
    except AttributeError:
        raise AttributeError(f"The design has no stream port {name}__{part}") from None


class StreamSource:
    """Drives the input stream ``name`` of ``dut`` with payload integers.

    Parameters
    ----------
    dut : cocotb handle
    name : str
        Stream member name (ports ``name__valid/ready/payload``).
    clock : cocotb handle
    pause : iterator of bool, optional
        Gap pattern, one draw per cycle between beats (:func:`pauses`).
    record_times : bool
        Keep the simulation time (ns) at which each beat was taken.

    Attributes
    ----------
    sent : int
        Beats taken by the design so far.
    times : list of float
        With ``record_times``, when each beat was taken (ns).
    """

    def __init__(self, dut, name, clock, *, pause=None, record_times=False):
        import cocotb

        self.name = name
        self.clock = clock
        self.valid = _port(dut, name, "valid")
        self.ready = _port(dut, name, "ready")
        self.payload = _port(dut, name, "payload")
        self._pause = iter(pause if pause is not None else pauses("none"))
        self._queue = deque()
        self._wake = cocotb.triggers.Event()
        self._idle = cocotb.triggers.Event()
        self.sent = 0
        self.times = [] if record_times else None
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def stop(self) -> None:
        """Stop driving (a following bench may drive the stream again)."""
        self._task.cancel()
        self.valid.value = 0

    def send(self, payloads) -> None:
        """Queue payload integers (non-blocking)."""
        self._queue.extend(int(p) for p in payloads)
        self._idle.clear()
        self._wake.set()

    async def wait(self) -> None:
        """Until every queued beat is taken."""
        while self._queue:
            await self._idle.wait()

    def _done(self):
        self.valid.value = 0
        self._idle.set()

    async def _run(self):
        from cocotb.triggers import ReadOnly, RisingEdge

        edge = RisingEdge(self.clock)
        while True:
            if not self._queue:
                self._done()
                self._wake.clear()
                await self._wake.wait()
            if next(self._pause):
                self.valid.value = 0
                await edge
                continue
            self.payload.value = self._queue[0]
            self.valid.value = 1
            await edge
            while not self.ready.value:
                # Sleep until ready rises instead of waking every cycle.
                await ReadOnly()
                if not self.ready.value:
                    await RisingEdge(self.ready)
                await edge
            self._queue.popleft()
            self.sent += 1
            if self.times is not None:
                from cocotb.utils import get_sim_time

                self.times.append(get_sim_time(unit="ns"))


class StreamSink:
    """Receives the output stream ``name`` of ``dut`` as payload integers.

    Parameters
    ----------
    dut, name, clock
        As :class:`StreamSource`.
    pause : iterator of bool, optional
        Back-pressure pattern, one draw per cycle (:func:`pauses`).

    Attributes
    ----------
    beats : list of int
        Payloads received so far.
    """

    def __init__(self, dut, name, clock, *, pause=None):
        import cocotb

        self.name = name
        self.clock = clock
        self.valid = _port(dut, name, "valid")
        self.ready = _port(dut, name, "ready")
        self.payload = _port(dut, name, "payload")
        self._pause = pause
        self.beats = []
        self._want = None
        self._enough = cocotb.triggers.Event()
        self.ready.value = 0 if pause is not None else 1
        self._task = cocotb.start_soon(self._run())

    def stop(self) -> None:
        """Stop receiving (a following bench may receive the stream again)."""
        self._task.cancel()
        self.ready.value = 0

    async def receive(self, count: int) -> list:
        """Until ``count`` beats in all have arrived; returns ``beats``."""
        self._want = count
        if len(self.beats) < count:
            self._enough.clear()
            await self._enough.wait()
        return self.beats

    def _take(self):
        self.beats.append(int(self.payload.value))
        if self._want is not None and len(self.beats) >= self._want:
            self._enough.set()

    async def _run(self):
        from cocotb.triggers import ReadOnly, RisingEdge

        edge = RisingEdge(self.clock)
        if self._pause is None:
            # Always ready: wake only on beats.
            while True:
                await edge
                if self.valid.value:
                    self._take()
                    continue
                await ReadOnly()
                if not self.valid.value:
                    await RisingEdge(self.valid)
        pause = iter(self._pause)
        while True:
            ready = not next(pause)
            self.ready.value = int(ready)
            await edge
            if ready and self.valid.value:
                self._take()

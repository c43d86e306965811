"""The valid/ready rules, as properties of a module under check.

Amaranth 0.5 has no ``Past``: each rule keeps the values it needs from the
previous cycle in registers of its own (:func:`past`), and checks nothing in
the first cycle (:func:`after_first`), whose past is the registers' reset.

One rule, two uses (ZipCPU's ``faxis_master`` style, one property file for
both ends of a channel): where the design under check *receives* a stream,
the rules constrain its environment (``Assume``); where it *sends* one, they
are what is proven about it (``Assert``).

The rules of a valid/ready handshake (AXI4-Stream, ``amaranth.lib.stream``):

* once ``valid`` is high it stays high until the beat is taken
  (``valid & ready``), and the payload does not change meanwhile.

A second family counts beats (:func:`beats`), so a property can relate what
a design took to what it gave (no beat lost or duplicated): counters wrap,
and relations between them are written on their difference, modulo the
counter's width, so they stay true (and inductive) on a long run.
"""

from amaranth.hdl import Assert, Assume, Module, Signal, Value, ValueCastable

__all__ = ["past", "after_first", "handshake_rules", "beats", "difference", "COUNT_WIDTH"]

#: Bits of a beat counter: wide enough for any pipeline's occupancy here.
COUNT_WIDTH = 8


def _value(v):
    return v.as_value() if isinstance(v, ValueCastable) else Value.cast(v)


def past(m: Module, value, name: str) -> Signal:
    """A register holding ``value`` from the previous cycle (call it outside any
    ``m.If``: it must load every cycle)."""
    value = _value(value)
    reg = Signal(value.shape(), name=f"past_{name}")
    m.d.sync += reg.eq(value)
    return reg


def after_first(m: Module) -> Signal:
    """High from the second cycle on (the first one has no past)."""
    flag = Signal(name="after_first")
    m.d.sync += flag.eq(1)
    return flag


def handshake_rules(m: Module, valid, ready, payload, *, assume: bool, name: str,
                    live=None):
    """A valid/ready channel's rules: what ``valid`` offers stays offered, unchanged,
    until taken. ``assume``: the design under check receives the channel (its
    sender is the environment). ``payload`` may be a list of values (AXI's
    channels carry several). ``live``: the first-cycle flag of :func:`after_first`.
    """
    check = Assume if assume else Assert
    if live is None:
        live = after_first(m)
    values = payload if isinstance(payload, (list, tuple)) else [payload]
    held = past(m, valid & ~ready, f"{name}_held")
    before = [past(m, value, f"{name}_p{k}") for k, value in enumerate(values)]
    with m.If(live & held):
        m.d.comb += check(valid, f"{name}: valid withdrawn before ready")
        for value, then in zip(values, before):
            m.d.comb += check(_value(value) == then, f"{name}: payload changed before ready")


def beats(m: Module, valid, ready, name: str, *, width: int = COUNT_WIDTH) -> Signal:
    """A counter of the beats taken on a channel (mod ``2**width``)."""
    count = Signal(width, name=f"beats_{name}")
    with m.If(valid & ready):
        m.d.sync += count.eq(count + 1)
    return count


def difference(a: Signal, b: Signal) -> Value:
    """``a - b`` modulo the counters' width: beats taken by one and not the other."""
    return (a - b)[:max(len(a), len(b))]

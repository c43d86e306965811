"""The top-k insertion list: ``intops.topk`` one value a cycle.

A row's values arrive in index order (``index`` 0, 1, 2...), one per
``insert``; the list keeps them sorted, larger first, and at equal values the
earlier (lower index) first, which is ``intops.topk``'s order. After the
row's last value, entry ``s`` of ``top_v``/``top_i`` is the ``s``-th best
value and its index; a row's first value (``index`` 0) starts a new row.
Shared by the MoE unit's gate (:mod:`moevit.hw.units.moe`) and the ROUTE
engine (:mod:`moevit.hw.top.moe`).
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TopK"]


class TopK(wiring.Component):
    """An insertion list of ``lanes`` entries (the longest row).

    Parameters
    ----------
    lanes : int
        Entries of the list: the most values of a row (experts).

    Members
    -------
    insert : In(1)
        Insert ``value`` (at position ``index`` of its row) in this cycle.
    value : In(signed(8))
    index : In(range(lanes))
        The position of ``value`` in its row; the entries before position
        ``index`` are the row's (0: the row starts here).
    top_v : Out(data.ArrayLayout(signed(8), lanes))
    top_i : Out(data.ArrayLayout(range(lanes), lanes))
        The entries, best first (registers).

    Raises
    ------
    TypeError
        If ``lanes`` is not a positive integer.
    """

    def __init__(self, lanes):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            self._MustUse__silence = True  # never elaborated: no unused-elaboratable warning
            raise TypeError(f"Lanes must be a positive integer, not {lanes!r}")
        self._lanes = lanes
        super().__init__({
            "insert": In(1),
            "value": In(signed(8)),
            "index": In(range(lanes)),
            "top_v": Out(data.ArrayLayout(signed(8), lanes)),
            "top_i": Out(data.ArrayLayout(range(lanes), lanes)),
        })

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        L = self._lanes
        v, j = self.value, self.index
        top_v, top_i = self.top_v, self.top_i
        # Entries s < j with a value >= the new one stay (the earlier index wins a
        # tie), the new one goes after them, the rest move down one place.
        stay = [Signal(name=f"stay{s}") for s in range(L)]
        for s in range(L):
            m.d.comb += stay[s].eq((j > s) & (top_v[s] >= v))
        with m.If(self.insert):
            for s in range(L):
                with m.If(~stay[s]):
                    if s == 0:
                        m.d.sync += [top_v[s].eq(v), top_i[s].eq(j)]
                    else:
                        with m.If(stay[s - 1]):
                            m.d.sync += [top_v[s].eq(v), top_i[s].eq(j)]
                        with m.Else():
                            m.d.sync += [top_v[s].eq(top_v[s - 1]), top_i[s].eq(top_i[s - 1])]
        return m

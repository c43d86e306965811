"""Formal checks of the RTL with SymbiYosys: properties written in Amaranth.

:mod:`.rules` (valid/ready rules, beat counters, past values), :mod:`.axi`
(AXI4 master and AXI4-Lite slave rules), :mod:`.harness` (the wrapper of a
design under check), :mod:`.sby` (running SymbiYosys), :mod:`.checks` (what is
checked, on which design point, how deep) and :mod:`.run` (``make formal``:
the table and ``build/formal/summary.json``).
"""

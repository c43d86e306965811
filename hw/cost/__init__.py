"""The cost model (cycles per instruction: ``cycles``; resources per unit fitted to Yosys:
``resources``) and the design-space search (``dse``), with its report (``page``)."""

"""cocotb test modules (run through :func:`moevit.sim.runner.run_cocotb`, never imported by pytest).

Each bench reads its case from the environment (``MOEVIT_CASE``: a path to an
``.npz`` or ``.json`` file the pytest entry point wrote) and writes what it
measured into ``$MOEVIT_SIM_OUT``.
"""

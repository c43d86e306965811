"""The host driver and its devices.

- :mod:`~moevit.host.backend`: what a device must do (registers, buffers, sleep, reset);
- :mod:`~moevit.host.driver`: :class:`~moevit.host.driver.Accelerator`, one driver for every
  device (numpy only; offsets from the register map);
- :mod:`~moevit.host.sim`: the ``sim`` backend, the RTL top co-simulated;
- ``zynq`` (PYNQ) and ``alveo`` (pyxrt): the board backends;
- :mod:`~moevit.host.commands`: ``moevit run`` and the demo's accelerator step;
- ``notebooks/moevit_board.ipynb``: the board notebook.
"""

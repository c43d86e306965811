"""What the driver needs of a device: the contract every backend follows.

The driver (:mod:`moevit.host.driver`) is one piece of code for every device;
a *backend* only moves 32-bit words on the control port and bytes between the
host and the device's buffers. The register offsets are never the backend's
business: the driver takes them from the register map JSON.

Backends (each imports its vendor module itself, so that numpy alone runs the
driver):

- ``sim``: the co-simulated RTL top (cocotbext-axi ``AxiLiteMaster`` on
  ``s_axi_control``, the buffers in an ``AxiRam``);
- ``zynq``: PYNQ on ZCU102 / ZCU104 (``Overlay``, ``pynq.allocate``);
- ``alveo``: XRT's ``pyxrt`` on the U280 (``xrt.device``, ``xrt.bo``).

A backend is a context manager; :func:`open_backend` makes one by name.
"""

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["Buffer", "Backend", "BACKENDS", "open_backend"]

#: Backend name -> "module:Class" (imported only when that backend is opened).
BACKENDS = {
    "sim": "moevit.host.sim:SimBackend",
    "zynq": "moevit.host.zynq:ZynqBackend",
    "alveo": "moevit.host.alveo:AlveoBackend",
}


class Buffer(ABC):
    """A buffer in device memory that the accelerator reads or writes.

    ``address`` is the device's byte address of its first byte (what the driver
    writes into the argument register); ``nbytes`` its size.
    """

    name: str
    address: int
    nbytes: int

    @abstractmethod
    def write(self, data, offset: int = 0) -> None:
        """Copy ``data`` (bytes or an array, taken as raw bytes) into the buffer at
        ``offset`` and make it visible to the device (flush)."""

    @abstractmethod
    def read(self, nbytes: int | None = None, offset: int = 0) -> np.ndarray:
        """The device's bytes ``[offset, offset + nbytes)`` (default: to the end) as a
        new uint8 array, after making the device's writes visible (invalidate)."""


class Backend(ABC):
    """One device with the accelerator on it.

    ``clock_hz``: the kernel clock (for turning cycles into seconds);
    ``name``: the backend's name in :data:`BACKENDS`; ``hw``: the HwConfig the
    device's design was built for, when the backend knows it (the driver then
    refuses a program compiled for another), else None.
    """

    name: str
    clock_hz: float
    hw = None

    @abstractmethod
    def read32(self, offset: int) -> int:
        """Read the 32-bit word at byte ``offset`` of ``s_axi_control``."""

    @abstractmethod
    def write32(self, offset: int, value: int) -> None:
        """Write the 32-bit word ``value`` at byte ``offset`` of ``s_axi_control``."""

    @abstractmethod
    def allocate(self, name: str, nbytes: int) -> Buffer:
        """A new device buffer of ``nbytes`` (aligned as the device needs), named for
        error messages."""

    @abstractmethod
    def sleep(self, seconds: float) -> None:
        """Let the device run for ``seconds`` (of the device's time: simulated time on
        ``sim``) before the driver polls again."""

    def reset(self) -> None:
        """Bring the kernel back to idle after a timeout (a backend that cannot: no-op;
        the driver then relies on the kernel's own stop on error)."""

    def close(self) -> None:
        """Release the device and its buffers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_backend(name: str, **options) -> Backend:
    """Open the backend ``name`` (see :data:`BACKENDS`) with its ``options``."""
    from importlib import import_module

    from moevit.errors import ConfigError

    if name not in BACKENDS:
        raise ConfigError(f"Unknown backend {name!r}; backends are {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    try:
        imported = import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:
            raise
        from moevit.errors import ToolNotFoundError

        raise ToolNotFoundError(f"The {name} backend ({module}) is not part of this moevit") \
            from None
    return getattr(imported, cls)(**options)

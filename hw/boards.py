"""Boards as data: the resources, memories and tools of each target board.

One JSON file per board lives in the repository's ``boards/`` folder, which
installs as the package ``moevit.boards``. JSON rather than TOML: the
standard library reads it on every Python moevit supports (``tomllib`` is
3.11+), and every figure carries its source as data, not as a comment::

    "dsp": {"value": 2520, "source": "DS891, device table", "checked": "..."}

``source`` names the document (and section) or repository path the figure
comes from; ``checked`` says where the figure was read to confirm it, or is
``null`` where it was not confirmed. A file missing a figure, a figure
without a source, or an impossible value is a :class:`ConfigError`, raised
when the file is read, so a cost model never runs on a half-described board.
"""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from moevit.errors import ConfigError

__all__ = ["Board", "Memory", "BOARDS", "get_board", "load_board"]

BOARDS_PACKAGE = "moevit.boards"
HOSTS = ("pynq", "pyxrt")


@dataclass(frozen=True)
class Memory:
    """An external memory: its kind, size, peak bandwidth over all its channels, and the
    time from a burst's address to its first answer (the cost model's latency)."""

    name: str
    kind: str
    capacity_gib: float
    channels: int
    bandwidth_gbs: float
    latency_ns: float


@dataclass(frozen=True)
class Board:
    """A board's figures (see the module docstring); ``sources`` maps each
    figure's dotted name (``"memories.0.bandwidth_gbs"``) to its source,
    ``checked`` to where it was confirmed (``None``: not confirmed)."""

    name: str
    title: str
    part: str
    dsp: int
    lut: int
    ff: int
    bram36: int
    uram: int
    memories: tuple
    port_name: str
    ports: int
    port_bits: int
    clock_mhz: float
    vitis_platform: str | None
    vitis_max: str | None
    host: str
    sources: dict
    checked: dict
    port_clock_mhz: float | None = None   # the ports' own clock; None: the design's


    def memory(self, kind: str) -> Memory:
        """The board's first memory of ``kind`` (``"DDR4"``, ``"HBM2"``)."""
        for memory in self.memories:
            if memory.kind == kind:
                return memory
        kinds = ", ".join(m.kind for m in self.memories)
        raise ConfigError(f"Board {self.name} has no {kind} memory (it has: {kinds})")

    def row(self) -> dict:
        """The figures as one JSON-ready row (``moevit hw boards --json``)."""
        return {
            "name": self.name, "title": self.title, "part": self.part, "dsp": self.dsp,
            "lut": self.lut, "ff": self.ff, "bram36": self.bram36, "uram": self.uram,
            "memories": [vars(m) for m in self.memories], "port_name": self.port_name,
            "ports": self.ports, "port_bits": self.port_bits, "clock_mhz": self.clock_mhz,
            "port_bandwidth_gbs": self.port_bandwidth_gbs, "vitis_platform": self.vitis_platform,
            "vitis_max": self.vitis_max, "host": self.host,
        }

    @property
    def port_bandwidth_gbs(self) -> float:
        """Peak bandwidth of the fabric's memory ports at their clock (the board's, unless
        the ports have their own), GB/s."""
        return self.ports * self.port_bits / 8 * (self.port_clock_mhz or self.clock_mhz) / 1000


def _board_files() -> dict:
    folder = resources.files(BOARDS_PACKAGE)
    return {Path(entry.name).stem: entry for entry in folder.iterdir() if entry.name.endswith(".json")}


BOARDS = tuple(sorted(_board_files()))


def get_board(name: str) -> Board:
    """The board called ``name`` (one of :data:`BOARDS`), or read from a
    ``.json`` file at that path."""
    if name.endswith(".json"):
        return load_board(Path(name))
    files = _board_files()
    if name not in files:
        raise ConfigError(f"Unknown board {name!r}; known boards: {', '.join(BOARDS)} "
                          "(or a path to a board .json file)")
    board = load_board(files[name])
    if board.name != name:
        raise ConfigError(f"The board file {name}.json names itself {board.name!r}")
    return board


def load_board(path) -> Board:
    """Read and check one board file (a path or an ``importlib.resources`` entry)."""
    label = f"board file {getattr(path, 'name', path)}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"No {label} at {path}") from None
    except OSError as error:
        raise ConfigError(f"Cannot read the {label}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"The {label} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"The {label} is not valid JSON: {error.msg} "
                          f"at line {error.lineno} column {error.colno}") from None
    return _Reader(label, data).board()


class _Reader:
    """Checks a board file's figures one by one, naming the first that is wrong."""

    def __init__(self, label, data):
        self.label = label
        self.data = data
        self.sources = {}
        self.checked = {}

    def fail(self, where, problem):
        raise ConfigError(f"The {self.label}: {where} {problem}")

    def field(self, parent, key, where):
        if not isinstance(parent, dict):
            self.fail(where.rpartition(".")[0] or "the file", "must be a JSON object")
        if key not in parent:
            self.fail(where, "is missing")
        return parent[key]

    def figure(self, parent, key, where, kind, minimum=None, nullable=False):
        """The ``value`` of figure ``parent[key]``, checked, with its source recorded."""
        entry = self.field(parent, key, where)
        if not isinstance(entry, dict) or "value" not in entry:
            self.fail(where, 'must be an object {"value": ..., "source": ..., "checked": ...}')
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            self.fail(where, "has no source (a document and section, or a repository path)")
        checked = entry.get("checked", "missing")
        if checked is not None and (not isinstance(checked, str) or not checked.strip()):
            self.fail(where, "needs 'checked': where the figure was confirmed, or null")
        value = entry["value"]
        self.sources[where], self.checked[where] = source, checked
        if value is None and nullable:
            return None
        # bool is an int in Python; a board never has True DSPs.
        if isinstance(value, bool) or not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            self.fail(where, f"must be {names}{' or null' if nullable else ''}, not {value!r}")
        if minimum is not None and not value >= minimum:  # also rejects NaN
            self.fail(where, f"must be at least {minimum}, not {value!r}")
        if isinstance(value, float) and value == float("inf"):
            self.fail(where, f"must be finite, not {value!r}")
        if isinstance(value, str) and not value.strip():
            self.fail(where, "must not be empty")
        return value

    def text(self, parent, key, where):
        value = self.field(parent, key, where)
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty string, not {value!r}")
        return value

    def memory(self, entry, where):
        number = (int, float)
        return Memory(
            name=self.text(entry, "name", f"{where}.name"),
            kind=self.figure(entry, "kind", f"{where}.kind", str),
            capacity_gib=self.figure(entry, "capacity_gib", f"{where}.capacity_gib", number, 0.001),
            channels=self.figure(entry, "channels", f"{where}.channels", int, 1),
            bandwidth_gbs=self.figure(entry, "bandwidth_gbs", f"{where}.bandwidth_gbs", number, 0.001),
            latency_ns=self.figure(entry, "latency_ns", f"{where}.latency_ns", number, 1),
        )

    def board(self) -> Board:
        data = self.data
        if not isinstance(data, dict):
            self.fail("the file", "must be a JSON object")
        memories = self.field(data, "memories", "memories")
        if not isinstance(memories, list) or not memories:
            self.fail("memories", "must be a non-empty list")
        ports = self.field(data, "ports", "ports")
        board = Board(
            name=self.text(data, "name", "name"),
            title=self.text(data, "title", "title"),
            part=self.figure(data, "part", "part", str),
            dsp=self.figure(data, "dsp", "dsp", int, 1),
            lut=self.figure(data, "lut", "lut", int, 1),
            ff=self.figure(data, "ff", "ff", int, 1),
            bram36=self.figure(data, "bram36", "bram36", int, 1),
            uram=self.figure(data, "uram", "uram", int, 0),
            memories=tuple(self.memory(m, f"memories.{i}") for i, m in enumerate(memories)),
            port_name=self.text(ports, "name", "ports.name"),
            ports=self.figure(ports, "count", "ports.count", int, 1),
            port_bits=self.figure(ports, "bits", "ports.bits", int, 8),
            clock_mhz=self.figure(data, "clock_mhz", "clock_mhz", (int, float), 1),
            vitis_platform=self.figure(data, "vitis_platform", "vitis_platform", str, nullable=True),
            vitis_max=self.figure(data, "vitis_max", "vitis_max", str, nullable=True),
            host=self.figure(data, "host", "host", str),
            sources=self.sources,
            checked=self.checked,
            # Optional: ports clocked apart from the design (the U280's HBM AXI ports).
            port_clock_mhz=(self.figure(ports, "clock_mhz", "ports.clock_mhz", (int, float), 1,
                                        nullable=True) if "clock_mhz" in ports else None),
        )
        if board.host not in HOSTS:
            self.fail("host", f"must be one of {', '.join(HOSTS)}, not {board.host!r}")
        return board

"""The instruction set of the accelerator: one opcode table, one descriptor per opcode.

An instruction is a :class:`~moevit.hw.program.descriptor.Descriptor`: its
opcode in the low 7 bits of its first 32-bit word says which unit runs it and
how many words it has (bit 7 marks it ``concurrent``: :data:`CONCURRENT_BIT`). The
kernels' descriptors (linear, attention, LayerNorm) are the operands of the first three
opcodes; this module adds what a whole model needs around them:

============  ==================  =============================================
opcode        descriptor          what runs it
============  ==================  =============================================
1 LINEAR      LinearDescriptor    linear kernel (residual add fused)
2 ATTENTION   AttentionDescriptor attention kernel
3 LAYERNORM   LayerNormDescriptor LayerNorm unit
4 PATCHIFY    PatchifyDescriptor  memory movers: image -> patches (a gather)
5 COPY        CopyDescriptor      memory movers: bytes -> bytes
6 TASK_LINEAR TaskLinearDescriptor linear kernel, weights of the task register
7 ROUTE       RouteDescriptor     MoE unit: top-k and gate weights
8 EXPERT      ExpertDescriptor    MoE unit + linear kernel: one expert, fc1 and fc2
9 COMBINE     CombineDescriptor   MoE unit: weighted sum of the experts, residual add
============  ==================  =============================================

Memory formats (addresses are byte offsets into the device memory image,
whose base is a register of the top):

* an activation is int8, row-major ``(rows, features)``, rows packed (the
  golden model's tensor as it is);
* a linear layer's weights are its ``w`` stream's beats, ``cols`` int8 each,
  and its per-channel constants its ``chan`` stream's beats, one 64-bit
  little-endian word each (bias s32 in bits 0..31, multiplier in 32..46,
  shift in 47..52) (:mod:`moevit.hw.program.layout`);
* a task table is one :class:`TaskEntry` (four 32-bit words) per task, at
  ``table_addr + 16 * task``: the task register selects the entry, so
  switching task re-sends nothing;
* the routing of a MoE layer is its top-k expert indices (u8, ``tokens x
  top_k``) and gate weights (u16 Q0.15, same shape); the experts' outputs
  go to a slots tensor ``(tokens, top_k, dim)`` int8, slot ``s`` of token
  ``t`` holding the output of expert ``topk[t, s]`` for it.
"""

from dataclasses import dataclass
from typing import NamedTuple

from moevit.hw.program.descriptor import (AttentionDescriptor, Descriptor, DescriptorError,
                                          LayerNormDescriptor, LinearDescriptor, _check_constants,
                                          _check_positive, _check_range, packed)

__all__ = ["LANE_OF", "CONCURRENT_BIT", "PatchifyDescriptor", "CopyDescriptor",
           "TaskLinearDescriptor", "RouteDescriptor", "ExpertDescriptor", "CombineDescriptor",
           "TaskEntry", "OPCODES", "UNITS", "instruction_class", "GATE_RULES", "TASK_ENTRY_BYTES"]

#: The gate rules a RouteDescriptor computes (``rule`` field), as ModelConfig names them.
GATE_RULES = ("vmoe", "renorm")
TASK_ENTRY_BYTES = 16


class TaskEntry(NamedTuple):
    """One task's row of a task table: four little-endian u32 words.

    ``consts`` packs the requantization (or softmax) multiplier in bits 0..14
    and its shift in bits 15..20 (a gate's softmax constants; 0 for a head).
    """

    w_addr: int
    chan_addr: int
    out_features: int
    consts: int = 0

    @staticmethod
    def pack_consts(mult: int, shift: int) -> int:
        return int(mult) | int(shift) << 15

    @property
    def mult(self) -> int:
        return self.consts & 0x7FFF

    @property
    def shift(self) -> int:
        return (self.consts >> 15) & 0x3F


@dataclass(frozen=True)
class PatchifyDescriptor(Descriptor):
    """Cut the int8 image ``(channels, rows, columns)`` at ``x_addr`` into the
    patches ``(patches, channels*patch*patch)`` at ``y_addr``, patches
    row-major over the grid, features in (channel, row, column) order (the
    golden model's ``patch_embed.in``)."""

    OPCODE = 4
    MNEMONIC = "PATCHIFY"
    UNIT = "mover"
    OUTPUT = "y_addr"

    channels: int = packed(8, doc="image channels", default=1)
    rows: int = packed(16, doc="image rows", default=1)
    columns: int = packed(16, doc="image columns", default=1)
    patch: int = packed(8, doc="patch side", default=1)
    x_addr: int = packed(32, doc="byte address of the image", default=0)
    y_addr: int = packed(32, doc="byte address of the patches", default=0)

    def validate(self):
        _check_positive(self, "Patchify", (("channels", "channels"), ("rows", "rows"),
                                           ("columns", "columns"), ("patch", "patch")))
        if self.rows % self.patch or self.columns % self.patch:
            raise DescriptorError(
                f"Patchify descriptor image {self.rows}x{self.columns} is not a whole number "
                f"of {self.patch}x{self.patch} patches")
        if self.channels * self.patch * self.patch > self.hw.max_in:
            raise DescriptorError(
                f"Patchify descriptor patch of {self.channels * self.patch ** 2} features exceeds "
                f"the {self.hw.max_in}-feature buffer of hardware {self.hw.name!r}")


@dataclass(frozen=True)
class CopyDescriptor(Descriptor):
    """Copy ``length`` bytes from ``src_addr`` to ``dst_addr`` (the class token into
    row 0 of the embedding)."""

    OPCODE = 5
    MNEMONIC = "COPY"
    UNIT = "mover"
    OUTPUT = "dst_addr"

    length: int = packed(24, doc="bytes to copy", default=1)
    src_addr: int = packed(32, doc="byte address of the source", default=0)
    dst_addr: int = packed(32, doc="byte address of the destination", default=0)

    def validate(self):
        _check_positive(self, "Copy", (("length", "length"),))


@dataclass(frozen=True)
class TaskLinearDescriptor(Descriptor):
    """A linear layer whose weights depend on the task (a MoE gate, a head).

    Entry ``task`` of the table at ``table_addr`` (a :class:`TaskEntry`) gives
    the weights, the per-channel constants and the output width; with it the
    operation is :meth:`resolve`'s :class:`LinearDescriptor`. A task id of
    ``tasks`` or more is an error of the top.
    """

    OPCODE = 6
    MNEMONIC = "TASK_LINEAR"
    UNIT = "linear"
    OUTPUT = "y_addr"

    tokens: int = packed(16, doc="tokens (rows of x and y)", default=1)
    in_features: int = packed(16, doc="input features", default=1)
    max_out: int = packed(16, doc="the widest task's output features (size of y)", default=1)
    tasks: int = packed(8, doc="entries of the task table", default=1)
    table_addr: int = packed(32, doc="byte address of the task table", default=0)
    x_addr: int = packed(32, doc="byte address of x", default=0)
    y_addr: int = packed(32, doc="byte address of y", default=0)

    def validate(self):
        _check_positive(self, "Task linear", (("tokens", "tokens"), ("input features",
                                                                     "in_features"),
                                              ("output features", "max_out"),
                                              ("task count", "tasks")))
        # The shape checks of the kernel, for the widest task.
        LinearDescriptor(self.hw, tokens=self.tokens, in_features=self.in_features,
                         out_features=self.max_out)

    def resolve(self, entry: TaskEntry) -> LinearDescriptor:
        """The linear operation of the task whose table entry is ``entry``."""
        if not 1 <= entry.out_features <= self.max_out:
            raise DescriptorError(
                f"Task entry of {entry.out_features} output features; the instruction "
                f"allows 1..{self.max_out}")
        return LinearDescriptor(self.hw, tokens=self.tokens, in_features=self.in_features,
                                out_features=entry.out_features, x_addr=self.x_addr,
                                w_addr=entry.w_addr, chan_addr=entry.chan_addr,
                                y_addr=self.y_addr)


@dataclass(frozen=True)
class RouteDescriptor(Descriptor):
    """Top-k over a MoE layer's gate logits and the gate weights by the model's rule.

    ``topk = intops.topk(logits, top_k)``; ``rule`` 0 (``"vmoe"``): the
    weights are the selected entries of ``intops.softmax`` over all
    ``experts`` logits; 1 (``"renorm"``): the softmax over the ``top_k``
    selected logits; the softmax constants are the task's (``consts`` of
    entry ``task`` of the table at ``table_addr``, the gate's table).
    """

    OPCODE = 7
    MNEMONIC = "ROUTE"
    UNIT = "moe"
    OUTPUT = "topk_addr"

    tokens: int = packed(16, doc="tokens (rows of the logits)", default=1)
    experts: int = packed(8, doc="experts (columns of the logits)", default=1)
    top_k: int = packed(8, doc="experts per token", default=1)
    rule: int = packed(1, doc="gate rule: 0 vmoe (softmax over all), 1 renorm (over the k)",
                       default=0)
    tasks: int = packed(8, doc="entries of the task table", default=1)
    table_addr: int = packed(32, doc="byte address of the gate's task table", default=0)
    logits_addr: int = packed(32, doc="byte address of the int8 logits (tokens x experts)",
                              default=0)
    topk_addr: int = packed(32, doc="byte address of the u8 expert indices (tokens x top_k)",
                            default=0)
    weights_addr: int = packed(32, doc="byte address of the u16 Q0.15 gate weights", default=0)

    def validate(self):
        _check_positive(self, "Route", (("tokens", "tokens"), ("experts", "experts"),
                                        ("top-k", "top_k"), ("task count", "tasks")))
        if self.top_k > self.experts:
            raise DescriptorError(
                f"Route descriptor top-k {self.top_k} exceeds its {self.experts} experts")
        if self.tokens > self.hw.max_tokens:
            raise DescriptorError(
                f"Route descriptor of {self.tokens} tokens exceeds the {self.hw.max_tokens}-token "
                f"buffer of hardware {self.hw.name!r}")


@dataclass(frozen=True)
class ExpertDescriptor(Descriptor):
    """One expert of a MoE layer: its tokens gathered, fc1 with GELU, fc2, scattered.

    The tokens are those ``t`` with ``topk[t, s] == expert`` (ascending; at
    most one slot ``s`` per token). When none is, the instruction does
    nothing (its weights are not fetched). Otherwise, with ``n`` such tokens,
    fc1 (:meth:`linears`' first) writes ``n`` hidden rows at ``hidden_addr``
    and fc2 writes row ``j`` (token ``t``, slot ``s``) to slot ``s`` of
    token ``t`` of the slots tensor at ``slots_addr``.
    """

    OPCODE = 8
    MNEMONIC = "EXPERT"
    UNIT = "moe"
    OUTPUT = "slots_addr"

    tokens: int = packed(16, doc="tokens of the layer (rows of x and of the routing)", default=1)
    dim: int = packed(16, doc="model width (fc1 input, fc2 output)", default=1)
    hidden: int = packed(16, doc="expert hidden width (fc1 output, fc2 input)", default=1)
    expert: int = packed(8, doc="expert index", default=0)
    top_k: int = packed(8, doc="experts per token", default=1)
    gelu_b: int = packed(12, doc="fc1's intops.gelu constant b", default=1)
    gelu_c: int = packed(22, doc="fc1's intops.gelu constant c", default=1)
    gelu_mult: int = packed(15, doc="fc1's GELU output multiplier", default=1)
    gelu_shift: int = packed(6, doc="fc1's GELU output shift", default=1)
    x_addr: int = packed(32, doc="byte address of the layer input (tokens x dim)", default=0)
    topk_addr: int = packed(32, doc="byte address of the routing's expert indices", default=0)
    fc1_w_addr: int = packed(32, doc="byte address of fc1's weight beats", default=0)
    fc1_chan_addr: int = packed(32, doc="byte address of fc1's channel constants", default=0)
    fc2_w_addr: int = packed(32, doc="byte address of fc2's weight beats", default=0)
    fc2_chan_addr: int = packed(32, doc="byte address of fc2's channel constants", default=0)
    hidden_addr: int = packed(32, doc="byte address of the hidden rows (n x hidden)", default=0)
    slots_addr: int = packed(32, doc="byte address of the slots (tokens x top_k x dim)",
                             default=0)

    def validate(self):
        _check_positive(self, "Expert", (("tokens", "tokens"), ("width", "dim"),
                                         ("hidden width", "hidden"), ("top-k", "top_k")))
        self.linears(self.tokens)  # the kernel's checks, for the most tokens

    def linears(self, n: int):
        """The two operations (fc1 with GELU, fc2) the linear kernel runs on ``n`` gathered
        tokens: their shapes and constants (the cost model's work); fc1's ``x_addr`` and
        fc2's ``y_addr`` are the bases the MoE unit gathers from and scatters to."""
        hw = self.hw
        fc1 = LinearDescriptor(hw, tokens=n, in_features=self.dim, out_features=self.hidden,
                               gelu=1, gelu_b=self.gelu_b, gelu_c=self.gelu_c,
                               gelu_mult=self.gelu_mult, gelu_shift=self.gelu_shift,
                               x_addr=self.x_addr, w_addr=self.fc1_w_addr,
                               chan_addr=self.fc1_chan_addr, y_addr=self.hidden_addr)
        fc2 = LinearDescriptor(hw, tokens=n, in_features=self.hidden, out_features=self.dim,
                               x_addr=self.hidden_addr, w_addr=self.fc2_w_addr,
                               chan_addr=self.fc2_chan_addr, y_addr=self.slots_addr)
        return fc1, fc2


@dataclass(frozen=True)
class CombineDescriptor(Descriptor):
    """A MoE layer's output and the block's second residual add.

    ``acc = intops.weighted_sum(weights[:, None, :], slots)[:, 0]`` (the
    golden ``mlp.combine.acc``), ``mlp = intops.requantize(acc, mult,
    shift)``, ``y = intops.residual_add(mlp, skip, res_mult_y,
    res_mult_skip, res_shift)``.
    """

    OPCODE = 9
    MNEMONIC = "COMBINE"
    UNIT = "moe"
    OUTPUT = "y_addr"

    tokens: int = packed(16, doc="tokens", default=1)
    dim: int = packed(16, doc="model width", default=1)
    top_k: int = packed(8, doc="experts per token", default=1)
    mult: int = packed(15, doc="requantize multiplier of the combine", default=1)
    shift: int = packed(6, doc="requantize shift of the combine", default=1)
    res_mult_y: int = packed(15, doc="intops.residual_add multiplier of the MoE output",
                             default=1)
    res_mult_skip: int = packed(15, doc="intops.residual_add multiplier of the skip", default=1)
    res_shift: int = packed(6, doc="intops.residual_add shift", default=1)
    weights_addr: int = packed(32, doc="byte address of the u16 gate weights", default=0)
    slots_addr: int = packed(32, doc="byte address of the slots", default=0)
    skip_addr: int = packed(32, doc="byte address of the skip tensor (tokens x dim)", default=0)
    y_addr: int = packed(32, doc="byte address of y (tokens x dim)", default=0)

    def validate(self):
        _check_positive(self, "Combine", (("tokens", "tokens"), ("width", "dim"),
                                          ("top-k", "top_k")))
        if self.tokens > self.hw.max_tokens:
            raise DescriptorError(
                f"Combine descriptor of {self.tokens} tokens exceeds the "
                f"{self.hw.max_tokens}-token buffer of hardware {self.hw.name!r}")
        _check_constants("Combine", {"combine": (self.mult, self.shift)})
        _check_range("Combine descriptor residual multiplier of the output", self.res_mult_y,
                     1, 2**15 - 1)
        _check_range("Combine descriptor residual multiplier of the skip", self.res_mult_skip,
                     1, 2**15 - 1)
        _check_range("Combine descriptor residual shift", self.res_shift, 1, 47)


#: Opcode -> descriptor class: the one table of the instruction set.
OPCODES = {cls.OPCODE: cls for cls in (
    LinearDescriptor, AttentionDescriptor, LayerNormDescriptor, PatchifyDescriptor,
    CopyDescriptor, TaskLinearDescriptor, RouteDescriptor, ExpertDescriptor, CombineDescriptor)}
UNITS = sorted({cls.UNIT for cls in OPCODES.values()})

#: The issue lane of each mnemonic on a top of two (``HwConfig.issue_lanes``): ``main``
#: for the linear kernel's instructions, ``side`` for every other engine's.
LANE_OF = {cls.MNEMONIC: "main" if cls in (LinearDescriptor, TaskLinearDescriptor,
                                            ExpertDescriptor) else "side"
           for cls in OPCODES.values()}
#: The bit of an instruction's first word (above its opcode) that marks it ``concurrent``:
#: it does not depend on the instruction last issued to the other lane, so a top of two
#: issue lanes may start it while that one runs (:mod:`moevit.hw.program.program`).
CONCURRENT_BIT = 1 << 7
assert max(OPCODES) < CONCURRENT_BIT


def instruction_class(opcode: int):
    """The descriptor class of ``opcode``; None when the opcode is unknown."""
    return OPCODES.get(opcode)

"""The compiler: a quantized model -> one program for all of its tasks.

:func:`compile_program` lays out the memory image (weights first, in the
beat order of the units' streams, then one scratch tensor per golden tensor
the program writes, the input image, the output and the program itself) and
emits the instructions of one image in the golden model's order
(:func:`moevit.model.integer.golden.run`):

* ``PATCHIFY`` the int8 ``input`` into ``patch_embed.in``; ``LINEAR``
  ``patch_embed.proj`` with the position embedding added (fused residual)
  into rows 1.. of ``embed.out``; ``COPY`` the class token into row 0;
* per block: ``LAYERNORM`` norm1, ``LINEAR`` qkv, ``ATTENTION`` (q, k, v the
  thirds of ``attn.qkv.out``), ``LINEAR`` proj with add1 fused (its output
  is ``add1.out``), ``LAYERNORM`` norm2; a dense MLP is ``LINEAR`` fc1 (GELU)
  and ``LINEAR`` fc2 with add2 fused; a MoE MLP is ``TASK_LINEAR`` gate,
  ``ROUTE``, one ``EXPERT`` per expert (skipped at run time when no token
  chose it) and ``COMBINE`` with add2 fused;
* ``LAYERNORM`` norm, ``TASK_LINEAR`` head on the patch tokens into the
  ``output`` region.

With ``hw.onchip_bytes`` set, the activations move on chip by liveness
(:func:`place_onchip`): the program is compiled once with every tensor in
DRAM scratch, which gives each tensor's live range (the first and the last
instruction whose address fields point into it), then again with the
tensors placed, first use first, at the lowest bus-aligned offset of the
on-chip window where no tensor live at any of the same instructions lies.
The ranges are inclusive, so an instruction never reads and writes the same
bytes: a layer's input and its output sit in different buffers (ping-pong),
and the window needs about the peak of the live bytes, not their sum. A
tensor that does not fit the window stays in DRAM scratch (the program
still runs, with more DRAM traffic; ``layout.json`` and ``program.lst`` say
which tensors are on chip). The window is the address range ``[output_end,
onchip_end)`` of the memory image (:mod:`moevit.hw.program.program`).

**Batches.** With ``batch`` B > 1 one body computes B images of one task, so
each weight is read once per batch: every tensor holds the B images' tokens
one after the other (``B x tokens`` rows, image b's at rows ``b*tokens..``),
and every instruction but two runs on all the rows at once (LayerNorm,
linear, gate, route, experts, combine: each expert gets the batch's tokens).
``PATCHIFY`` and ``COPY`` (the class token) run per image, and ``ATTENTION``
per image, on its own rows. The patch embedding and the heads run on the
``B x tokens - 1`` rows from row 1 on: an image's patch rows and the next
image's class-token row between them (whose patch-embedding result the
``COPY`` overwrites, and whose head output the host skips), so one
instruction reads their weights once. So the input region holds the B
images one after the other, and the output region ``B x tokens - 1`` rows:
image b's head output at rows ``b*tokens..`` (``Program.image_rows``). The
header's ``batch`` says B; with B = 1 this is the one-image program. The
rows are bounded by the token buffer (``hw.max_tokens``, which also bounds
the MoE unit's lists): a larger B is a compile error naming the largest
that fits.

**Two issue lanes.** On a top of two (``hw.issue_lanes = 2``: one lane for the linear
kernel's instructions, one for the rest, :data:`~moevit.hw.program.isa.LANE_OF`), a batch
of two images or more is emitted as two streams, the first half of the batch and the
second, each the whole model on its images' rows (every tensor's address at its first
row), and :func:`interleave` merges them so that one stream's attention, LayerNorm and
routing run beside the other's linear layers, marking ``concurrent`` what does not wait
for the other lane. The streams touch disjoint bytes (each its own rows; an expert's
hidden rows at the half's first row too; each MoE layer's routing, whose rows are
narrower than a bus word, a tensor a stream, ``name`` and ``name#1``); the head runs once
on the whole batch after both. One image (with ``hw.token_chunks``) is emitted in
segments (:func:`schedule`): its token-wise layers (LayerNorm, the linear layers, the gate
and its routing, COMBINE) as two streams on two chunks of its rows
(:meth:`_Compiler.token_chunks`), interleaved the same way, between the layers that need
every token (the patch embedding, the attention, the experts, the head), each of which
waits for both lanes. With ``hw.token_chunks = 2`` the attention is cut by query rows too
(each chunk's rows against every key): the first chunk's waits for both lanes (every
row's K and V), the second chunk's heads its stream of the split segment after it, so it
runs beside the first chunk's next layers. Live ranges cover every instruction that may
run beside a tensor's users (:func:`running_with`), so the on-chip window never gives one
tensor's bytes to another while either may still be in use.

The task is never in the program: gate and head take their weights from a
task table indexed by the task register. Tensors that a fused operation
keeps on chip (``patch_embed.out``, ``attn.proj.out``, ``mlp.fc1.pre``,
``mlp.fc2.out``, ``mlp.out``, ``combine.acc``, the attention scores and
probabilities, ``gate.probs``) are not in memory.
"""

from typing import NamedTuple

import numpy as np

from moevit.errors import ConfigError
from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import (AttentionDescriptor, DescriptorError,
                                          LayerNormDescriptor, LinearDescriptor)
from moevit.hw.program.isa import (GATE_RULES, CombineDescriptor, CopyDescriptor,
                                   ExpertDescriptor, PatchifyDescriptor, RouteDescriptor,
                                   TaskEntry, TaskLinearDescriptor)
from moevit.hw.program.layout import Layout, pack_chan, pack_ln_params, pack_weight
from moevit.hw.program.program import Program, program_size

__all__ = ["compile_program", "largest_batch", "memory_tensors", "live_ranges",
           "place_onchip", "interleave", "schedule", "segments_of", "running_with"]


#: The bytes a token chunk's rows start on at least (:meth:`_Compiler.token_chunks`): a
#: 512-bit bus word.
CHUNK_ALIGNMENT = 64


def _pair(array):
    return int(array[0]), int(array[1])


class _Compiler:
    def __init__(self, qmodel, hw, window=None, batch=1):
        self.q, self.config, self.hw = qmodel, qmodel.config, hw
        self.batch = batch
        self.rows = batch * qmodel.config.tokens  # token rows of every batched tensor
        self.first, self.images = 0, batch        # the images the code being emitted runs on
        self.window = window or {}  # on-chip tensor -> (offset in the window, live range)
        self.layout = Layout(hw.bus_width)
        self.chunks = []  # (region, bytes) of the weights
        self.code = []

    # Placement ----------------------------------------------------------------------------
    def constant(self, name, data, shape=(), dtype="uint8"):
        region = self.layout.add(name, "weights", len(data), shape, dtype)
        self.chunks.append((region, bytes(data)))
        return region.offset

    def linear_weights(self, name):
        """Place ``name``'s weight and channel beats; their addresses."""
        q, cols = self.q, self.hw.cols
        w = self.constant(f"{name}.weight", pack_weight(q[f"{name}.weight"], cols))
        chan = self.constant(f"{name}.chan", pack_chan(q[f"{name}.bias"], q[f"{name}.mult"],
                                                       q[f"{name}.shift"], cols))
        return w, chan

    def task_table(self, name, entries):
        words = np.array([list(e) for e in entries], "<u4").tobytes()
        return self.constant(name, words, (len(entries), 4), "uint32")

    def tensor(self, name, shape, dtype="int8", kind="scratch"):
        return self.layout.tensor(name, kind, shape, dtype).offset

    def emit(self, layer, cls, **fields):
        """Append one instruction; a rule of the hardware it breaks names ``layer``."""
        try:
            self.code.append(cls(self.hw, **fields))
        except DescriptorError as error:
            raise DescriptorError(f"Layer {layer} does not fit hardware {self.hw.name!r}: "
                                  f"{error}") from None

    # The model ----------------------------------------------------------------------------
    def place_weights(self):
        q, config = self.q, self.config
        self.w = {}
        self.w["patch_embed.proj"] = self.linear_weights("patch_embed.proj")
        # The position embedding of the patch rows of the batch (zero on the rows of
        # the class tokens between them).
        pos = np.zeros((self.rows - 1, config.dim), np.int8)
        for b in range(self.batch):
            pos[b * config.tokens:b * config.tokens + config.patches] = q["pos_embed"]
        self.w["pos_embed"] = self.constant("pos_embed", pos.tobytes(), pos.shape, "int8")
        self.w["cls"] = self.constant("cls", q["cls"].astype(np.int8).tobytes(), q["cls"].shape,
                                      "int8")
        for i in range(config.depth):
            p = f"blocks.{i}"
            for norm in (f"{p}.norm1", f"{p}.norm2"):
                self.w[norm] = self.constant(f"{norm}.param",
                                             pack_ln_params(q[f"{norm}.gamma"], q[f"{norm}.beta"]))
            for name in (f"{p}.attn.qkv", f"{p}.attn.proj"):
                self.w[name] = self.linear_weights(name)
            if config.is_moe(i):
                entries = []
                for t in range(len(config.tasks)):
                    w, chan = self.linear_weights(f"{p}.mlp.gates.{t}")
                    mult, shift = _pair(q[f"{p}.mlp.gate.softmax"][t])
                    entries.append(TaskEntry(w, chan, config.experts,
                                             TaskEntry.pack_consts(mult, shift)))
                self.w[f"{p}.mlp.gates"] = self.task_table(f"{p}.mlp.gates.table", entries)
                for e in range(config.experts):
                    for fc in ("fc1", "fc2"):
                        name = f"{p}.mlp.experts.{e}.{fc}"
                        self.w[name] = self.linear_weights(name)
            else:
                for name in (f"{p}.mlp.fc1", f"{p}.mlp.fc2"):
                    self.w[name] = self.linear_weights(name)
        self.w["norm"] = self.constant("norm.param", pack_ln_params(q["norm.gamma"], q["norm.beta"]))
        entries = []
        for t in range(len(config.tasks)):
            w, chan = self.linear_weights(f"heads.{t}")
            entries.append(TaskEntry(w, chan, q[f"heads.{t}.weight"].shape[0]))
        self.w["heads"] = self.task_table("heads.table", entries)

    def place_tensors(self):
        """One tensor per golden tensor in memory (see :func:`memory_tensors`): in DRAM
        scratch, or in the on-chip window after the output when ``window`` places it."""
        tensors = memory_tensors(self.config, self.batch)
        self.halves = {}
        groups = self.groups()
        if len(groups) > 1:
            tensors = self.split_routing(tensors, groups)
        self.a = {name: self.tensor(name, shape, dtype)
                  for name, (shape, dtype) in tensors.items() if name not in self.window}
        config = self.config
        images = (self.batch,) if self.batch > 1 else ()
        self.a["input"] = self.tensor("input", (*images, config.in_chans, *config.image_size),
                                      "int8", "input")
        widest = max(self.q[f"heads.{t}.weight"].shape[0] for t in range(len(config.tasks)))
        self.a["output"] = self.tensor("output", (self.rows - 1, widest), "int8", "output")
        start = self.layout.size
        for name, (offset, live) in self.window.items():
            self.a[name] = self.layout.place(name, start + offset, *tensors[name], live).offset
        self.addresses = dict(self.a)

    def split_routing(self, tensors, groups):
        """``tensors`` with each MoE layer's routing (gate logits, top-k indices and weights)
        one tensor a stream of code, ``name`` and ``name#1``: their rows are narrower than
        a bus word, so the second half's first row would not be aligned in one tensor (the
        engines take aligned addresses only)."""
        tokens, split = self.config.tokens, {}
        for name, (shape, dtype) in tensors.items():
            if name.endswith((".mlp.gate.logits", ".mlp.gate.topk", ".mlp.gate.weights")):
                self.halves[name] = [name, f"{name}#1"]
                for half, (_, images) in zip(self.halves[name], groups):
                    split[half] = ((images * tokens, *shape[1:]), dtype)
            else:
                split[name] = (shape, dtype)
        return split

    def embed(self):
        q, config, a = self.q, self.config, self.a
        height, width = config.image_size
        image_bytes = config.in_chans * height * width
        for b in range(self.images):
            self.emit("patch_embed", PatchifyDescriptor, channels=config.in_chans, rows=height,
                      columns=width, patch=config.patch, x_addr=a["input"] + b * image_bytes,
                      y_addr=a["patch_embed.in"] + b * config.tokens * config.patch_dim)
        ma, mb, shift = (int(v) for v in q["embed.add"])
        w, chan = self.w["patch_embed.proj"]
        self.emit("patch_embed.proj", LinearDescriptor, tokens=self.rows - 1,
                  in_features=config.patch_dim, out_features=config.dim, residual=1,
                  res_mult_y=ma, res_mult_skip=mb, res_shift=shift, x_addr=a["patch_embed.in"],
                  w_addr=w, chan_addr=chan,
                  res_addr=self.w["pos_embed"] + self.first * config.tokens * config.dim,
                  y_addr=a["embed.out"] + config.dim)
        for b in range(self.images):  # after the patches: it overwrites rows between them
            self.emit("cls", CopyDescriptor, length=config.dim, src_addr=self.w["cls"],
                      dst_addr=a["embed.out"] + b * config.tokens * config.dim)

    def layernorm(self, name, x_addr, y_addr):
        q = self.q
        self.emit(name, LayerNormDescriptor, tokens=self.rows, dim=self.config.dim,
                  eps=int(q[f"{name}.eps"]), shift=int(q[f"{name}.shift"]), x_addr=x_addr,
                  param_addr=self.w[name], y_addr=y_addr)

    def linear(self, name, x_addr, y_addr, *, skip=None, residual=None):
        """A linear layer; ``residual`` (a model array name) fuses ``residual_add(skip, y)``."""
        q, config = self.q, self.config
        w, chan = self.w[name]
        out, width = q[f"{name}.weight"].shape
        fields = dict(tokens=self.rows, in_features=width, out_features=out, x_addr=x_addr,
                      w_addr=w, chan_addr=chan, y_addr=y_addr)
        if f"{name}.gelu" in q.arrays:
            b, c, mult, shift = (int(v) for v in q[f"{name}.gelu"])
            fields.update(gelu=1, gelu_b=b, gelu_c=c, gelu_mult=mult, gelu_shift=shift)
        if residual is not None:
            m_skip, m_y, shift = (int(v) for v in q[residual])
            fields.update(residual=1, res_mult_y=m_y, res_mult_skip=m_skip, res_shift=shift,
                          res_addr=skip)
        self.emit(name, LinearDescriptor, **fields)

    def gate(self, p, x_addr):
        """The MoE layer's gate (the task's, from the task table) and its routing."""
        config, a, tokens = self.config, self.a, self.rows
        tasks = len(config.tasks)
        self.emit(f"{p}.mlp.gates", TaskLinearDescriptor, tokens=tokens, in_features=config.dim,
                  max_out=config.experts, tasks=tasks, table_addr=self.w[f"{p}.mlp.gates"],
                  x_addr=x_addr, y_addr=a[f"{p}.mlp.gate.logits"])
        self.emit(f"{p}.mlp.route", RouteDescriptor, tokens=tokens, experts=config.experts,
                  top_k=config.top_k, rule=GATE_RULES.index(config.gate), tasks=tasks,
                  table_addr=self.w[f"{p}.mlp.gates"], logits_addr=a[f"{p}.mlp.gate.logits"],
                  topk_addr=a[f"{p}.mlp.gate.topk"], weights_addr=a[f"{p}.mlp.gate.weights"])

    def experts(self, p, x_addr):
        """Every expert of the MoE layer on the tokens the routing sent it."""
        q, config, a, tokens = self.q, self.config, self.a, self.rows
        for e in range(config.experts):
            name = f"{p}.mlp.experts.{e}"
            b, c, mult, shift = (int(v) for v in q[f"{name}.fc1.gelu"])
            (w1, chan1), (w2, chan2) = self.w[f"{name}.fc1"], self.w[f"{name}.fc2"]
            self.emit(name, ExpertDescriptor, tokens=tokens, dim=config.dim,
                      hidden=config.expert_hidden, expert=e, top_k=config.top_k, gelu_b=b,
                      gelu_c=c, gelu_mult=mult, gelu_shift=shift, x_addr=x_addr,
                      topk_addr=a[f"{p}.mlp.gate.topk"], fc1_w_addr=w1, fc1_chan_addr=chan1,
                      fc2_w_addr=w2, fc2_chan_addr=chan2, hidden_addr=a[f"{name}.fc1.out"],
                      slots_addr=a[f"{p}.mlp.slots"])

    def combine(self, p, skip_addr, y_addr):
        """The experts' outputs weighted by the gate, added to the block's skip."""
        q, config, a = self.q, self.config, self.a
        mult, shift = _pair(q[f"{p}.mlp.combine"])
        m_skip, m_y, r_shift = (int(v) for v in q[f"{p}.add2"])
        self.emit(f"{p}.mlp.combine", CombineDescriptor, tokens=self.rows, dim=config.dim,
                  top_k=config.top_k, mult=mult, shift=shift, res_mult_y=m_y,
                  res_mult_skip=m_skip, res_shift=r_shift, weights_addr=a[f"{p}.mlp.gate.weights"],
                  slots_addr=a[f"{p}.mlp.slots"], skip_addr=skip_addr, y_addr=y_addr)

    def blocks(self):
        """The blocks and the final LayerNorm: the token-wise layers :meth:`rowwise`, the
        attention and the experts (which need every token's row) :meth:`joint`."""
        q, config = self.q, self.config
        x = "embed.out"
        for i in range(config.depth):
            p = f"blocks.{i}"
            self.rowwise(lambda a, x=x, p=p: (
                self.layernorm(f"{p}.norm1", a[x], a[f"{p}.norm1.out"]),
                self.linear(f"{p}.attn.qkv", a[f"{p}.norm1.out"], a[f"{p}.attn.qkv.out"])))
            # In chunks of query rows (hw.token_chunks 2) once every row's K and V are in:
            # the first chunk's alone (nothing else can run yet), the second's at the head
            # of its stream, beside the first chunk's next layers.
            by_rows = self.chunked and self.hw.token_chunks == 2
            self.joint(lambda a, p=p: self.attention(p, self.chunked[0] if by_rows else None))
            h = f"{p}.norm2.out"
            self.rowwise(lambda a, x=x, p=p, h=h: (
                self.attention(p, self.chunked[1]) if by_rows and self.chunk == 1 else None,
                self.linear(f"{p}.attn.proj", a[f"{p}.attn.ctx"], a[f"{p}.add1.out"],
                            skip=a[x], residual=f"{p}.add1"),
                self.layernorm(f"{p}.norm2", a[f"{p}.add1.out"], a[h])))
            if config.is_moe(i):
                self.rowwise(lambda a, p=p, h=h: self.gate(p, a[h]))
                self.joint(lambda a, p=p, h=h: self.experts(p, a[h]))
                self.rowwise(lambda a, p=p: self.combine(p, a[f"{p}.add1.out"],
                                                         a[f"{p}.add2.out"]))
            else:
                self.rowwise(lambda a, p=p, h=h: (
                    self.linear(f"{p}.mlp.fc1", a[h], a[f"{p}.mlp.fc1.out"]),
                    self.linear(f"{p}.mlp.fc2", a[f"{p}.mlp.fc1.out"], a[f"{p}.add2.out"],
                                skip=a[f"{p}.add1.out"], residual=f"{p}.add2")))
            x = f"{p}.add2.out"
        self.rowwise(lambda a, x=x: self.layernorm("norm", a[x], a["norm.out"]))

    def attention(self, p, chunk=None):
        """Block ``p``'s attention, each image's tokens attending to their own; with
        ``chunk`` (``(first row, rows)`` of a one-image program's token chunk), only those
        query rows, against every key."""
        q, config = self.q, self.config
        sm_mult, sm_shift = _pair(q[f"{p}.attn.softmax"])
        out_mult, out_shift = _pair(q[f"{p}.attn.ctx"])
        d, t = config.dim, config.tokens
        qkv, ctx = f"{p}.attn.qkv.out", f"{p}.attn.ctx"
        first, rows = chunk or (0, t)
        for b in range(self.first, self.first + self.images):
            at = self.addresses[qkv] + b * t * 3 * d      # the image's first key
            self.emit(f"{p}.attn", AttentionDescriptor, tokens=t, rows=rows, heads=config.heads,
                      head_dim=config.head_dim, sm_mult=sm_mult, sm_shift=sm_shift,
                      out_mult=out_mult, out_shift=out_shift, q_addr=at + first * 3 * d,
                      k_addr=at + d, v_addr=at + 2 * d,
                      out_addr=self.addresses[ctx] + (b * t + first) * d, row_pitch=3 * d)

    # Token chunks (a top of two issue lanes, one image) ------------------------------------
    def token_chunks(self):
        """``(first row, rows)`` of the two token chunks a one-image program on a top of two
        issue lanes with ``hw.token_chunks`` runs its token-wise layers in (:meth:`rowwise`),
        or ``[]``: no chunks asked, a batch (whose halves are the streams), or no cut that
        keeps every tensor's rows aligned. The cut is the row nearest the middle at which
        every tensor's row starts on a word of :data:`CHUNK_ALIGNMENT` bytes or of the bus if
        wider: the same cut on every bus up to 512 bits, so the cost model's workload,
        compiled once, holds for them."""
        if not self.hw.token_chunks or self.batch > 1:
            return []
        word = max(CHUNK_ALIGNMENT, self.hw.bus_width // 8)
        widths = {self.row_bytes(name) for name in self.addresses
                  if name not in ("input", "output")}
        cuts = [r for r in range(1, self.rows) if all(r * width % word == 0 for width in widths)]
        if not cuts:
            return []
        cut = min(cuts, key=lambda r: (abs(2 * r - self.rows), r))
        return [(0, cut), (cut, self.rows - cut)]

    def rowwise(self, emit):
        """Emit ``emit(addresses)``'s token-wise instructions: on the whole rows, or once per
        token chunk (:meth:`token_chunks`), each chunk a stream of the current split
        segment (a new one after a joint segment)."""
        if not self.chunked:
            emit(self.a)
            return
        if not self.segments or self.segments[-1][0] != "split":
            self.segments.append(("split", [[] for _ in self.chunked]))
        for self.chunk, (stream, (first, rows)) in enumerate(zip(self.segments[-1][1],
                                                                 self.chunked)):
            self.code = stream
            self.on_rows(first, rows)
            emit(self.a)
        self.on_rows(0, self.batch * self.config.tokens)

    def joint(self, emit):
        """Emit ``emit(addresses)``'s instructions on every row; in a chunked program a joint
        segment (each waits for both lanes)."""
        if self.chunked:
            if not self.segments or self.segments[-1][0] != "joint":
                self.segments.append(("joint", [[]]))
            self.code = self.segments[-1][1][0]
        emit(self.a)

    def on_rows(self, first, rows):
        """Emit for token rows ``first .. first + rows - 1`` of the (one-image) batch only:
        every tensor's address at that row (the input image's and the output's are never
        used by a token-wise layer)."""
        self.rows = rows
        self.a = {name: address + first * self.row_bytes(name)
                  for name, address in self.addresses.items()}

    def row_bytes(self, name) -> int:
        """Bytes of one row of tensor ``name`` (its first dimension's)."""
        region = self.layout[name]
        return region.size // region.shape[0]

    def heads(self):
        """The task's head on every patch row of the batch: one instruction even when the
        code is two streams (its rows are the task's width apart, which no address can
        know, so the second half's first row has no address of its own)."""
        config, a = self.config, self.a
        tasks = len(config.tasks)
        widest = self.layout["output"].shape[1]
        self.emit("heads", TaskLinearDescriptor, tokens=self.rows - 1, in_features=config.dim,
                  max_out=widest, tasks=tasks, table_addr=self.w["heads"],
                  x_addr=a["norm.out"] + config.dim, y_addr=a["output"])

    def groups(self):
        """``(first image, images)`` of each stream of code: the batch, or on a top of two
        issue lanes its two halves (see :func:`interleave`)."""
        if self.hw.issue_lanes == 1 or self.batch == 1:
            return [(0, self.batch)]
        half = -(-self.batch // 2)
        return [(0, half), (half, self.batch - half)]

    def on_images(self, group, first, images):
        """Emit for images ``first .. first + images - 1`` only (stream ``group``): every
        tensor's address at their first row (an input image, an output row, a token row of
        the batch; a routing tensor's own, :meth:`split_routing`)."""
        tokens = self.config.tokens
        self.first, self.images, self.rows = first, images, images * tokens
        self.a = {}
        for name, address in self.addresses.items():
            if name in self.halves:
                self.a[name] = self.addresses[self.halves[name][group]]
            elif "#" not in name:
                per_row = (self.layout[name].size // self.batch if name == "input"
                           else tokens * self.row_bytes(name))
                self.a[name] = address + first * per_row

    def run(self) -> Program:
        config = self.config
        if config.gate not in GATE_RULES:
            raise ConfigError(f"Gate rule {config.gate!r} has no instruction; known: "
                              f"{list(GATE_RULES)}")
        self.place_weights()
        weights_end = self.layout.size
        self.place_tensors()
        from moevit.hw.program.isa import LANE_OF

        self.chunked, self.segments = self.token_chunks(), []
        streams = []
        for group, (first, images) in enumerate(self.groups()):
            self.code = []
            self.on_images(group, first, images)
            self.joint(lambda a: self.embed())
            self.blocks()
            streams.append(self.code)
        segments = self.segments if self.chunked else [
            ("split" if len(streams) > 1 else "joint", streams)]
        self.on_images(0, 0, self.batch)
        self.code = []
        self.heads()   # after both streams: not concurrent
        segments.append(("joint", [self.code]))
        order, concurrent, stream_of = schedule(
            [(kind, [[(LANE_OF[d.MNEMONIC], _cycles(d, self.hw, config)) for d in stream]
                     for stream in parts]) for kind, parts in segments])
        self.code = [segments[k][1][max(stream, 0)][i] for k, stream, i in order]
        self.layout.add("program", "program", program_size(self.code))
        weights = bytearray(weights_end)
        for region, data in self.chunks:
            weights[region.offset:region.end] = data
        tasks = [{"name": task.name, "index": t, "classes": task.classes,
                  "output_shape": [config.patches, task.classes * config.patch ** 2]}
                 for t, task in enumerate(config.tasks)]
        return Program(self.hw, self.code, self.layout, bytes(weights), tasks, config.to_dict(),
                       self.batch, concurrent, stream_of)


def schedule(segments):
    """The order of a program of ``segments`` on a top of two issue lanes, its
    ``concurrent`` flags and its ``streams`` (:class:`~moevit.hw.program.program.Program`'s).

    ``segments`` is a list of ``("joint", [instructions])``, each instruction depending on
    every one before it, and ``("split", [stream, stream])``, two streams that
    :func:`interleave` merges (instructions given as ``(lane, cycles)``). The result lists
    ``(segment, stream, index)`` in program order (``stream`` -1 in a joint segment); a
    joint instruction and a segment's first ones wait for both lanes. Flags and streams (0
    or 1 in a split segment, -1 in a joint one; no two split segments follow each other)
    are empty when no segment is split (a program of one stream)."""
    order, concurrent, streams = [], (), ()
    for k, (kind, parts) in enumerate(segments):
        if kind == "joint":
            order += [(k, -1, i) for i in range(len(parts[0]))]
            concurrent += (False,) * len(parts[0])
            streams += (-1,) * len(parts[0])
        else:
            merged, flags = interleave(parts)
            order += [(k, stream, i) for stream, i in merged]
            concurrent += flags
            streams += tuple(stream for stream, _ in merged)
    if all(kind == "joint" for kind, _ in segments):
        return order, (), ()
    return order, concurrent, streams


def segments_of(streams) -> list:
    """The segments of a program from its ``streams`` (as :func:`schedule` gives them):
    ``("joint", [[k, ...]])`` for each run of -1, ``("split", [[k of stream 0, ...],
    [k of stream 1, ...]])`` for each run of the others, ``k`` an instruction's index."""
    segments = []
    for k, stream in enumerate(streams):
        kind = "joint" if stream < 0 else "split"
        if not segments or segments[-1][0] != kind:
            segments.append((kind, [[]] if kind == "joint" else [[], []]))
        segments[-1][1][max(stream, 0)].append(k)
    return segments


#: :func:`interleave`'s search: the machine states it keeps per pair of stream positions,
#: and how far (in instructions) one stream may run ahead of the other's pace. On 1,500
#: random pairs of up to 8 instructions it found the shortest merge every time (keeping 2,
#: all but 4 times); on the u280's batch of 16 (577 instructions) it takes 0.1 s. The band
#: binds: at 8, that batch's predicted span grows 14 %; at 32 it is the same, the u280's
#: batch of 4 2.2 % shorter and zcu102-edge-moe's batch of 2 on two lanes 7.6 % longer
#: (2026-12-06; the order is searched on :func:`_cycles`, the board's memory unseen).
INTERLEAVE_KEEP = 3
INTERLEAVE_BAND = 16


def interleave(streams):
    """The order of ``streams`` on a top of two issue lanes, and its ``concurrent`` flags
    (:attr:`~moevit.hw.program.program.Program.concurrent`): ``streams`` are one or two
    lists of ``(lane, cycles)`` of instructions (``lane`` of
    :data:`~moevit.hw.program.isa.LANE_OF`), each depending on the one before it in its
    stream, the two streams independent; the result lists ``(stream, index)`` in program
    order, and the flags (empty for one stream).

    Each lane runs one instruction at a time, in program order; an instruction starts when
    its lane is free and, unless it is ``concurrent``, when the other lane is too. It is
    ``concurrent`` when the instruction last given to the other lane belongs to the other
    stream: its own stream's instructions before it are then finished or on its own lane.
    The order is a search over the merges of the two streams, on the given cycles: for each
    pair ``(i, j)`` of instructions issued from each, it keeps the :data:`INTERLEAVE_KEEP`
    machine states that leave the lanes free earliest (within :data:`INTERLEAVE_BAND` of
    the streams' common pace), each extended by either stream's next instruction; the merge
    whose last instruction ends first wins. Why a search: the greedy rule before it (next,
    the stream head that could start first) left the u280's batch of 16 with a span 34 %
    over its linear kernel's cycles; this order, 10 % (2026-12-04)."""
    if len(streams) == 1:
        return [(0, i) for i in range(len(streams[0]))], ()
    n, m = len(streams[0]), len(streams[1])
    layer = {(0, 0): [_State((0, 0), (0, 0), 0, (None, None), None)]}
    for _ in range(n + m):
        following = {}
        for (i, j), states in layer.items():
            for k, at in ((0, i), (1, j)):
                cell = (i + 1 - k, j + k)
                if at == len(streams[k]) \
                        or abs(cell[0] * m - cell[1] * n) > INTERLEAVE_BAND * max(n, m):
                    continue
                lane, cycles = streams[k][at]
                following.setdefault(cell, []).extend(
                    _issued(state, k, lane, cycles) for state in states)
        layer = {cell: _fittest(states) for cell, states in following.items()}
    path = min(layer[n, m], key=lambda s: max(s.free)).path
    merged = []
    while path is not None:
        path, k, concurrent = path
        merged.append((k, concurrent))
    merged.reverse()
    heads, order = [0, 0], []
    for k, _ in merged:
        order.append((k, heads[k]))
        heads[k] += 1
    return order, tuple(concurrent for _, concurrent in merged)


class _State(NamedTuple):
    """:func:`interleave`'s two lanes after some instructions of each stream."""

    free: tuple      # when each lane (main, side) is free
    ready: tuple     # when each stream's last instruction ends
    issued: int      # the last instruction's start (issue is in program order)
    last: tuple      # the stream of the instruction last on each lane
    path: tuple      # (the path before, the stream, concurrent) of each instruction


def _beats(a, b) -> bool:
    """``a`` leaves everything free and ready no later than ``b``, with the same streams
    last on the lanes: whatever follows ``b``, it can follow ``a`` as early."""
    return a.last == b.last and a.issued <= b.issued and all(
        x <= y for x, y in zip(a.free + a.ready, b.free + b.ready))


def _fittest(states):
    """The :data:`INTERLEAVE_KEEP` of :func:`interleave`'s ``states`` that leave the lanes
    free earliest, of those no other state beats (:func:`_beats`)."""
    states.sort(key=lambda s: (max(s.free), sum(s.free), s.issued))
    kept = []
    for state in states:
        if not any(_beats(k, state) for k in kept):
            kept.append(state)
            if len(kept) == INTERLEAVE_KEEP:
                break
    return kept


def _issued(state, k, lane, cycles):
    """:func:`interleave`'s ``state`` after stream ``k``'s next instruction (on ``lane``,
    taking ``cycles``)."""
    free, ready, issued, last, path = state
    mine = 0 if lane == "main" else 1
    concurrent = last[1 - mine] is not None and last[1 - mine] != k
    start = max(issued, free[mine], ready[k], 0 if concurrent else free[1 - mine])
    end = start + cycles
    free = (end, free[1]) if mine == 0 else (free[0], end)
    ready = (end, ready[1]) if k == 0 else (ready[0], end)
    last = (k, last[1]) if mine == 0 else (last[0], k)
    return _State(free, ready, start, last, (path, k, concurrent))


def _cycles(d, hw, config) -> int:
    """Cycles of instruction ``d`` to :func:`interleave` it by: the cost model's for it alone
    at one bus word a cycle a port (:func:`moevit.hw.cost.dse.interleave_cycles`, which the
    search's prediction of a program of two lanes reorders by too), a task's gate or head at
    its widest output and an expert at its share of the tokens (balanced routing). It does
    not depend on the addresses, so the compile with an on-chip window keeps the order."""
    from moevit.hw.cost.dse import Step, interleave_cycles, step_fields

    routed = 0
    if d.MNEMONIC == "TASK_LINEAR":
        d = LinearDescriptor(hw, tokens=d.tokens, in_features=d.in_features,
                             out_features=d.max_out, x_addr=0, w_addr=0, chan_addr=0, y_addr=0)
    elif d.MNEMONIC == "EXPERT":
        routed = -(-d.tokens * d.top_k // config.experts)
    return interleave_cycles(Step(d.MNEMONIC, d.UNIT, step_fields(d), routed), hw)


def memory_tensors(config, batch: int = 1) -> dict:
    """Name -> (shape, dtype) of every scratch tensor of a program for ``config`` that
    computes ``batch`` images per run.

    The names are the golden model's (:mod:`moevit.model.integer.golden`),
    except ``blocks.{i}.mlp.slots`` (the experts' outputs by token and slot).
    Each holds the ``batch`` images' rows one after the other, image b's golden
    tensor at rows ``b*tokens..`` (``patch_embed.in``: ``batch*tokens - 1`` rows, an
    image's patches then a row for the next image's class token). An expert's
    ``fc1.out`` has room for every row; its first ``n_e`` rows are the expert's
    gathered tokens. ``gate.topk`` is u8 and ``gate.weights`` u16 here.
    """
    T, D, k = batch * config.tokens, config.dim, config.top_k
    tensors = {"patch_embed.in": ((T - 1, config.patch_dim), "int8"),
               "embed.out": ((T, D), "int8")}
    for i in range(config.depth):
        p = f"blocks.{i}"
        tensors.update({f"{p}.norm1.out": ((T, D), "int8"),
                        f"{p}.attn.qkv.out": ((T, 3 * D), "int8"),
                        f"{p}.attn.ctx": ((T, D), "int8"), f"{p}.add1.out": ((T, D), "int8"),
                        f"{p}.norm2.out": ((T, D), "int8")})
        if config.is_moe(i):
            tensors.update({f"{p}.mlp.gate.logits": ((T, config.experts), "int8"),
                            f"{p}.mlp.gate.topk": ((T, k), "uint8"),
                            f"{p}.mlp.gate.weights": ((T, k), "uint16")})
            for e in range(config.experts):
                tensors[f"{p}.mlp.experts.{e}.fc1.out"] = ((T, config.expert_hidden), "int8")
            tensors[f"{p}.mlp.slots"] = ((T, k, D), "int8")
        else:
            tensors[f"{p}.mlp.fc1.out"] = ((T, config.mlp_hidden), "int8")
        tensors[f"{p}.add2.out"] = ((T, D), "int8")
    tensors["norm.out"] = ((T, D), "int8")
    return tensors


def live_ranges(program) -> dict:
    """Scratch tensor -> ``(first, last)``: the instructions of ``program`` whose address
    fields point into it (a program compiled with every tensor in DRAM scratch), and on a
    top of two issue lanes every instruction that may run while one of those does
    (:func:`running_with`)."""
    ranges = {}
    spans = running_with(program)
    for k, desc in enumerate(program.instructions):
        for name, value in desc.to_dict().items():
            region = program.layout.at(value) if name.endswith("_addr") else None
            if region is not None and region.kind == "scratch":
                first, last = ranges.get(region.name, spans[k])
                ranges[region.name] = (min(first, spans[k][0]), max(last, spans[k][1]))
    return ranges


def running_with(program) -> list:
    """Per instruction ``k``, ``(first, last)``: the instructions that may run while it
    does, itself included (``(k, k)`` on a top of one issue lane). On two lanes: the one
    last issued to the other lane before it, if it is ``concurrent``; and those issued to
    the other lane after it, up to the next on its own lane (which waits for it), while
    each is ``concurrent`` (one that is not waits for it, and those after that one are
    issued later still)."""
    from moevit.hw.program.isa import LANE_OF

    code, concurrent = program.instructions, program.concurrent
    lanes = [LANE_OF[d.MNEMONIC] for d in code]
    spans, last = [], {}
    for k, lane in enumerate(lanes):
        other = "side" if lane == "main" else "main"
        first = last[other] if k < len(concurrent) and concurrent[k] else k
        end = k
        for i in range(k + 1, len(code)):
            if lanes[i] == lane or i >= len(concurrent) or not concurrent[i]:
                break
            end = i
        spans.append((first, end))
        last[lane] = k
    return spans


def place_onchip(program, capacity: int) -> dict:
    """The on-chip window of ``program`` (compiled with every tensor in scratch):
    tensor -> ``(offset, (first, last))``, first use first, each at the lowest
    bus-aligned offset where it overlaps no tensor live at one of its instructions;
    a tensor that would end past ``capacity`` bytes is left out (stays in DRAM)."""
    align = program.layout.align
    placed = {}
    ranges = live_ranges(program)
    for name, (first, last) in sorted(ranges.items(), key=lambda item: item[1]):
        size = -(-program.layout[name].size // align) * align
        busy = sorted((offset, offset + -(-program.layout[other].size // align) * align)
                      for other, (offset, (a, b)) in placed.items() if a <= last and first <= b)
        offset = 0
        for start, end in busy:          # the first gap that holds it
            if offset + size <= start:
                break
            offset = max(offset, end)
        if offset + size <= capacity:
            placed[name] = (offset, (first, last))
    return placed


def largest_batch(config, hw: HwConfig) -> int:
    """The most images of model config ``config`` one run of a program on ``hw`` can
    compute: their token rows within the token buffer (and the MoE unit's lists)."""
    return hw.max_tokens // config.tokens


def compile_program(qmodel, hw: HwConfig = None, *, bus_bits: int = None,
                    batch: int = 1) -> Program:
    """One program for every task of ``qmodel`` on ``hw``, computing ``batch`` images
    of one task per run of its body.

    Parameters
    ----------
    qmodel : QuantizedModel
    hw : HwConfig, optional
        Default: the model config's default instance.
    bus_bits : int, optional
        Data width of the memory bus; every region starts on a bus word.
        Default: ``hw.bus_width``; another value replaces it, so the program
        records the hardware instance it was compiled for.
    batch : int
        Images per run (see the module's description): 1, or as many as the
        token buffer holds (:func:`largest_batch`).

    Raises
    ------
    DescriptorError
        A layer does not fit ``hw`` (the message names the layer and the limit).
    ConfigError
        ``hw`` cannot run the model (:meth:`HwConfig.check_model`), the bus width or
        the model's gate rule is not supported, or ``batch`` is not a
        positive integer or its rows exceed the token buffer (the message names the
        largest batch that fits).
    """
    if hw is None:
        hw = HwConfig.for_model(qmodel.config)
    if not isinstance(hw, HwConfig):
        raise ConfigError(f"Hardware config must be a HwConfig, not {hw!r}")
    if bus_bits is not None:
        hw = hw.replace(bus_width=bus_bits)
    hw.check_model(qmodel.config)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"Batch must be a positive number of images, not {batch!r}")
    tokens = qmodel.config.tokens
    if batch > 1 and batch * tokens > hw.max_tokens:
        most = largest_batch(qmodel.config, hw)
        raise ConfigError(f"A batch of {batch} images has {batch * tokens} token rows; hardware "
                          f"{hw.name!r} holds {hw.max_tokens} (max_tokens: the token buffer "
                          f"and the MoE unit's lists): " + (
                              f"the largest batch that fits is {most}" if most else
                              f"not even one image of {tokens} tokens fits"))
    program = _Compiler(qmodel, hw, batch=batch).run()
    if hw.onchip_bytes:
        program = _Compiler(qmodel, hw, place_onchip(program, hw.onchip_bytes), batch).run()
    return program

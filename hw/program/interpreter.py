"""An instruction-level interpreter: a program run on a memory image, in numpy.

:func:`execute` does what the accelerator's sequencer does: it fetches the
program from the memory image at ``program_addr``, checks it, and runs each
instruction on the image with the golden model's primitives
(:mod:`moevit.model.integer.golden`, :mod:`moevit.model.integer.intops`),
reading every operand (weights in their beat order included) from memory
and writing every result back. Equal to ``golden.run`` on every task, it
proves a program complete and its packing right before any RTL runs it; a
hardware run is compared with its memory image.
"""

import numpy as np

from moevit.hw.program.descriptor import (AttentionDescriptor, LayerNormDescriptor,
                                          LinearDescriptor)
from moevit.hw.program.isa import (TASK_ENTRY_BYTES, CombineDescriptor, CopyDescriptor,
                                   ExpertDescriptor, PatchifyDescriptor, RouteDescriptor,
                                   TaskEntry, TaskLinearDescriptor)
from moevit.hw.program.layout import unpack_chan, unpack_ln_params, unpack_weight
from moevit.hw.program.program import HEADER_WORDS, ProgramError, decode
from moevit.model.integer import golden, intops

__all__ = ["execute", "run_instructions", "run_image", "run_images", "read_tensor",
           "image_tensor", "image_output", "output_map", "head_map", "bytes_by_region",
           "ExecutionStats"]


class ExecutionStats(dict):
    """What a run did: instructions per mnemonic, ``experts_run`` and
    ``experts_skipped``, ``macs`` (multiply-accumulates of the linear layers
    and the attention), ``bytes_read`` and ``reads``, every read as
    ``(address, bytes)`` (:func:`bytes_by_region` sums them per region), and ``writes``,
    every write so."""


class _Machine:
    def __init__(self, memory, hw, task, read_only=()):
        self.mem, self.hw, self.task = memory, hw, task
        self.read_only = read_only   # (kind, start, end) the top refuses to write
        self.stats = ExecutionStats(experts_run=0, experts_skipped=0, macs=0, bytes_read=0,
                                    reads=[], writes=[])

    def count_read(self, addr, size):
        self.stats["reads"].append((addr, size))
        self.stats["bytes_read"] += size

    # Memory -------------------------------------------------------------------------------
    def read(self, addr, shape, dtype=np.int8, pitch=None):
        """A row-major tensor at ``addr`` (rows ``pitch`` bytes apart if given)."""
        dtype = np.dtype(dtype)
        rows, width = shape[0], int(np.prod(shape[1:])) * dtype.itemsize
        pitch = width if pitch is None else pitch
        end = addr + (rows - 1) * pitch + width
        if end > len(self.mem):
            raise ProgramError(f"Read of {end - addr} bytes at {addr:#x} passes the end of memory")
        if pitch == width:
            self.count_read(addr, rows * width)
        else:
            for r in range(rows):
                self.count_read(addr + r * pitch, width)
        raw = np.lib.stride_tricks.as_strided(self.mem[addr:], (rows, width), (pitch, 1))
        return np.ascontiguousarray(raw).view(dtype).reshape(shape)

    def write(self, addr, array, pitch=None):
        array = np.ascontiguousarray(array)
        rows = array.shape[0]
        flat = array.view(np.uint8).reshape(rows, -1)
        pitch = flat.shape[1] if pitch is None else pitch
        if addr + (rows - 1) * pitch + flat.shape[1] > len(self.mem):
            raise ProgramError(f"Write of {array.nbytes} bytes at {addr:#x} passes the end of "
                               f"memory")
        for kind, start, end in self.read_only:
            if start <= addr < end:
                raise ProgramError(f"Write of {array.nbytes} bytes at {addr:#x} into the {kind}, "
                                   f"which the top only reads")
        for r in range(rows):
            self.mem[addr + r * pitch:addr + r * pitch + flat.shape[1]] = flat[r]
        if pitch == flat.shape[1]:
            self.stats["writes"].append((addr, flat.size))
        else:
            self.stats["writes"] += [(addr + r * pitch, flat.shape[1]) for r in range(rows)]

    def raw(self, addr, size):
        self.count_read(addr, size)
        return self.mem[addr:addr + size].tobytes()

    def entry(self, table_addr, tasks) -> TaskEntry:
        if not 0 <= self.task < tasks:
            raise ProgramError(f"Task {self.task} is not one of the program's {tasks} tasks")
        words = self.read(table_addr + TASK_ENTRY_BYTES * self.task, (1, 4), "<u4")[0]
        return TaskEntry(*(int(w) for w in words))

    # Units --------------------------------------------------------------------------------
    def operands(self, d: LinearDescriptor):
        cols = self.hw.cols
        tiles = d.out_tiles
        weight = unpack_weight(self.raw(d.w_addr, tiles * d.in_features * cols),
                               d.out_features, d.in_features, cols)
        bias, mult, shift = unpack_chan(self.raw(d.chan_addr, tiles * cols * 8), d.out_features)
        gelu = golden.GeluConsts(d.gelu_b, d.gelu_c, d.gelu_mult, d.gelu_shift) if d.gelu else None
        return weight, bias, mult, shift, gelu

    def linear_on(self, d: LinearDescriptor, x):
        self.stats["macs"] += d.macs
        y = golden.linear(x, *self.operands(d))
        if d.residual:
            skip = self.read(d.res_addr, (d.tokens, d.out_features))
            y = intops.residual_add(y, skip, d.res_mult_y, d.res_mult_skip, d.res_shift)
        return y

    def LINEAR(self, d: LinearDescriptor):
        self.write(d.y_addr, self.linear_on(d, self.read(d.x_addr, (d.tokens, d.in_features))))

    def TASK_LINEAR(self, d: TaskLinearDescriptor):
        self.LINEAR(d.resolve(self.entry(d.table_addr, d.tasks)))

    def ATTENTION(self, d: AttentionDescriptor):
        width = d.heads * d.head_dim
        q = self.read(d.q_addr, (d.rows, width), pitch=d.row_pitch)
        k, v = (self.read(a, (d.tokens, width), pitch=d.row_pitch) for a in (d.k_addr, d.v_addr))
        self.stats["macs"] += d.macs
        consts = golden.AttentionConsts(d.sm_mult, d.sm_shift, d.out_mult, d.out_shift)
        cols = [slice(h * d.head_dim, (h + 1) * d.head_dim) for h in range(d.heads)]
        ctx = [golden.attention_head(q[:, c], k[:, c], v[:, c], consts).out for c in cols]
        self.write(d.out_addr, np.concatenate(ctx, axis=1))

    def LAYERNORM(self, d: LayerNormDescriptor):
        x = self.read(d.x_addr, (d.tokens, d.dim))
        gamma, beta = unpack_ln_params(self.raw(d.param_addr, 8 * d.dim), d.dim)
        self.write(d.y_addr, intops.layernorm(x, d.eps, gamma, beta, d.shift))

    def PATCHIFY(self, d: PatchifyDescriptor):
        p = d.patch
        image = self.read(d.x_addr, (d.channels, d.rows, d.columns))
        grid = image.reshape(d.channels, d.rows // p, p, d.columns // p, p).transpose(1, 3, 0, 2, 4)
        self.write(d.y_addr, grid.reshape(-1, d.channels * p * p))

    def COPY(self, d: CopyDescriptor):
        self.write(d.dst_addr, self.read(d.src_addr, (1, d.length), np.uint8))

    def ROUTE(self, d: RouteDescriptor):
        entry = self.entry(d.table_addr, d.tasks)
        logits = self.read(d.logits_addr, (d.tokens, d.experts))
        top = intops.topk(logits, d.top_k)
        if d.rule == 0:  # vmoe: the softmax over all E logits, the selected kept
            weights = np.take_along_axis(intops.softmax(logits, entry.mult, entry.shift), top, 1)
        else:  # renorm: the softmax over the k selected logits
            weights = intops.softmax(np.take_along_axis(logits.astype(np.int64), top, 1),
                                     entry.mult, entry.shift)
        self.write(d.topk_addr, top.astype(np.uint8))
        self.write(d.weights_addr, weights.astype(np.uint16))

    def EXPERT(self, d: ExpertDescriptor):
        top = self.read(d.topk_addr, (d.tokens, d.top_k), np.uint8)
        tokens, slots = np.nonzero(top == d.expert)
        if tokens.size == 0:
            self.stats["experts_skipped"] += 1
            return  # no token chose it: nothing runs, no weight is fetched
        self.stats["experts_run"] += 1
        fc1, fc2 = d.linears(tokens.size)
        x = self.read(d.x_addr, (d.tokens, d.dim))[tokens]
        hidden = self.linear_on(fc1, x)
        self.write(d.hidden_addr, hidden)
        out = self.linear_on(fc2, hidden)
        for j, (t, s) in enumerate(zip(tokens, slots)):
            self.write(d.slots_addr + (t * d.top_k + s) * d.dim, out[j:j + 1])

    def COMBINE(self, d: CombineDescriptor):
        weights = self.read(d.weights_addr, (d.tokens, d.top_k), np.uint16).astype(np.int64)
        slots = self.read(d.slots_addr, (d.tokens, d.top_k, d.dim))
        acc = intops.weighted_sum(weights[:, None, :], slots)[:, 0]
        mlp = intops.requantize(acc, d.mult, d.shift)
        skip = self.read(d.skip_addr, (d.tokens, d.dim))
        self.write(d.y_addr, intops.residual_add(mlp, skip, d.res_mult_y, d.res_mult_skip,
                                                 d.res_shift))


def execute(memory, hw, task: int, program_addr: int) -> ExecutionStats:
    """Fetch the program at ``program_addr`` of ``memory`` (a uint8 array, changed in
    place) and run it for ``task``.

    Raises
    ------
    ProgramError
        The program is corrupt or made for another ``hw``, the task is not
        one of its tasks, an access passes the end of memory, or a write starts
        in the weights or the input (the top refuses those too).
    """
    header = np.frombuffer(memory[program_addr:program_addr + 4 * HEADER_WORDS].tobytes(), "<u4")
    size = 4 * (HEADER_WORDS + int(header[8])) if len(header) == HEADER_WORDS else 0
    instructions, head = decode(memory[program_addr:program_addr + size].tobytes(), hw)
    if not 0 <= task < head["tasks"]:
        raise ProgramError(f"Task {task} is not one of the program's {head['tasks']} tasks")
    # As the top's write relocation: the weights and the input are the host's.
    read_only = (("weights", 0, head["scratch_at"]), ("input", head["input_at"], head["output_at"]))
    machine = _Machine(memory, hw, task, read_only)
    for desc in instructions:
        getattr(machine, desc.MNEMONIC)(desc)
        machine.stats[desc.MNEMONIC] = machine.stats.get(desc.MNEMONIC, 0) + 1
    return machine.stats


def run_instructions(memory, hw, instructions, task: int = 0) -> ExecutionStats:
    """Run ``instructions`` (descriptors) on ``memory`` (a uint8 array, changed in place)
    for ``task``, without a program around them: what an engine bench compares with."""
    machine = _Machine(memory, hw, task)
    for desc in instructions:
        getattr(machine, desc.MNEMONIC)(desc)
    return machine.stats


def run_image(program, image, task: int):
    """Run ``program`` (a :class:`~moevit.hw.program.program.Program` of batch 1) on one
    int8 image ``(C, H, W)`` for ``task``; the memory image after the run and the stats."""
    image = np.asarray(image)
    if image.dtype != np.int8 or image.shape != program.image_shape:
        raise ProgramError(f"Input image must be int8 of shape {program.image_shape}, not "
                           f"{image.dtype} {image.shape}")
    return run_images(program, image[None], task)


def run_images(program, images, task: int):
    """Run ``program`` once on its batch of int8 images ``(batch, C, H, W)`` for ``task``;
    the memory image after the run and the stats (:func:`output_map` reads image b's
    result)."""
    memory = program.memory_image()
    region = program.layout["input"]
    images = np.asarray(images)
    if images.dtype != np.int8 or images.shape != (program.batch, *program.image_shape):
        raise ProgramError(f"Input images must be int8 of shape "
                           f"{(program.batch, *program.image_shape)}, not {images.dtype} "
                           f"{images.shape}")
    memory[region.offset:region.end] = images.reshape(-1).view(np.uint8)
    stats = execute(memory, program.hw, task, program.layout["program"].offset)
    return memory, stats


def bytes_by_region(program, stats) -> dict:
    """Region name -> bytes a run read from it (``stats`` from :func:`run_image`); the
    reads of on-chip tensors, which share the window's bytes, under ``"onchip"``."""
    regions = [r for r in program.layout.regions if r.kind != "onchip"]
    starts = np.array([r.offset for r in regions])
    order = np.argsort(starts)
    bounds = program.layout.boundaries()
    totals = {}
    for addr, size in stats["reads"]:
        if bounds["output_end"] <= addr < bounds["onchip_end"]:
            if addr + size > bounds["onchip_end"]:
                raise ProgramError(f"A read of {size} bytes at {addr:#x} leaves the on-chip "
                                   f"window")
            totals["onchip"] = totals.get("onchip", 0) + size
            continue
        region = regions[order[np.searchsorted(starts[order], addr, "right") - 1]]
        if not (region.offset <= addr and addr + size <= region.end):
            raise ProgramError(f"A read of {size} bytes at {addr:#x} leaves region {region.name}")
        totals[region.name] = totals.get(region.name, 0) + size
    return totals


def read_tensor(program, memory, name, shape=None) -> np.ndarray:
    """The tensor of region ``name`` (its first rows when ``shape`` is smaller) from ``memory``."""
    region = program.layout[name]
    shape = region.shape if shape is None else tuple(shape)
    size = int(np.prod(shape)) * np.dtype(region.dtype).itemsize
    return memory[region.offset:region.offset + size].view(region.dtype).reshape(shape).copy()


def image_tensor(program, memory, name, image: int = 0) -> np.ndarray:
    """Image ``image``'s part of a batched program's tensor ``name``: its input, or its
    rows of an activation (each holds the batch's images one after the other,
    ``tokens`` rows each: the golden model's tensor of that image; ``patch_embed.in``
    its patch rows)."""
    data = read_tensor(program, memory, name)
    if program.layout[name].kind == "input":
        return data.reshape(program.batch, *program.image_shape)[image]
    rows = program.image_rows
    count = rows - 1 if name == "patch_embed.in" else rows
    return data[image * rows:image * rows + count]


def image_output(program, data, task: int, image: int = 0) -> np.ndarray:
    """Image ``image``'s head output ``(patches, classes*patch*patch)`` in ``data``, the
    bytes of the ``output`` region after a run for ``task``: the head writes rows of the
    task's width, image b's from row ``b * image_rows`` on."""
    rows, width = program.tasks[task]["output_shape"]
    start = image * program.image_rows * width
    flat = np.ascontiguousarray(data).reshape(-1).view(np.int8)
    return flat[start:start + rows * width].reshape(rows, width)


def output_map(program, memory, task: int, image: int = 0) -> np.ndarray:
    """The task's prediction map ``heads.{t}.map`` (classes, H, W) of image ``image`` of
    the batch: the host's pixel shuffle of its rows of the ``output`` region."""
    region = program.layout["output"]
    out = image_output(program, memory[region.offset:region.end], task, image)
    return head_map(program, out, task)


def head_map(program, out, task: int) -> np.ndarray:
    """The pixel shuffle of a task's head output ``out`` (patches, classes*patch*patch)
    into its prediction map (classes, H, W), as the golden model's ``heads.{t}.map``."""
    info = program.tasks[task]
    model = program.model
    patch = model["patch"]
    height, width = model["image_size"]
    grid = out.reshape(height // patch, width // patch, info["classes"], patch, patch)
    return grid.transpose(2, 0, 3, 1, 4).reshape(info["classes"], height, width)

"""The compiled program: round trip, layout, packing, task tables, corrupt files, limits,
and the instruction-level interpreter against the golden model, bit for bit."""

import dataclasses
import re
import zlib

import numpy as np
import pytest

from moevit.errors import ConfigError
from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.compiler import compile_program, memory_tensors
from moevit.hw.program.descriptor import AttentionDescriptor, DescriptorError
from moevit.hw.program.interpreter import output_map, read_tensor, run_image
from moevit.hw.program.isa import (OPCODES, TASK_ENTRY_BYTES, TaskEntry, TaskLinearDescriptor)
from moevit.hw.program.layout import unpack_chan, unpack_ln_params, unpack_weight
from moevit.hw.program.program import (HEADER_FIELDS, HEADER_WORDS, ProgramError, decode, encode,
                                       read_program, write_program)
from moevit.model.integer import golden
from moevit.model.integer.quantize import linear_names

# Golden tensors that a fused operation keeps on chip: never in memory, so never compared.
ON_CHIP = (r"patch_embed\.out", r"blocks\.\d+\.attn\.(scores|probs)\.h\d+",
           r"blocks\.\d+\.attn\.proj\.out", r"blocks\.\d+\.mlp\.fc1\.pre",
           r"blocks\.\d+\.mlp\.fc2\.out", r"blocks\.\d+\.mlp\.out",
           r"blocks\.\d+\.mlp\.combine\.acc", r"blocks\.\d+\.mlp\.gate\.probs",
           r"blocks\.\d+\.mlp\.experts\.\d+\.fc1\.pre")


@pytest.fixture(scope="module")
def tiny():
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    return qmodel, image, compile_program(qmodel, DEFAULT_HW["tiny"])


def _regions_disjoint_and_aligned(layout):
    regions = sorted(layout.regions, key=lambda r: r.offset)
    for region in regions:
        assert region.offset % layout.align == 0, region
        assert region.size > 0 and region.end <= layout.size, region
    for before, after in zip(regions, regions[1:]):
        assert before.end <= after.offset, (before, after)


def test_round_trip(tiny, tmp_path):
    qmodel, _, program = tiny
    instructions, header = decode(program.encode(), program.hw)
    assert instructions == program.instructions
    assert [type(d) for d in instructions] == [type(d) for d in program.instructions]
    assert header["instructions"] == len(program.instructions) == 51
    assert header["tasks"] == 2 and header["memory_bytes"] == program.layout.size
    write_program(program, tmp_path)
    back = read_program(tmp_path)
    assert back.instructions == program.instructions
    assert back.layout.regions == program.layout.regions
    assert back.weights == program.weights and back.tasks == program.tasks
    assert (tmp_path / "program.lst").read_text() == back.listing()
    assert back.encode() == program.encode()
    # Every opcode of the table is used by a whole model.
    assert {d.OPCODE for d in program.instructions} == set(OPCODES)


@pytest.mark.parametrize("bus_bits", [128, 512])
def test_layout_disjoint_aligned_and_every_weight_placed(tiny, bus_bits):
    qmodel, _, _ = tiny
    # Four head lanes: tiny's 16-byte heads make whole 512-bit words (HwConfig.check_model).
    base = DEFAULT_HW["tiny"].replace(heads_parallel=4)
    program = compile_program(qmodel, base, bus_bits=bus_bits)
    layout, hw, q = program.layout, program.hw, qmodel
    # The bus width is the hardware's: bus_bits replaces it in the program's HwConfig.
    assert hw == base.replace(bus_width=bus_bits) and layout.bus_bits == bus_bits
    _regions_disjoint_and_aligned(layout)
    assert [r.kind for r in layout.regions][-3:] == ["input", "output", "program"]
    weights = program.weights
    end = max(r.end for r in layout.of_kind("weights"))
    assert len(weights) == -(-end // layout.align) * layout.align  # whole bus words
    covered = np.zeros(len(weights), bool)

    def raw(name):
        region = layout[name]
        covered[region.offset:region.end] = True
        return weights[region.offset:region.end]

    for name in linear_names(q.config):
        out, width = q[f"{name}.weight"].shape
        np.testing.assert_array_equal(unpack_weight(raw(f"{name}.weight"), out, width, hw.cols),
                                      q[f"{name}.weight"])
        bias, mult, shift = unpack_chan(raw(f"{name}.chan"), out)
        for got, want in ((bias, "bias"), (mult, "mult"), (shift, "shift")):
            np.testing.assert_array_equal(got, q[f"{name}.{want}"])
    norms = [f"blocks.{i}.norm{n}" for i in range(q.config.depth) for n in (1, 2)] + ["norm"]
    for norm in norms:
        gamma, beta = unpack_ln_params(raw(f"{norm}.param"), q.config.dim)
        np.testing.assert_array_equal(gamma, q[f"{norm}.gamma"])
        np.testing.assert_array_equal(beta, q[f"{norm}.beta"])
    for name in ("pos_embed", "cls"):
        np.testing.assert_array_equal(np.frombuffer(raw(name), np.int8).reshape(q[name].shape),
                                      q[name])
    tables = [r.name for r in layout.of_kind("weights") if r.name.endswith(".table")]
    for name in tables:
        raw(name)
    assert len(tables) == 1 + len(q.config.moe_blocks)
    # Nothing but alignment padding (zeros) outside the regions.
    assert covered.sum() == sum(r.size for r in layout.of_kind("weights"))
    assert not np.frombuffer(weights, np.uint8)[~covered].any()


def test_every_task_reaches_its_gate_and_head_through_the_table(tiny):
    qmodel, _, program = tiny
    weights, layout, config = program.weights, program.layout, qmodel.config
    task_linears = [d for d in program.instructions if isinstance(d, TaskLinearDescriptor)]
    assert len(task_linears) == len(config.moe_blocks) + 1
    for desc in task_linears:
        assert desc.tasks == len(config.tasks)
        table = layout.at(desc.table_addr)
        assert table.offset == desc.table_addr
        layer = table.name[:-len(".table")]
        seen = set()
        for t in range(desc.tasks):
            at = desc.table_addr + TASK_ENTRY_BYTES * t
            entry = TaskEntry(*(int(w) for w in np.frombuffer(weights[at:at + 16], "<u4")))
            linear = desc.resolve(entry)
            assert layout.at(linear.w_addr).name == f"{layer}.{t}.weight"
            assert layout.at(linear.chan_addr).name == f"{layer}.{t}.chan"
            assert linear.out_features == qmodel[f"{layer}.{t}.weight"].shape[0]
            if layer != "heads":
                mult, shift = qmodel[f"{layer[:-1]}.softmax"][t]
                assert (entry.mult, entry.shift) == (mult, shift)
            seen.add(linear.w_addr)
        assert len(seen) == desc.tasks


def _compare_with_golden(program, qmodel, image, task):
    """Run the interpreter and compare every golden tensor the program keeps in memory,
    in full; returns the names compared."""
    result = golden.run(qmodel, image, task)
    memory, stats = run_image(program, result.tensors["input"], task)
    compared = set()

    def same(name, got):
        np.testing.assert_array_equal(got, result.tensors[name], err_msg=f"task {task}: {name}")
        compared.add(name)

    config = qmodel.config
    for name in memory_tensors(config):
        if name in result.tensors and ".experts." not in name:  # experts: their rows below
            same(name, read_tensor(program, memory, name).astype(result.tensors[name].dtype))
    for block in config.moe_blocks:
        p = f"blocks.{block}.mlp"
        top = read_tensor(program, memory, f"{p}.gate.topk").astype(np.int64)
        slots = read_tensor(program, memory, f"{p}.slots")
        ran = 0
        for e in range(config.experts):
            tokens, picks = np.nonzero(top == e)
            if not tokens.size:
                assert f"{p}.experts.{e}.tokens" not in result.tensors
                continue
            ran += 1
            same(f"{p}.experts.{e}.tokens", tokens)
            hidden = f"{p}.experts.{e}.fc1.out"
            same(hidden, read_tensor(program, memory, hidden, (tokens.size, config.expert_hidden)))
            same(f"{p}.experts.{e}.fc2.out", slots[tokens, picks])
        assert ran > 1  # the routing really spreads the tokens
    same("input", read_tensor(program, memory, "input"))
    same(f"heads.{task}.out", read_tensor(program, memory, "output",
                                          program.tasks[task]["output_shape"]))
    same(f"heads.{task}.map", output_map(program, memory, task))
    np.testing.assert_array_equal(output_map(program, memory, task), result.output)
    left = set(result.tensors) - compared
    assert all(any(re.fullmatch(pattern, name) for pattern in ON_CHIP) for name in left), left
    return compared, stats


@pytest.mark.parametrize("task", [0, 1])
def test_interpreter_equals_golden_on_every_task(tiny, task):
    qmodel, image, program = tiny
    compared, stats = _compare_with_golden(program, qmodel, image, task)
    assert len(compared) > 40
    experts = qmodel.config.experts * len(qmodel.config.moe_blocks)
    assert stats["EXPERT"] == experts == stats["experts_run"] + stats["experts_skipped"]


@pytest.mark.parametrize("cols", [32, 64])
def test_arrays_wider_than_a_head_equal_golden(tiny, cols):
    """Columns that span several of tiny's 16-wide heads (they divide its width, 64): each
    QKV output beat holds two or four heads' values, row by row as the attention reads
    them; every tensor of both tasks equals the golden model's."""
    qmodel, image, _ = tiny
    program = compile_program(qmodel, DEFAULT_HW["tiny"].replace(cols=cols))
    for task in (0, 1):
        compared, _ = _compare_with_golden(program, qmodel, image, task)
        assert len(compared) > 40


def test_one_memory_image_serves_both_tasks_in_turn(tiny):
    """Switching task re-sends nothing: the same image, run again with another task id."""
    from moevit.hw.program.interpreter import execute

    qmodel, image, program = tiny
    memory = program.memory_image()
    before = memory[:len(program.weights)].copy()
    region = program.layout["input"]
    for task in (0, 1, 0):
        int_image = golden.quantize_image(image, qmodel.scale("input"))
        memory[region.offset:region.end] = int_image.reshape(-1).view(np.uint8)
        execute(memory, program.hw, task, program.layout["program"].offset)
        np.testing.assert_array_equal(output_map(program, memory, task),
                                      golden.run(qmodel, image, task, record=False).output)
    np.testing.assert_array_equal(memory[:len(program.weights)], before)


def test_a_task_the_program_lacks(tiny):
    qmodel, image, program = tiny
    with pytest.raises(ProgramError, match=r"^Task 2 is not one of the program's 2 tasks$"):
        run_image(program, golden.quantize_image(image, qmodel.scale("input")), 2)


# Corrupt and mismatched files --------------------------------------------------------------
def _reheader(data, **changes):
    """``program.bin`` with header fields changed and its header CRC made right again."""
    words = np.frombuffer(data[:4 * HEADER_WORDS], "<u4").copy()
    for name, value in changes.items():
        words[HEADER_FIELDS.index(name)] = value
    words[-1] = zlib.crc32(words[:-1].tobytes())
    return words.tobytes() + data[4 * HEADER_WORDS:]


def test_each_corrupt_header_field_is_rejected(tiny):
    _, _, program = tiny
    data = program.encode()
    expected = {"magic": r"is not a moevit program \(magic 0x",
                "version": r"has format version 0; this moevit reads version 4; compile it "
                           r"again \(moevit hw compile\)$"}
    for k, name in enumerate(HEADER_FIELDS):
        bad = bytearray(data)
        bad[4 * k] ^= 0x04
        with pytest.raises(ProgramError, match="^Program " + expected.get(
                name, r"fails its header CRC: the header was changed or damaged$")):
            decode(bytes(bad), program.hw)


def test_an_address_outside_the_memory_is_rejected(tiny):
    _, _, program = tiny
    first = program.instructions[0]
    moved = type(first)(program.hw, **{**first.to_dict(), "x_addr": program.layout.size})
    data = encode(program.hw, [moved, *program.instructions[1:]], tasks=2,
                  bus_bits=program.layout.bus_bits, memory_bytes=program.layout.size,
                  boundaries=program.layout.boundaries())
    with pytest.raises(ProgramError, match=r"^Program instruction 0 \(PATCHIFY\): x_addr "
                                           r"0x[0-9a-f]+ lies outside the 0x[0-9a-f]+-byte "
                                           r"memory image$"):
        decode(data, program.hw)


@pytest.mark.parametrize("field, value, message", [
    ("header_words", 17, r"has a 17-word header; version 4 has 32$"),
    ("version", 2, r"has format version 2; this moevit reads version 4; compile it again "
                   r"\(moevit hw compile\)$"),
    ("reserved20", 1, r"has reserved header words that are not 0$"),
    ("version", 3, r"has format version 3; this moevit reads version 4; compile it again "
                   r"\(moevit hw compile\)$"),
    ("batch", 0, r"has batch 0; a run computes at least one image$"),
    ("onchip_end", None, r"has a 16-byte on-chip window; hardware 'tiny' has 0 bytes on chip$"),
    ("hw_hash_lo", 1, r"was compiled for another hardware than 'tiny' \(HwConfig hash"),
    ("body_words", 10, r"has \d+ bytes; its header says 168$"),
    ("instructions", 50, r"holds 51 instructions; its header says 50$"),
    ("instructions", 52, r"holds 51 instructions; its header says 52$"),   # the body ends first
    ("memory_bytes", 0x1000, r"places its regions out of order: .* memory_bytes 0x1000$"),
    ("body_crc", 1, r"fails its body CRC: the instructions were changed or damaged$"),
    ("input_at", 0x10, r"places its regions out of order: scratch_at 0x[0-9a-f]+, input_at 0x10"),
    ("output_end", 1 << 30, r"places its regions out of order: .* memory_bytes 0x"),
])
def test_each_inconsistent_header_field_is_rejected(tiny, field, value, message):
    _, _, program = tiny
    if field == "onchip_end":
        value = program.layout.boundaries()["output_end"] + 16
    with pytest.raises(ProgramError, match="^Program " + message):
        decode(_reheader(program.encode(), **{field: value}), program.hw)


def test_a_corrupt_body_is_rejected(tiny):
    _, _, program = tiny
    data = program.encode()
    body = 4 * HEADER_WORDS
    bad = bytearray(data)
    bad[body] = 0x7F  # the first instruction's opcode
    with pytest.raises(ProgramError, match=r"^Program fails its body CRC"):
        decode(bytes(bad), program.hw)
    crc = zlib.crc32(bytes(bad[body:]))
    with pytest.raises(ProgramError, match=r"^Program instruction 0 has an unknown opcode 127$"):
        decode(_reheader(bytes(bad), body_crc=crc), program.hw)
    bad = bytearray(data)
    bad[body + 1] = 0  # PATCHIFY with 0 channels
    with pytest.raises(ProgramError, match=r"^Program instruction 0 \(PATCHIFY\): Patchify "
                                           r"descriptor channels must be a positive integer"):
        decode(_reheader(bytes(bad), body_crc=zlib.crc32(bytes(bad[body:]))), program.hw)
    with pytest.raises(ProgramError, match=r"^Program is truncated: 20 bytes, shorter than its "
                                           r"128-byte header$"):
        decode(data[:20], program.hw)
    with pytest.raises(ProgramError, match=r"^Program has \d+ bytes; its header says \d+$"):
        decode(data[:-4], program.hw)


def test_a_program_for_other_hardware_is_rejected(tiny):
    _, _, program = tiny
    with pytest.raises(ProgramError, match=r"^Program was compiled for another hardware than "
                                           r"'tiny' \(HwConfig hash [0-9a-f]{16}, not"):
        decode(program.encode(), DEFAULT_HW["tiny"].replace(out_depth=16))


@pytest.mark.parametrize("kind, region", [("weights", "cls"), ("input", "input")])
def test_a_write_into_what_the_top_only_reads_is_refused(tiny, kind, region):
    """The interpreter refuses what the top's write relocation refuses (error 2): a
    program whose COPY writes into the weights or the input."""
    from moevit.hw.program.interpreter import execute

    _, _, program = tiny
    copy = next(d for d in program.instructions if d.MNEMONIC == "COPY")
    wild = dataclasses.replace(program, instructions=[
        program.instructions[0],
        dataclasses.replace(copy, dst_addr=program.layout[region].offset)])
    memory = wild.memory_image()
    with pytest.raises(ProgramError, match=rf"^Write of {copy.length} bytes at "
                                           rf"{program.layout[region].offset:#x} into the {kind}, "
                                           rf"which the top only reads$"):
        execute(memory, wild.hw, 0, wild.layout["program"].offset)


def test_hardware_that_cannot_run_the_model_is_refused_before_compiling(tiny):
    """compile_program checks the HwConfig against the model first (HwConfig.check_model):
    a design point whose columns do not divide the model's width gives no program."""
    from moevit.errors import ConfigError

    qmodel, _, _ = tiny
    with pytest.raises(ConfigError, match=r"^Array columns 48 do not divide the width 64 of "
                                          r"model 'tiny'"):
        compile_program(qmodel, DEFAULT_HW["tiny"].replace(cols=48))


def test_expert_prefetch_is_part_of_the_fingerprint_and_checked(tiny):
    """A program for the top with the expert schedule overlapped is another hardware's (its
    RTL differs), with the same instructions and layout; the setting is 0 or 1."""
    from moevit.errors import ConfigError

    qmodel, _, program = tiny
    ahead = compile_program(qmodel, DEFAULT_HW["tiny"].replace(expert_prefetch=1))
    assert ahead.layout.to_dict() == program.layout.to_dict()
    assert [d.to_int() for d in ahead.instructions] == [d.to_int() for d in program.instructions]
    with pytest.raises(ProgramError, match=r"^Program was compiled for another hardware"):
        decode(ahead.encode(), program.hw)
    for bad in (2, True, "1"):
        with pytest.raises(ConfigError, match=rf"^Expert prefetch must be 0 or 1, not "
                                              rf"{re.escape(repr(bad))}$"):
            DEFAULT_HW["tiny"].replace(expert_prefetch=bad)


def test_corrupt_or_mismatched_files_are_rejected(tiny, tmp_path):
    _, _, program = tiny
    write_program(program, tmp_path)
    original = {name: (tmp_path / name).read_bytes() for name in ("program.bin", "weights.bin",
                                                                  "layout.json")}

    def rejected(name, data, message):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ProgramError, match=message):
            read_program(tmp_path)
        (tmp_path / name).write_bytes(original[name])

    weights = bytearray(original["weights.bin"])
    weights[100] ^= 1
    rejected("weights.bin", bytes(weights), r"weights\.bin does not match layout\.json \(SHA-256")
    rejected("program.bin", original["program.bin"][:-4],
             r"program\.bin does not match layout\.json \(SHA-256")
    rejected("layout.json", b"{", r"layout\.json is not valid JSON")
    rejected("layout.json", original["layout.json"].replace(b'"version": 4', b'"version": 9'),
             r"layout\.json has format version 9; this moevit reads version 4$")
    rejected("layout.json", original["layout.json"].replace(b'"version": 4', b'"version": 3'),
             r"layout\.json has format version 3; this moevit reads version 4; compile it "
             r"again \(moevit hw compile\)$")
    rejected("layout.json", original["layout.json"].replace(b'"out_depth": 32', b'"out_depth": 16'),
             r"program\.bin was compiled for another hardware than 'tiny'")
    rejected("layout.json", original["layout.json"].replace(b'"bus_width": 128',
                                                            b'"bus_width": 256'),
             r"program\.bin was compiled for another hardware than 'tiny'")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ProgramError, match=r"^Program folder \S+ has no weights\.bin$"):
        read_program(tmp_path)
    read_program_missing = tmp_path / "nowhere"
    with pytest.raises(ProgramError, match=r"^Program folder \S+ does not exist$"):
        read_program(read_program_missing)


# Limits ----------------------------------------------------------------------------------
def test_a_model_larger_than_the_hardware_names_the_layer_and_limit(tiny):
    """A layer the buffers cannot hold: the layer and the limit named (the HwConfig's own
    check, before any layer, names the limit and the model's need)."""
    qmodel, _, _ = tiny
    hw = DEFAULT_HW["tiny"].replace(max_tokens=64)
    with pytest.raises(DescriptorError, match=r"^Layer blocks\.0\.attn\.qkv does not fit hardware "
                                              r"'tiny': Linear descriptor of 65 tokens exceeds the "
                                              r"64-token buffer of hardware 'tiny'$"):
        compile_program(qmodel, hw)
    hw = DEFAULT_HW["tiny"].replace(kv_depth=64)
    with pytest.raises(ConfigError, match=r"^Key/value buffer of 64 tokens cannot hold the 65 "
                                          r"tokens of model 'tiny'; needs 65$"):
        compile_program(qmodel, hw)
    hw = DEFAULT_HW["tiny"].replace(max_in=128, acc_width=31)
    with pytest.raises(ConfigError, match=r"^Input buffer of 128 features cannot hold the 256 "
                                          r"input features of model 'tiny'; needs 256$"):
        compile_program(qmodel, hw)


def test_attention_row_pitch():
    hw = DEFAULT_HW["tiny"]
    packed = AttentionDescriptor(hw, tokens=65, heads=4, head_dim=16)
    assert packed.row_pitch == 64
    assert AttentionDescriptor.unpack(hw, packed.pack()) == packed
    with pytest.raises(DescriptorError, match=r"^Attention descriptor row pitch 32 is shorter "
                                              r"than a row of 4 heads of 16$"):
        AttentionDescriptor(hw, tokens=65, heads=4, head_dim=16, row_pitch=32)


@pytest.mark.slow
def test_interpreter_equals_golden_trained_tiny_several_images():
    """The trained tiny (its routing as trained), three images, every task."""
    from moevit.model.data import SyntheticDataset
    from moevit.sim.units import tiny_quantized

    qmodel, _ = tiny_quantized()
    program = compile_program(qmodel, DEFAULT_HW["tiny"])
    images = SyntheticDataset(qmodel.config, "val", size=3, seed=5).images.numpy()
    for image in images:
        for task in range(len(qmodel.config.tasks)):
            _compare_with_golden(program, qmodel, image, task)


@pytest.mark.slow
def test_edge_moe_program_equals_golden():
    """The anchors' model (12 blocks, 16 experts, 128x256 images) on its hardware instance:
    every task, a 256-bit bus."""
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.evaluate import signal_model
    from moevit.model.integer.quantize import quantize

    config = get_config("edge-moe")
    data = SyntheticDataset(config, "val", size=3, seed=1)
    qmodel = quantize(signal_model(config), data.images[:2])
    program = compile_program(qmodel, DEFAULT_HW["edge-moe"], bus_bits=256)
    _regions_disjoint_and_aligned(program.layout)
    for task in range(len(config.tasks)):
        _compare_with_golden(program, qmodel, data.images[2].numpy(), task)


@pytest.mark.parametrize("task", [0, 1])
def test_a_run_reads_the_weights_it_needs_once_and_no_others(tiny, task):
    """Experts no token chose are not fetched; those that ran, once; only the task's gate
    and head; every other weight once (the attention reads its q, k, v thirds)."""
    from moevit.hw.program.interpreter import bytes_by_region

    qmodel, image, program = tiny
    memory, stats = run_image(program, golden.quantize_image(image, qmodel.scale("input")), task)
    reads = bytes_by_region(program, stats)
    top = {block: read_tensor(program, memory, f"blocks.{block}.mlp.gate.topk")
           for block in qmodel.config.moe_blocks}
    for region in program.layout.of_kind("weights"):
        name = region.name
        match = re.fullmatch(r"blocks\.(\d+)\.mlp\.experts\.(\d+)\..*", name)
        if match:
            needed = (top[int(match[1])] == int(match[2])).any()
        elif re.fullmatch(r"(blocks\.\d+\.mlp\.gates|heads)\.\d+\..*", name):
            needed = name.split(".")[-2] == str(task)
        else:
            needed = True
        if name.endswith(".table"):  # one 16-byte entry, by the gate's two instructions
            assert reads[name] == 16 * (1 if name == "heads.table" else 2), name
        else:
            assert reads.get(name, 0) == (region.size if needed else 0), name
    assert stats["bytes_read"] == sum(reads.values())
    # MACs: every linear layer the golden model ran, and QK^T and PV of every head.
    result = golden.run(qmodel, image, task)
    config = qmodel.config
    linear_macs = sum(r.x.shape[0] * r.weight.size for r in result.linears)
    attention_macs = config.depth * 2 * config.heads * config.tokens ** 2 * config.head_dim
    assert stats["macs"] == linear_macs + attention_macs


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_random_design_points(tiny, seed):
    """A random array shape, buffer depths and bus width: the packing follows the array's
    columns, the layout the bus; the program still equals the golden model."""
    qmodel, image, _ = tiny
    rng = np.random.default_rng(seed)
    rows = int(rng.choice([1, 2, 4, 8]))
    cols = int(rng.choice([4, 8, 16]))  # divides tiny's head width 16
    heads_parallel = int(rng.choice([1, 2, 4]))
    # The head lanes' bytes are whole bus words (HwConfig.check_model).
    buses = [bus for bus in (32, 64, 128, 256, 512) if heads_parallel * 16 % (bus // 8) == 0]
    hw = DEFAULT_HW["tiny"].replace(rows=rows, cols=cols, post_lanes=int(rng.choice([1, 2, 4])),
                                    max_tokens=rows * (-(-65 // rows) + int(rng.integers(8))),
                                    out_depth=int(rng.integers(3, 40)),
                                    heads_parallel=heads_parallel,
                                    bus_width=int(rng.choice(buses)))
    print(f"seed {seed}: {hw.rows}x{hw.cols} array, {hw.max_tokens} tokens, bus {hw.bus_width}")
    program = compile_program(qmodel, hw)
    assert program.layout.bus_bits == hw.bus_width
    _regions_disjoint_and_aligned(program.layout)
    assert decode(program.encode(), hw)[0] == program.instructions
    _compare_with_golden(program, qmodel, image, int(rng.integers(2)))


def test_the_renormalised_gate_rule(tiny):
    """ROUTE's other rule: the softmax over the k selected logits (the same arrays, the
    config naming ``"renorm"``)."""
    from moevit.model.integer.quantize import QuantizedModel

    qmodel, image, _ = tiny
    renorm = QuantizedModel(qmodel.config.replace(gate="renorm"), qmodel.arrays)
    program = compile_program(renorm, DEFAULT_HW["tiny"])
    routes = [d for d in program.instructions if d.MNEMONIC == "ROUTE"]
    assert [d.rule for d in routes] == [1] * len(qmodel.config.moe_blocks)
    compared, _ = _compare_with_golden(program, renorm, image, 0)
    assert "blocks.1.mlp.gate.weights" in compared
    vmoe = golden.run(qmodel, image, 0).tensors["blocks.1.mlp.gate.weights"]
    assert not np.array_equal(golden.run(renorm, image, 0).tensors["blocks.1.mlp.gate.weights"],
                              vmoe)  # the rules differ on this image


def test_the_opcode_table():
    from moevit.hw.program.descriptor import OPCODE_WIDTH

    assert sorted(OPCODES) == list(range(1, len(OPCODES) + 1))
    assert all(0 < op < 2**OPCODE_WIDTH and cls.OPCODE == op for op, cls in OPCODES.items())
    assert len({cls.MNEMONIC for cls in OPCODES.values()}) == len(OPCODES)
    for cls in OPCODES.values():
        fields = [f.name for f in cls.packed_fields()]
        assert cls.OUTPUT in fields and cls.OUTPUT.endswith("_addr"), cls
        assert cls.UNIT in ("linear", "attention", "layernorm", "moe", "mover"), cls
        assert cls.layout().size == cls.width()  # the RTL's port of the descriptor


def test_every_instruction_packs_full_width_addresses(tiny):
    """The bit layout of each opcode: every address field at its full 32 bits, seeded."""
    import dataclasses

    _, _, program = tiny
    rng = np.random.default_rng(7)
    for desc in program.instructions:
        addrs = {f.name: int(rng.integers(2**32)) for f in desc.packed_fields()
                 if f.name.endswith("_addr")}
        moved = dataclasses.replace(desc, **addrs)
        back = type(desc).unpack(program.hw, moved.pack())
        assert back == moved and back.to_dict() == moved.to_dict()


# The on-chip window --------------------------------------------------------------------------
@pytest.mark.parametrize("onchip_bytes", [1 << 20, 8192])
def test_onchip_placement_follows_the_instruction_order(tiny, onchip_bytes):
    """Compiled with an on-chip window (one that holds every activation, one that holds
    some): the same instructions as the all-DRAM program, each address field pointing at
    the same byte of the same tensor, in the window the tensor the layout says is live
    at that instruction, and no other tensor live then on its bytes. Run instruction by
    instruction, every on-chip tensor holds, after its last instruction, the bytes the
    all-DRAM run leaves in it (itself equal to the golden model's), and the outputs are
    bit-exact for every task."""
    from moevit.hw.program.interpreter import bytes_by_region, execute, run_instructions

    qmodel, image, dram = tiny
    hw = DEFAULT_HW["tiny"].replace(onchip_bytes=onchip_bytes)
    program = compile_program(qmodel, hw)
    layout, bounds = program.layout, program.layout.boundaries()
    onchip = layout.onchip()
    print(f"window {onchip_bytes}: {onchip}")
    assert 0 < onchip["tensors"] and onchip["peak"] <= onchip["window"] <= onchip_bytes
    assert bounds["output_end"] + onchip["window"] == bounds["onchip_end"]
    assert [type(d) for d in program.instructions] == [type(d) for d in dram.instructions]
    ranges = {}
    for k, (ours, theirs) in enumerate(zip(program.instructions, dram.instructions)):
        for name, value in ours.to_dict().items():
            if not name.endswith("_addr"):
                assert value == theirs.to_dict()[name], (k, name)
                continue
            region = layout.at(value, k)
            before = dram.layout.at(theirs.to_dict()[name])
            assert region.name == before.name, (k, name, region, before)
            assert value - region.offset == theirs.to_dict()[name] - before.offset
            if region.kind == "onchip":
                ranges.setdefault(region.name, [k, k])[1] = k
                others = [r.name for r in layout.onchip_regions() if r.live_at(k)
                          and r is not region and r.offset < region.end
                          and region.offset < r.end]
                assert not others, (k, region.name, others)
    assert {r.name: list(r.live) for r in layout.onchip_regions()} == ranges

    for task in range(len(qmodel.config.tasks)):
        int_image = golden.quantize_image(image, qmodel.scale("input"))
        reference, _ = run_image(dram, int_image, task)
        memory = program.memory_image()
        memory[layout["input"].offset:layout["input"].end] = int_image.reshape(-1).view(np.uint8)
        last = {}
        for region in layout.onchip_regions():
            last.setdefault(region.live[1], []).append(region)
        for k, desc in enumerate(program.instructions):
            run_instructions(memory, hw, [desc], task)
            for region in last.get(k, []):
                rows = region.shape[0]
                match = re.fullmatch(r"(blocks\.\d+\.mlp)\.experts\.(\d+)\.fc1\.out", region.name)
                if match:  # an expert's hidden rows: as many as tokens chose it
                    top = read_tensor(dram, reference, f"{match[1]}.gate.topk")
                    rows = int((top == int(match[2])).sum())
                np.testing.assert_array_equal(read_tensor(program, memory, region.name,
                                                          (rows, *region.shape[1:])),
                                              read_tensor(dram, reference, region.name,
                                                          (rows, *region.shape[1:])),
                                              err_msg=f"{region.name} after instruction {k}")
        np.testing.assert_array_equal(output_map(program, memory, task),
                                      output_map(dram, reference, task))
        # The whole program through its header, as the top runs it: the same output, and
        # the DRAM bytes read fall by what the window serves.
        whole = program.memory_image()
        whole[layout["input"].offset:layout["input"].end] = int_image.reshape(-1).view(np.uint8)
        stats = execute(whole, hw, task, layout["program"].offset)
        np.testing.assert_array_equal(output_map(program, whole, task),
                                      golden.run(qmodel, image, task, record=False).output)
        reads = bytes_by_region(program, stats)
        _, before = run_image(dram, int_image, task)
        dram_bytes = sum(v for k, v in reads.items() if k != "onchip")
        print(f"task {task}: DRAM bytes read {before['bytes_read']} -> {dram_bytes} "
              f"({reads['onchip']} on chip)")
        assert dram_bytes + reads["onchip"] == before["bytes_read"]
        assert dram_bytes < before["bytes_read"]


def test_onchip_program_files_and_listing(tiny, tmp_path):
    """layout.json and program.lst say which tensors are on chip and the peak; the files
    read back; another window size is another hardware; a bad size is a clear error."""
    import json

    from moevit.errors import ConfigError

    qmodel, _, _ = tiny
    hw = DEFAULT_HW["tiny"].replace(onchip_bytes=1 << 16)
    program = compile_program(qmodel, hw)
    write_program(program, tmp_path)
    back = read_program(tmp_path)
    assert back.layout.to_dict() == program.layout.to_dict()
    meta = json.loads((tmp_path / "layout.json").read_text())
    assert meta["onchip"] == program.layout.onchip() and meta["hw"]["onchip_bytes"] == 1 << 16
    assert any(r["kind"] == "onchip" and len(r["live"]) == 2 for r in meta["layout"]["regions"])
    listing = (tmp_path / "program.lst").read_text()
    assert re.search(r"-> blocks\.0\.norm1\.out \(on chip\)@0x", listing)
    assert re.search(r"\n# on chip: \d+ tensors in a \d+-byte window \(peak live \d+ bytes; "
                     r"\d+ one after the other\)\n$", listing)
    with pytest.raises(ProgramError, match=r"^Program was compiled for another hardware"):
        decode(program.encode(), hw.replace(onchip_bytes=1 << 17))
    # 0, the default, leaves the fingerprint of the instances made before the field.
    assert "onchip_bytes" not in DEFAULT_HW["tiny"].to_dict()
    for bad in (-16, 8, True, 1.5):
        with pytest.raises(ConfigError, match=r"^On-chip activation memory must be a "
                                              r"non-negative multiple of the 16-byte bus word, "
                                              rf"not {re.escape(repr(bad))} bytes$"):
            DEFAULT_HW["tiny"].replace(onchip_bytes=bad)

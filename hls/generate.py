"""The configuration header of the HLS kernels, written from a :class:`~moevit.hw.config.HwConfig`.

As hls4ml writes only ``parameters.h`` around its hand-written ``nnet_utils``,
this writes only ``parameters.h``: one ``CONFIG_T`` struct per kernel
template (``hls/include/moevit_*.h``), its sizes taken from the HwConfig, so
the RTL and the HLS build are one design point. Each kernel header lists
what its ``CONFIG_T`` provides.

The HLS top (``hls/src/top.cpp``) executes the compiled program, so the
header also carries the program format, written from its one definition
(:mod:`moevit.hw.program`): the header's constants and word indices, the
HwConfig's fingerprint and bus width the top checks a program against, the
error codes of the register map, and per opcode a struct of its descriptor's
fields with the ``unpack`` that cuts them from the instruction's bits (the
offsets of ``Descriptor.describe``). No offset is typed twice.
"""

import re
from pathlib import Path

from moevit.errors import ConfigError
from moevit.paths import build_dir, write_atomically

__all__ = ["INCLUDE_DIR", "TOP_SOURCE", "PARAMETERS", "TOP_OPCODES", "check_hls", "parameters_header",
           "program_section", "write_parameters"]

#: The hand-written kernel headers.
INCLUDE_DIR = Path(__file__).resolve().parent / "include"
#: The HLS top, which executes the compiled program.
TOP_SOURCE = Path(__file__).resolve().parent / "src" / "top.cpp"
PARAMETERS = "parameters.h"

# Limits of the templates' integer types (moevit_types.h) and of intops.
_MAX_TOKENS = 2**16 - 1        # token_t and the descriptors' 16-bit token fields
_MAX_ROW = 2**15               # intops.softmax: a row's sum of exponentials is u31
_MAX_LINEAR_IN = 2**16         # intops.linear_acc
_MAX_EXPERTS = 2**8 - 1        # expert_t and the MoE descriptor's 8-bit field
_MAX_LN_DIM = 2**10            # intops.layernorm; the HLS row sums are sized for it
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: The instructions ``hls/src/top.cpp`` executes (a case of its ``switch`` each).
TOP_OPCODES = ("LINEAR", "ATTENTION", "LAYERNORM", "PATCHIFY", "COPY", "TASK_LINEAR", "ROUTE",
               "EXPERT", "COMBINE")


def check_hls(hw) -> None:
    """Raise :class:`ConfigError` when the kernel templates cannot express ``hw``, or the
    instruction set has an opcode the HLS top does not execute."""
    if not _NAME.fullmatch(hw.name):
        raise ConfigError(
            f"HwConfig name {hw.name!r} cannot name the HLS build folder; use letters, digits, "
            f"'_', '.' and '-'")
    for what, value, limit, why in (
            ("Token buffer depth", hw.max_tokens, _MAX_TOKENS, "16-bit token indices"),
            ("Key/value buffer depth", hw.kv_depth, _MAX_ROW,
             "softmax rows of at most 2**15 scores (intops.softmax)"),
            ("Input buffer depth", hw.max_in, _MAX_LINEAR_IN,
             "linear inputs of at most 2**16 features (intops.linear_acc)")):
        if value > limit:
            raise ConfigError(
                f"{what} {value} exceeds the HLS kernels' limit of {limit} ({why})")
    if hw.issue_lanes != 1:
        raise ConfigError(
            f"The HLS top runs one instruction at a time; HwConfig {hw.name!r} has "
            f"{hw.issue_lanes} issue lanes (the RTL top's option)")
    from moevit.hw.program.isa import OPCODES

    for opcode, cls in sorted(OPCODES.items()):
        if cls.MNEMONIC not in TOP_OPCODES:
            raise ConfigError(
                f"Opcode {opcode} ({cls.MNEMONIC}) of the instruction set has no case in the "
                f"HLS top (hls/src/top.cpp executes {', '.join(TOP_OPCODES)})")


def parameters_header(hw) -> str:
    """The text of ``parameters.h`` for ``hw`` (checked with :func:`check_hls`)."""
    check_hls(hw)
    experts = min(hw.cols, _MAX_EXPERTS)  # a gate beat's lanes (MoeDescriptor's rule)
    ln_dim = min(hw.max_in, _MAX_LN_DIM)
    structs = {
        "linear_config": [
            ("rows", hw.rows, "token lanes of the MAC array"),
            ("cols", hw.cols, "output lanes of the MAC array"),
            ("max_tokens", hw.max_tokens, "tokens of the input buffer"),
            ("max_in", hw.max_in, "input features of the input and weight buffers"),
            ("post_lanes", hw.post_lanes, "post-processing lanes"),
            ("acc_width", hw.acc_width, "accumulator bits"),
            ("dsp_packing", hw.dsp_packing, "int8 MACs a multiplier"),
            ("chain_depth", hw.chain_depth, "multipliers a position, down a cascade")],
        "attention_softmax_config": [
            ("max_row", hw.kv_depth, "a score row: the longest sequence")],
        "attention_config": [
            ("kv_depth", hw.kv_depth, "tokens of the K and V buffers"),
            ("max_head_dim", hw.max_head_dim, "the widest head"),
            ("score_lanes", hw.score_lanes, "multipliers along the head dimension per stage"),
            ("heads_parallel", hw.heads_parallel, "head lanes"),
            ("row_lanes", hw.row_lanes, "query rows of a head at once, per head lane"),
            ("score_packing", hw.score_packing, "keys a QK multiplier (two a DSP48E2 when 2)")],
        "layernorm_config": [
            ("max_dim", ln_dim, f"the widest row: max_in, at most {_MAX_LN_DIM} (intops)")],
        "gate_softmax_config": [
            ("max_row", experts, "a gate row: the experts")],
        "moe_config": [
            ("max_tokens", hw.max_tokens, "tokens of one MoE operation"),
            ("max_experts", experts, "experts: the lanes of a gate beat"),
            ("max_dim", hw.max_in, "width of an expert's output")],
    }
    nested = {"attention_config": "attention_softmax_config", "moe_config": "gate_softmax_config"}
    lines = [
        f"// parameters.h of HwConfig {hw.name!r}: the CONFIG_T of each moevit HLS kernel.",
        "// Written by moevit.hls.generate from the HwConfig below; do not edit.",
        f"// {hw!r}",
        "#ifndef MOEVIT_PARAMETERS_H",
        "#define MOEVIT_PARAMETERS_H",
        "",
        '#include "ap_int.h"',
        "",
        f'#define MOEVIT_HW_NAME "{hw.name}"',
        "",
    ]
    for struct, members in structs.items():
        lines.append(f"struct {struct} {{")
        for name, value, doc in members:
            lines.append(f"    static const unsigned {name} = {int(value)};  // {doc}")
        if struct in nested:
            lines.append(f"    typedef {nested[struct]} softmax_config;")
        lines += ["};", ""]
    lines += program_section(hw)
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def program_section(hw) -> list:
    """The lines of ``parameters.h`` that give the HLS top the program format
    (see the module's description)."""
    from moevit.hw.program.isa import OPCODES, TASK_ENTRY_BYTES
    from moevit.hw.program.program import HEADER_FIELDS, HEADER_WORDS, MAGIC, VERSION, hw_hash
    from moevit.hw.program.regmap import ERROR_CODES

    digest = hw_hash(hw)
    longest = max(cls.words() for cls in OPCODES.values())
    lines = [
        "// The program format (moevit.hw.program) and this HwConfig's fingerprint.",
        "namespace moevit {",
        "namespace program {",
        f"static const unsigned MAGIC = {MAGIC:#010x}u;",
        f"static const unsigned VERSION = {VERSION};",
        f"static const unsigned HEADER_WORDS = {HEADER_WORDS};",
        f"static const unsigned HW_HASH_LO = {digest & 0xFFFFFFFF:#010x}u;",
        f"static const unsigned HW_HASH_HI = {digest >> 32:#010x}u;",
        f"static const unsigned BUS_BITS = {hw.bus_width};",
        f"static const unsigned ONCHIP_BYTES = {hw.onchip_bytes};  // the on-chip window",
        f"static const unsigned TASK_ENTRY_BYTES = {TASK_ENTRY_BYTES};",
        f"static const unsigned MAX_WORDS = {longest};  // the longest instruction",
        "// Header words.",
        "enum header_word { " + ", ".join(f"HEADER_{name.upper()} = {k}"
                                          for k, name in enumerate(HEADER_FIELDS)) + " };",
        "// The error register's codes (moevit.hw.program.regmap.ERROR_CODES).",
        "enum error_code { " + ", ".join(f"ERROR_{name.upper()} = {code}"
                                         for name, (code, _) in ERROR_CODES.items()) + " };",
        "// Opcodes.",
        "enum opcode { " + ", ".join(f"OP_{cls.MNEMONIC} = {op}"
                                     for op, cls in sorted(OPCODES.items())) + " };",
        "}  // namespace program",
        "",
        "// An instruction's words, the first in the low bits.",
        "typedef ap_uint<32 * program::MAX_WORDS> instruction_t;",
        "",
        "// The words of an opcode's instruction; 0 for an unknown opcode.",
        "inline unsigned instruction_words(unsigned opcode) {",
        "    switch (opcode) {",
    ]
    lines += [f"    case program::OP_{cls.MNEMONIC}: return {cls.words()};"
              for op, cls in sorted(OPCODES.items())]
    lines += ["    default: return 0;", "    }", "}", ""]
    for op, cls in sorted(OPCODES.items()):
        fields = cls.describe()[1:]  # the opcode is the first
        name = f"{cls.MNEMONIC.lower()}_fields"
        lines.append(f"// {cls.MNEMONIC} (opcode {op}, {cls.words()} words): "
                     f"moevit.hw.program {cls.__name__}.")
        lines.append(f"struct {name} {{")
        for field, _, bits, _, doc in fields:
            lines.append(f"    ap_uint<{bits}> {field};  // {doc}")
        lines.append("    void unpack(const instruction_t &i) {")
        for field, offset, bits, _, _ in fields:
            lines.append(f"        {field} = i.range({offset + bits - 1}, {offset});")
        lines.append("    }")
        addresses = [f for f, _, _, _, _ in fields if f.endswith("_addr")]
        lines.append("    // Every address field below `end` (the sequencer's check).")
        lines.append("    bool addresses_below(ap_uint<32> end) const {")
        lines.append("        return " + (" && ".join(f"{a} < end" for a in addresses)
                                          or "true") + ";")
        lines += ["    }", "};", ""]
    lines += ["}  // namespace moevit", ""]
    return lines


def write_parameters(hw, folder=None) -> Path:
    """Write ``parameters.h`` for ``hw`` into ``folder`` (default ``build/hls/<name>/``).

    Returns the path. Raises :class:`ConfigError` (before writing anything)
    when the templates cannot express ``hw``.
    """
    text = parameters_header(hw)
    folder = Path(folder) if folder is not None else build_dir("hls", hw.name)
    return write_atomically(folder / PARAMETERS, lambda path: path.write_text(text),
                            "HLS configuration header")

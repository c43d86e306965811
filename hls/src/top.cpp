// moevit HLS top: the accelerator that executes the compiled program (moevit.hw.program),
// as the RTL top does (hw/top/accelerator.py, sequencer.py, interconnect.py).
//
// On start it reads the program's header at `program` and checks it against this
// HwConfig (magic, format version, header length, HwConfig fingerprint, bus width,
// an on-chip window within ONCHIP_BYTES: else ERROR_PROGRAM) and the task register
// against the program's tasks (else ERROR_TASK). Then, for each of `images` images,
// it decodes each instruction (an unknown opcode: ERROR_OPCODE), checks that every
// address field lies below the on-chip window's end (the output's, without one;
// else ERROR_ADDRESS), and runs it on the kernels of hls/include,
// reading and writing the memory through relocated addresses. A descriptor the
// kernels' buffers cannot take stops the run with ERROR_DESCRIPTOR, an access that
// leaves its region, or writes into the weights or the input (read-only to the top),
// with ERROR_ADDRESS. `status` says where the run ended
// (instruction | image << 16), `error` why (0: it finished), as the RTL's registers.
//
// Relocation (the RTL's Relocator): a program address lies in the region kind whose
// bounds (the header's scratch_at, input_at, output_at, output_end; the weights from
// 0) hold it, and maps to the host's buffer of that kind at `addr - start`, plus
// image * pitch for the input and the output, the pitch being the region's size. So
// the host places its five buffers anywhere, and image N's input and output lie N
// regions into them. The on-chip window [output_end, onchip_end) (HwConfig
// onchip_bytes: activations the compiler placed by liveness) is the top's own local
// array of ONCHIP_BYTES, as the RTL's on-chip RAM; a header whose window is larger
// is ERROR_PROGRAM.
//
// Interface: one m_axi bundle `gmem` (64-bit addresses, offset=slave, widened to the
// bus width) for the five buffers, and the s_axilite bundle `control` with the
// arguments of the register map (moevit.hw.program.regmap) in its order: program,
// weights, input, output, scratch (64-bit), task, images, then status and error as
// output registers; ap_ctrl_hs on the same bundle. Vitis HLS places the registers
// itself, each argument in its data words and one word more for its port protocol
// (UG1399, "S_AXILITE Offset Option"), so the offsets after 0x10 differ from the
// RTL's (see the README);
// the names, order and meaning are the RTL's. The RTL's cycle counters and its
// start-while-busy bit have no counterpart here.
#include "moevit_attention.h"
#include "moevit_layernorm.h"
#include "moevit_linear.h"
#include "moevit_moe.h"
#include "moevit_types.h"
#include "parameters.h"

using namespace moevit;

typedef ap_uint<8> byte_t;
typedef ap_uint<64> addr_t;  // a program address, wide enough that no row arithmetic wraps

namespace {

enum region { WEIGHTS, SCRATCH, INPUT, OUTPUT, ONCHIP, REGIONS };

// The host's buffers, the on-chip window and the program's region bounds.
struct memory {
    byte_t *weights, *scratch, *input, *output, *onchip;
    addr_t start[REGIONS + 1];  // where each kind starts; start[REGIONS]: the window's end
    addr_t image_offset[REGIONS];  // image * pitch for the input and the output, else 0
    bool fault;  // an access left its region: the run stops with ERROR_ADDRESS
};

// The kind of [addr, addr + n) and its offset in the host's buffer (or the window);
// false (and a fault) when it starts at or past the window's end or runs past its
// kind's end.
bool relocate(memory &m, addr_t addr, unsigned n, unsigned &kind, addr_t &offset) {
    kind = REGIONS;
    for (int k = REGIONS - 1; k >= 0; k--)
        if (addr < m.start[k + 1]) kind = k;  // the lowest kind that holds addr
    if (kind == REGIONS || addr + n > m.start[kind + 1]) {
        m.fault = true;
        return false;
    }
    offset = m.image_offset[kind] + (addr - m.start[kind]);
    return true;
}

byte_t load(const memory &m, unsigned kind, addr_t offset) {
    switch (kind) {
    case WEIGHTS: return m.weights[offset];
    case SCRATCH: return m.scratch[offset];
    case INPUT: return m.input[offset];
    case ONCHIP: return m.onchip[offset];
    default: return m.output[offset];
    }
}

void store(memory &m, unsigned kind, addr_t offset, byte_t value) {
    switch (kind) {
    case SCRATCH: m.scratch[offset] = value; break;
    case ONCHIP: m.onchip[offset] = value; break;
    default: m.output[offset] = value; break;
    }
}

// n bytes at program address addr (zeros after a fault), as T (act_t: int8, byte_t).
template <class T>
void read(memory &m, addr_t addr, unsigned n, T *dst) {
    unsigned kind;
    addr_t offset;
    bool ok = relocate(m, addr, n, kind, offset);
read_bytes:
    for (unsigned i = 0; i < n; i++) {
#pragma HLS pipeline II=1
        byte_t b = ok ? load(m, kind, offset + i) : byte_t(0);
        dst[i] = T(b);  // an int8 takes the byte's bits
    }
}

template <class T>
void write(memory &m, addr_t addr, unsigned n, const T *src) {
    unsigned kind;
    addr_t offset;
    if (!relocate(m, addr, n, kind, offset)) return;
    if (kind == WEIGHTS || kind == INPUT) {  // the host's, read-only to the top
        m.fault = true;
        return;
    }
write_bytes:
    for (unsigned i = 0; i < n; i++) {
#pragma HLS pipeline II=1
        store(m, kind, offset + i, byte_t(src[i].range(7, 0)));
    }
}

// A little-endian word of `bytes` (at most 8) bytes.
ap_uint<64> read_word(memory &m, addr_t addr, unsigned bytes) {
    byte_t b[8];
    read(m, addr, bytes, b);
    ap_uint<64> word = 0;
    for (unsigned i = 0; i < bytes; i++) word(8 * i + 7, 8 * i) = b[i];
    return word;
}

// One linear operation, its rows gathered from and scattered to memory: row t of x
// at xrow[t], row t of y to yrow[t] (consecutive rows for LINEAR; the EXPERT's
// gather and scatter). The weights come out tile by out tile in their beats (beat
// (ot, i) holds W[ot*cols + c][i] in lane c), the channel constants one u64 each
// (bias s32, multiplier in bits 32..46, shift in 47..52), as the RTL kernel takes
// them; each out tile runs on the linear kernel.
void linear_rows(memory &m, const linear_desc &d, const addr_t xrow[], const addr_t yrow[],
                 addr_t w_addr, addr_t chan_addr, addr_t res_addr) {
    static const unsigned C = linear_config::cols;
    static act_t x[linear_config::max_tokens * linear_config::max_in];
    static act_t w[C * linear_config::max_in];
    static act_t skip[linear_config::max_tokens * C], y[linear_config::max_tokens * C];
    chan_t chan[C];
    const unsigned n_in = d.in_features, n_out = d.out_features;
linear_rows_x:
    for (unsigned t = 0; t < d.tokens; t++) read(m, xrow[t], n_in, x + t * n_in);
linear_rows_tiles:
    for (unsigned ot = 0; ot * C < n_out; ot++) {
        const unsigned first = ot * C, n = n_out - first < C ? n_out - first : C;
        act_t beat[C];
        for (unsigned i = 0; i < n_in; i++) {
            read(m, w_addr + (addr_t(ot) * n_in + i) * C, C, beat);
            for (unsigned c = 0; c < n; c++) w[c * n_in + i] = beat[c];
        }
        for (unsigned c = 0; c < n; c++) {
            ap_uint<64> word = read_word(m, chan_addr + 8 * addr_t(first + c), 8);
            chan[c].bias = acc_t(word(31, 0));
            chan[c].mult = word(46, 32);
            chan[c].shift = word(52, 47);
        }
        if (d.residual)
            for (unsigned t = 0; t < d.tokens; t++)
                read(m, res_addr + addr_t(t) * n_out + first, n, skip + t * n);
        linear_desc tile = d;
        tile.out_features = n;
        linear<linear_config>(tile, x, w, chan, skip, y);
        for (unsigned t = 0; t < d.tokens; t++) write(m, yrow[t] + first, n, y + t * n);
    }
}

// The shape checks of the linear kernel's buffers.
bool linear_fits(unsigned tokens, unsigned in_features, unsigned out_features) {
    return tokens >= 1 && tokens <= linear_config::max_tokens && in_features >= 1 &&
           in_features <= linear_config::max_in && out_features >= 1;
}

unsigned run_linear(memory &m, const linear_fields &f) {
    static const unsigned R = linear_config::rows, C = linear_config::cols;
    const unsigned tokens = f.tokens, n_in = f.in_features, n_out = f.out_features;
    if (!linear_fits(tokens, n_in, n_out) || f.token_tiles != (tokens + R - 1) / R ||
        f.out_tiles != (n_out + C - 1) / C)
        return program::ERROR_DESCRIPTOR;
    linear_desc d;
    d.tokens = tokens;
    d.in_features = n_in;
    d.out_features = n_out;
    d.gelu = f.gelu;
    d.gelu_k.b = f.gelu_b;
    d.gelu_k.c = f.gelu_c;
    d.gelu_k.mult = f.gelu_mult;
    d.gelu_k.shift = f.gelu_shift;
    d.residual = f.residual;
    d.res_mult_y = f.res_mult_y;
    d.res_mult_skip = f.res_mult_skip;
    d.res_shift = f.res_shift;
    addr_t xrow[linear_config::max_tokens], yrow[linear_config::max_tokens];
    for (unsigned t = 0; t < tokens; t++) {
        xrow[t] = f.x_addr + addr_t(t) * n_in;
        yrow[t] = f.y_addr + addr_t(t) * n_out;
    }
    linear_rows(m, d, xrow, yrow, f.w_addr, f.chan_addr, f.res_addr);
    return program::ERROR_NONE;
}

// Entry `task` of a task table: w_addr, chan_addr, out_features, consts.
struct task_entry {
    ap_uint<32> w_addr, chan_addr, out_features, consts;
};

task_entry read_entry(memory &m, addr_t table_addr, unsigned task) {
    addr_t at = table_addr + program::TASK_ENTRY_BYTES * addr_t(task);
    task_entry e;
    e.w_addr = read_word(m, at, 4);
    e.chan_addr = read_word(m, at + 4, 4);
    e.out_features = read_word(m, at + 8, 4);
    e.consts = read_word(m, at + 12, 4);
    return e;
}

unsigned run_task_linear(memory &m, const task_linear_fields &f, unsigned task) {
    if (task >= f.tasks) return program::ERROR_TASK;
    task_entry e = read_entry(m, f.table_addr, task);
    if (e.out_features < 1 || e.out_features > f.max_out) return program::ERROR_DESCRIPTOR;
    linear_fields l;
    l.tokens = f.tokens;
    l.in_features = f.in_features;
    l.out_features = e.out_features;
    l.gelu = 0;
    l.residual = 0;
    l.token_tiles = (unsigned(f.tokens) + linear_config::rows - 1) / linear_config::rows;
    l.out_tiles = (unsigned(e.out_features) + linear_config::cols - 1) / linear_config::cols;
    l.x_addr = f.x_addr;
    l.w_addr = e.w_addr;
    l.chan_addr = e.chan_addr;
    l.y_addr = f.y_addr;
    return run_linear(m, l);
}

// Head by head: q, k and v of the head into on-chip buffers, the streaming kernel,
// the head's columns of the context back.
unsigned run_attention(memory &m, const attention_fields &f) {
    typedef attention_config A;
    const unsigned tokens = f.tokens, rows = f.rows, heads = f.heads, hd = f.head_dim;
    if (tokens < 1 || tokens > A::kv_depth || rows < 1 || rows > tokens || heads < 1 || hd < 1 ||
        hd > A::max_head_dim ||
        hd % A::score_lanes || heads % A::heads_parallel || f.chunks != hd / A::score_lanes ||
        f.rounds != heads / A::heads_parallel || f.row_pitch < heads * hd)
        return program::ERROR_DESCRIPTOR;
    static act_t q[A::kv_depth * A::max_head_dim], k[A::kv_depth * A::max_head_dim];
    static act_t v[A::kv_depth * A::max_head_dim], out[A::kv_depth * A::max_head_dim];
    attention_desc d;
    d.tokens = tokens;
    d.rows = rows;
    d.heads = 1;
    d.head_dim = hd;
    d.row_pitch = hd;
    d.sm_mult = f.sm_mult;
    d.sm_shift = f.sm_shift;
    d.out_mult = f.out_mult;
    d.out_shift = f.out_shift;
attention_heads:
    for (unsigned h = 0; h < heads; h++) {
        for (unsigned t = 0; t < tokens; t++) {
            addr_t row = addr_t(t) * f.row_pitch + h * hd;
            if (t < rows) read(m, f.q_addr + row, hd, q + t * hd);
            read(m, f.k_addr + row, hd, k + t * hd);
            read(m, f.v_addr + row, hd, v + t * hd);
        }
        attention_head<A>(d, q, k, v, out, hd);
        for (unsigned t = 0; t < rows; t++)
            write(m, f.out_addr + addr_t(t) * heads * hd + h * hd, hd, out + t * hd);
    }
    return program::ERROR_NONE;
}

// gamma s16 and beta s41 per channel, one u64 each; then row by row.
unsigned run_layernorm(memory &m, const layernorm_fields &f) {
    typedef layernorm_config L;
    const unsigned tokens = f.tokens, dim = f.dim;
    if (tokens < 1 || dim < 1 || dim > L::max_dim) return program::ERROR_DESCRIPTOR;
    gamma_t gamma[L::max_dim];
    beta_t beta[L::max_dim];
    for (unsigned c = 0; c < dim; c++) {
        ap_uint<64> word = read_word(m, f.param_addr + 8 * addr_t(c), 8);
        gamma[c] = gamma_t(word(15, 0));
        beta[c] = beta_t(word(56, 16));
    }
    act_t row[L::max_dim];
layernorm_rows:
    for (unsigned t = 0; t < tokens; t++) {
        hls::stream<act_t> in("ln_in"), out("ln_out");
        read(m, f.x_addr + addr_t(t) * dim, dim, row);
        for (unsigned c = 0; c < dim; c++) in.write(row[c]);
        layernorm<L>(in, out, dim, eps_t(f.eps), gamma, beta, f.shift);
        for (unsigned c = 0; c < dim; c++) row[c] = out.read();
        write(m, f.y_addr + addr_t(t) * dim, dim, row);
    }
    return program::ERROR_NONE;
}

// The image (channels, rows, columns) cut into patches, row-major over the grid,
// features in (channel, row, column) order.
unsigned run_patchify(memory &m, const patchify_fields &f) {
    const unsigned ch = f.channels, rows = f.rows, cols = f.columns, p = f.patch;
    if (ch < 1 || rows < 1 || cols < 1 || p < 1 || rows % p || cols % p ||
        ch * p * p > linear_config::max_in)
        return program::ERROR_DESCRIPTOR;
    const unsigned features = ch * p * p;
    byte_t patch[linear_config::max_in];
patchify_grid:
    for (unsigned gy = 0; gy < rows / p; gy++) {
        for (unsigned gx = 0; gx < cols / p; gx++) {
            for (unsigned c = 0; c < ch; c++)
                for (unsigned r = 0; r < p; r++)
                    read(m, f.x_addr + (addr_t(c) * rows + gy * p + r) * cols + gx * p, p,
                         patch + (c * p + r) * p);
            write(m, f.y_addr + addr_t(gy * (cols / p) + gx) * features, features, patch);
        }
    }
    return program::ERROR_NONE;
}

unsigned run_copy(memory &m, const copy_fields &f) {
    static const unsigned CHUNK = program::BUS_BITS / 8;
    const unsigned length = f.length;
    byte_t chunk[CHUNK];
copy_chunks:
    for (unsigned at = 0; at < length; at += CHUNK) {
        unsigned n = length - at < CHUNK ? length - at : CHUNK;
        read(m, f.src_addr + at, n, chunk);
        write(m, f.dst_addr + at, n, chunk);
    }
    return program::ERROR_NONE;
}

// Top-k and gate weights on the MoE unit's gate, with the task's softmax constants.
unsigned run_route(memory &m, const route_fields &f, unsigned task) {
    typedef moe_config M;
    const unsigned tokens = f.tokens, experts = f.experts, k = f.top_k;
    if (tokens < 1 || tokens > M::max_tokens || experts < 1 || experts > M::max_experts ||
        k < 1 || k > experts)
        return program::ERROR_DESCRIPTOR;
    if (task >= f.tasks) return program::ERROR_TASK;
    task_entry e = read_entry(m, f.table_addr, task);
    static act_t logits[M::max_tokens * M::max_experts];
    static expert_t top[M::max_tokens * M::max_experts];
    static prob_t weights[M::max_tokens * M::max_experts];
    read(m, f.logits_addr, tokens * experts, logits);
    moe_desc d;
    d.tokens = tokens;
    d.experts = experts;
    d.top_k = k;
    d.renorm = f.rule;
    d.dim = 1;
    d.sm_mult = e.consts(14, 0);
    d.sm_shift = e.consts(20, 15);
    d.out_mult = 1;
    d.out_shift = 1;
    moe_gate<M>(d, logits, top, weights);
    write(m, f.topk_addr, tokens * k, top);
route_weights:
    for (unsigned j = 0; j < tokens * k; j++) {
        byte_t half[2] = {byte_t(weights[j](7, 0)), byte_t(weights[j](15, 8))};
        write(m, f.weights_addr + 2 * addr_t(j), 2, half);
    }
    return program::ERROR_NONE;
}

// One expert: the tokens that chose it gathered (token order), fc1 with GELU into
// the hidden rows, fc2 scattered into their slots. No token: nothing runs.
unsigned run_expert(memory &m, const expert_fields &f) {
    typedef linear_config L;
    const unsigned tokens = f.tokens, dim = f.dim, hidden = f.hidden, k = f.top_k;
    if (!linear_fits(tokens, dim, hidden) || !linear_fits(tokens, hidden, dim) || k < 1 ||
        k > moe_config::max_experts)
        return program::ERROR_DESCRIPTOR;
    static byte_t top[L::max_tokens * moe_config::max_experts];
    read(m, f.topk_addr, tokens * k, top);
    addr_t xrow[L::max_tokens], hrow[L::max_tokens], slot[L::max_tokens];
    unsigned n = 0;
expert_gather:
    for (unsigned t = 0; t < tokens; t++) {
        for (unsigned s = 0; s < k; s++) {
            if (top[t * k + s] == f.expert && n < tokens) {
                xrow[n] = f.x_addr + addr_t(t) * dim;
                hrow[n] = f.hidden_addr + addr_t(n) * hidden;
                slot[n] = f.slots_addr + (addr_t(t) * k + s) * dim;
                n++;
            }
        }
    }
    if (n == 0) return program::ERROR_NONE;
    linear_desc fc1;
    fc1.tokens = n;
    fc1.in_features = dim;
    fc1.out_features = hidden;
    fc1.gelu = true;
    fc1.gelu_k.b = f.gelu_b;
    fc1.gelu_k.c = f.gelu_c;
    fc1.gelu_k.mult = f.gelu_mult;
    fc1.gelu_k.shift = f.gelu_shift;
    fc1.residual = false;
    linear_desc fc2 = fc1;
    fc2.in_features = hidden;
    fc2.out_features = dim;
    fc2.gelu = false;
    linear_rows(m, fc1, xrow, hrow, f.fc1_w_addr, f.fc1_chan_addr, 0);
    linear_rows(m, fc2, hrow, slot, f.fc2_w_addr, f.fc2_chan_addr, 0);
    return program::ERROR_NONE;
}

// Per token: the gate-weighted sum of its slots (an int32), requantized, then the
// block's residual add.
unsigned run_combine(memory &m, const combine_fields &f) {
    typedef linear_config L;
    const unsigned tokens = f.tokens, dim = f.dim, k = f.top_k;
    if (tokens < 1 || tokens > moe_config::max_tokens || dim < 1 || dim > L::max_in || k < 1 ||
        k > moe_config::max_experts)
        return program::ERROR_DESCRIPTOR;
    acc_t acc[L::max_in];
    act_t row[L::max_in];
combine_tokens:
    for (unsigned t = 0; t < tokens; t++) {
        for (unsigned c = 0; c < dim; c++) acc[c] = 0;
        for (unsigned s = 0; s < k; s++) {
            prob_t weight = read_word(m, f.weights_addr + 2 * (addr_t(t) * k + s), 2);
            read(m, f.slots_addr + (addr_t(t) * k + s) * dim, dim, row);
            for (unsigned c = 0; c < dim; c++) acc[c] += weight * row[c];
        }
        act_t skip[L::max_in];
        read(m, f.skip_addr + addr_t(t) * dim, dim, skip);
        for (unsigned c = 0; c < dim; c++)
            row[c] = residual_add(requantize(acc[c], f.mult, f.shift), skip[c], f.res_mult_y,
                                  f.res_mult_skip, f.res_shift);
        write(m, f.y_addr + addr_t(t) * dim, dim, row);
    }
    return program::ERROR_NONE;
}

// Decode one instruction and run it; its error code.
unsigned execute(memory &m, const instruction_t &word, unsigned task) {
    switch (unsigned(word(7, 0))) {
#define MOEVIT_CASE(OP, fields, call)                                  \
    case program::OP: {                                                \
        fields f;                                                      \
        f.unpack(word);                                                \
        if (!f.addresses_below(m.start[REGIONS]))                      \
            return program::ERROR_ADDRESS;                             \
        return call;                                                   \
    }
        MOEVIT_CASE(OP_LINEAR, linear_fields, run_linear(m, f))
        MOEVIT_CASE(OP_ATTENTION, attention_fields, run_attention(m, f))
        MOEVIT_CASE(OP_LAYERNORM, layernorm_fields, run_layernorm(m, f))
        MOEVIT_CASE(OP_PATCHIFY, patchify_fields, run_patchify(m, f))
        MOEVIT_CASE(OP_COPY, copy_fields, run_copy(m, f))
        MOEVIT_CASE(OP_TASK_LINEAR, task_linear_fields, run_task_linear(m, f, task))
        MOEVIT_CASE(OP_ROUTE, route_fields, run_route(m, f, task))
        MOEVIT_CASE(OP_EXPERT, expert_fields, run_expert(m, f))
        MOEVIT_CASE(OP_COMBINE, combine_fields, run_combine(m, f))
#undef MOEVIT_CASE
    default: return program::ERROR_OPCODE;
    }
}

// The run: header checks, then every instruction of every image. Its error code;
// `image` and `instruction` say where it ended.
unsigned run(const ap_uint<32> *prog, memory &m, unsigned task, unsigned images,
             unsigned &image, unsigned &instruction) {
    using namespace program;
    ap_uint<32> header[HEADER_WORDS];
    for (unsigned k = 0; k < HEADER_WORDS; k++) header[k] = prog[k];
    if (header[HEADER_MAGIC] != MAGIC || header[HEADER_VERSION] != VERSION ||
        header[HEADER_HEADER_WORDS] != HEADER_WORDS || header[HEADER_HW_HASH_LO] != HW_HASH_LO ||
        header[HEADER_HW_HASH_HI] != HW_HASH_HI || header[HEADER_BUS_BITS] != BUS_BITS ||
        // The regions in order (as the RTL and decode): else one kind covers another's.
        header[HEADER_SCRATCH_AT] > header[HEADER_INPUT_AT] ||
        header[HEADER_INPUT_AT] > header[HEADER_OUTPUT_AT] ||
        header[HEADER_OUTPUT_AT] > header[HEADER_OUTPUT_END] ||
        header[HEADER_ONCHIP_END] < header[HEADER_OUTPUT_END] ||
        header[HEADER_ONCHIP_END] - header[HEADER_OUTPUT_END] > ONCHIP_BYTES)
        return ERROR_PROGRAM;
    if (task >= header[HEADER_TASKS]) return ERROR_TASK;
    m.start[WEIGHTS] = 0;
    m.start[SCRATCH] = header[HEADER_SCRATCH_AT];
    m.start[INPUT] = header[HEADER_INPUT_AT];
    m.start[OUTPUT] = header[HEADER_OUTPUT_AT];
    m.start[ONCHIP] = header[HEADER_OUTPUT_END];
    m.start[REGIONS] = header[HEADER_ONCHIP_END];
    const unsigned body = header[HEADER_BODY_WORDS], count = header[HEADER_INSTRUCTIONS];
    if (images == 0 || count == 0) return ERROR_NONE;  // nothing to run (status 0)
run_images:
    for (image = 0; image < images; image++) {
        m.image_offset[WEIGHTS] = m.image_offset[SCRATCH] = m.image_offset[ONCHIP] = 0;
        m.image_offset[INPUT] = addr_t(image) * (m.start[OUTPUT] - m.start[INPUT]);
        m.image_offset[OUTPUT] = addr_t(image) * (m.start[ONCHIP] - m.start[OUTPUT]);
        unsigned at = 0;
    run_instructions:
        for (instruction = 0; instruction < count; instruction++) {
            unsigned words = at < body ? instruction_words(prog[HEADER_WORDS + at](7, 0)) : 0;
            if (words == 0) return at < body ? ERROR_OPCODE : ERROR_PROGRAM;
            // The body ends with the last instruction, not before nor after (as the RTL).
            if (at + words > body || (at + words == body) != (instruction + 1 == count))
                return ERROR_PROGRAM;
            instruction_t word = 0;
            for (unsigned k = 0; k < words; k++)
                word(32 * k + 31, 32 * k) = prog[HEADER_WORDS + at + k];
            at += words;
            m.fault = false;
            unsigned code = execute(m, word, task);
            if (code == ERROR_NONE && m.fault) code = ERROR_ADDRESS;
            if (code != ERROR_NONE) return code;
        }
    }
    // A finished run reports its last image and instruction, as the RTL's status.
    image = images - 1;
    instruction = count - 1;
    return ERROR_NONE;
}

}  // namespace

void moevit_top(const ap_uint<32> *program, byte_t *weights, byte_t *input, byte_t *output,
                byte_t *scratch, unsigned task, unsigned images, unsigned *status,
                unsigned *error) {
#pragma HLS INTERFACE mode=m_axi port=program bundle=gmem offset=slave max_widen_bitwidth=program::BUS_BITS
#pragma HLS INTERFACE mode=m_axi port=weights bundle=gmem offset=slave max_widen_bitwidth=program::BUS_BITS
#pragma HLS INTERFACE mode=m_axi port=input bundle=gmem offset=slave max_widen_bitwidth=program::BUS_BITS
#pragma HLS INTERFACE mode=m_axi port=output bundle=gmem offset=slave max_widen_bitwidth=program::BUS_BITS
#pragma HLS INTERFACE mode=m_axi port=scratch bundle=gmem offset=slave max_widen_bitwidth=program::BUS_BITS
#pragma HLS INTERFACE mode=s_axilite port=program bundle=control
#pragma HLS INTERFACE mode=s_axilite port=weights bundle=control
#pragma HLS INTERFACE mode=s_axilite port=input bundle=control
#pragma HLS INTERFACE mode=s_axilite port=output bundle=control
#pragma HLS INTERFACE mode=s_axilite port=scratch bundle=control
#pragma HLS INTERFACE mode=s_axilite port=task bundle=control
#pragma HLS INTERFACE mode=s_axilite port=images bundle=control
#pragma HLS INTERFACE mode=s_axilite port=status bundle=control
#pragma HLS INTERFACE mode=s_axilite port=error bundle=control
#pragma HLS INTERFACE mode=s_axilite port=return bundle=control
#pragma HLS INTERFACE mode=ap_ctrl_hs port=return bundle=control
    static byte_t window[program::ONCHIP_BYTES ? program::ONCHIP_BYTES : 1];  // on chip
    memory m;
    m.onchip = window;
    m.weights = weights;
    m.scratch = scratch;
    m.input = input;
    m.output = output;
    m.fault = false;
    unsigned image = 0, instruction = 0;
    unsigned code = run(program, m, task, images, image, instruction);
    *status = (instruction & 0xFFFF) | (image & 0xFFFF) << 16;
    *error = code;
}

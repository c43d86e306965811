// The memory behind the top's AXI4 ports for long co-simulations: every beat served in
// the simulator, none through Python (cocotbext-axi's RAM wakes Python on every beat).
//
// One array of WORDS bus words that every port reads and writes. Per port: AR and AW
// bursts queue as they come and are served `latency` cycles after their handshake, in
// order; R beats one a cycle; W beats taken one a cycle into a FIFO and written once
// their AW is due, a B answer after the burst's last one. The rule of the Python memory
// (moevit.sim.benches.top.Bucket): per port, R and W beats together within a bucket
// that fills by `port_rate` a cycle, all ports within one that fills by `memory_rate`
// (both in 1/1024 byte; 0: no limit), each capped at a beat and a cycle's refill; a
// channel offers no beat in a cycle that a bucket starts with less than a beat.
//
// The bench loads bytes with `load` ($readmemh "memory.hex", @word addresses in it) and
// reads them back with `dump` ($writememh "dump.hex", words dump_from..dump_to), both
// in the simulation's working folder. Only what the top issues is modelled: INCR
// bursts of whole, aligned bus words; anything else raises `unsupported`.
module moevit_sim_memory #(
    parameter PORTS = 1,
    parameter DATA_WIDTH = 512,
    parameter WORDS = 1 << 20,
    parameter QUEUE = 256,       // bursts waiting per port and direction
    parameter W_FIFO = 1024      // W beats taken ahead of their AW per port
) (
    input clk,
    input load,
    input dump,
    input [31:0] dump_from,
    input [31:0] dump_to,
    input [31:0] latency,
    input [31:0] port_rate,
    input [31:0] memory_rate,
    output [PORTS*64-1:0] bytes_read,
    output reg unsupported,

    input [PORTS-1:0] arvalid, output [PORTS-1:0] arready, input [PORTS*64-1:0] araddr,
    input [PORTS*8-1:0] arlen, input [PORTS*3-1:0] arsize, input [PORTS*2-1:0] arburst,
    input [PORTS-1:0] arid,
    output [PORTS-1:0] rvalid, input [PORTS-1:0] rready,
    output [PORTS*DATA_WIDTH-1:0] rdata, output [PORTS-1:0] rlast,
    output [PORTS*2-1:0] rresp, output [PORTS-1:0] rid,
    input [PORTS-1:0] awvalid, output [PORTS-1:0] awready, input [PORTS*64-1:0] awaddr,
    input [PORTS*8-1:0] awlen, input [PORTS*3-1:0] awsize, input [PORTS*2-1:0] awburst,
    input [PORTS-1:0] awid,
    input [PORTS-1:0] wvalid, output [PORTS-1:0] wready,
    input [PORTS*DATA_WIDTH-1:0] wdata, input [PORTS*DATA_WIDTH/8-1:0] wstrb,
    input [PORTS-1:0] wlast,
    output [PORTS-1:0] bvalid, input [PORTS-1:0] bready,
    output [PORTS*2-1:0] bresp, output [PORTS-1:0] bid
);
    localparam BYTES = DATA_WIDTH / 8;
    localparam SIZE = $clog2(BYTES);
    localparam signed [47:0] BEAT = BYTES * 1024;

    reg [DATA_WIDTH-1:0] mem [0:WORDS-1];
    reg [63:0] now = 0;

    // Bursts waiting: word address, beats, id, the cycle they are due.
    reg [31:0] ar_word [0:PORTS*QUEUE-1];
    reg [8:0] ar_beats [0:PORTS*QUEUE-1];
    reg ar_id [0:PORTS*QUEUE-1];
    reg [63:0] ar_due [0:PORTS*QUEUE-1];
    reg [31:0] aw_word [0:PORTS*QUEUE-1];
    reg [8:0] aw_beats [0:PORTS*QUEUE-1];
    reg aw_id [0:PORTS*QUEUE-1];
    reg [63:0] aw_due [0:PORTS*QUEUE-1];
    reg [15:0] ar_head [0:PORTS-1], ar_count [0:PORTS-1];
    reg [15:0] aw_head [0:PORTS-1], aw_count [0:PORTS-1];
    // W beats taken, B answers owed.
    reg [DATA_WIDTH-1:0] w_data [0:PORTS*W_FIFO-1];
    reg [BYTES-1:0] w_strb [0:PORTS*W_FIFO-1];
    reg [15:0] w_head [0:PORTS-1], w_count [0:PORTS-1];
    reg b_ids [0:PORTS*QUEUE-1];
    reg [15:0] b_head [0:PORTS-1], b_count [0:PORTS-1];
    // The burst each port serves: R beats, and writes of taken W beats.
    reg r_busy [0:PORTS-1], r_burst_id [0:PORTS-1];
    reg [31:0] r_word [0:PORTS-1];
    reg [8:0] r_left [0:PORTS-1];
    reg w_busy [0:PORTS-1], w_burst_id [0:PORTS-1];
    reg [31:0] w_word [0:PORTS-1];
    reg [8:0] w_left [0:PORTS-1];
    reg [63:0] read_bytes [0:PORTS-1];
    // The buckets (1/1024 byte).
    reg signed [47:0] own_level [0:PORTS-1];
    reg signed [47:0] shared_level = BEAT;

    wire shared_ok = memory_rate == 0 || shared_level + $signed({16'd0, memory_rate}) >= BEAT;

    integer p, k, taken, all_taken, slot, from;
    reg signed [47:0] level;

    initial begin
        unsupported = 0;
        for (k = 0; k < WORDS; k = k + 1)    // unwritten bytes read as 0, as the Python RAM's
            mem[k] = 0;
        for (p = 0; p < PORTS; p = p + 1) begin
            ar_head[p] = 0; ar_count[p] = 0; aw_head[p] = 0; aw_count[p] = 0;
            w_head[p] = 0; w_count[p] = 0; b_head[p] = 0; b_count[p] = 0;
            r_busy[p] = 0; w_busy[p] = 0; r_left[p] = 0; w_left[p] = 0;
            r_word[p] = 0; w_word[p] = 0; r_burst_id[p] = 0; w_burst_id[p] = 0;
            read_bytes[p] = 0; own_level[p] = BEAT;
        end
    end

    genvar g;
    generate
        for (g = 0; g < PORTS; g = g + 1) begin : port
            wire own_ok = port_rate == 0 || own_level[g] + $signed({16'd0, port_rate}) >= BEAT;
            assign arready[g] = ar_count[g] < QUEUE;
            assign awready[g] = aw_count[g] < QUEUE;
            assign rvalid[g] = r_busy[g] && own_ok && shared_ok;
            assign rdata[g*DATA_WIDTH +: DATA_WIDTH] = mem[r_word[g]];
            assign rlast[g] = r_left[g] == 1;
            assign rresp[g*2 +: 2] = 2'b00;
            assign rid[g] = r_burst_id[g];
            assign wready[g] = w_count[g] < W_FIFO && own_ok && shared_ok;
            assign bvalid[g] = b_count[g] != 0;
            assign bresp[g*2 +: 2] = 2'b00;
            assign bid[g] = b_ids[g*QUEUE + b_head[g]];
            assign bytes_read[g*64 +: 64] = read_bytes[g];
        end
    endgenerate

    always @(posedge clk) begin
        if (load)
            $readmemh("memory.hex", mem);
        if (dump)
            $writememh("dump.hex", mem, dump_from, dump_to);
        now <= now + 1;
        all_taken = 0;
        for (p = 0; p < PORTS; p = p + 1) begin
            // New bursts (the queues count what was there before this edge: a burst is
            // served no sooner than the cycle after its handshake).
            if (arvalid[p] && arready[p]) begin
                slot = p * QUEUE + (ar_head[p] + ar_count[p]) % QUEUE;
                ar_word[slot] <= araddr[p*64 +: 64] >> SIZE;
                ar_beats[slot] <= arlen[p*8 +: 8] + 1;
                ar_id[slot] <= arid[p];
                ar_due[slot] <= now + latency;
                if (araddr[p*64 +: SIZE] != 0 || arsize[p*3 +: 3] != SIZE
                        || arburst[p*2 +: 2] != 2'b01)
                    unsupported <= 1;
            end
            if (awvalid[p] && awready[p]) begin
                slot = p * QUEUE + (aw_head[p] + aw_count[p]) % QUEUE;
                aw_word[slot] <= awaddr[p*64 +: 64] >> SIZE;
                aw_beats[slot] <= awlen[p*8 +: 8] + 1;
                aw_id[slot] <= awid[p];
                aw_due[slot] <= now + latency;
                if (awaddr[p*64 +: SIZE] != 0 || awsize[p*3 +: 3] != SIZE
                        || awburst[p*2 +: 2] != 2'b01)
                    unsupported <= 1;
            end
            if (wvalid[p] && wready[p]) begin
                slot = p * W_FIFO + (w_head[p] + w_count[p]) % W_FIFO;
                w_data[slot] <= wdata[p*DATA_WIDTH +: DATA_WIDTH];
                w_strb[slot] <= wstrb[p*BYTES +: BYTES];
            end
            // R: a beat taken; the next burst once this one is through and that one due.
            taken = 0;
            if (rvalid[p] && rready[p]) begin
                taken = 1;
                read_bytes[p] <= read_bytes[p] + BYTES;
                r_word[p] <= r_word[p] + 1;
                r_left[p] <= r_left[p] - 1;
                if (r_left[p] == 1)
                    r_busy[p] <= 0;
            end
            if ((!r_busy[p] || (taken && r_left[p] == 1)) && ar_count[p] != 0
                    && ar_due[p*QUEUE + ar_head[p]] <= now) begin
                from = p * QUEUE + ar_head[p];
                r_busy[p] <= 1;
                r_word[p] <= ar_word[from];
                r_left[p] <= ar_beats[from];
                r_burst_id[p] <= ar_id[from];
                ar_head[p] <= (ar_head[p] + 1) % QUEUE;
            end
            ar_count[p] <= ar_count[p] + (arvalid[p] && arready[p])
                - ((!r_busy[p] || (taken && r_left[p] == 1)) && ar_count[p] != 0
                   && ar_due[p*QUEUE + ar_head[p]] <= now);
            // W: a taken beat written a cycle while its burst is due; then its B answer.
            if (w_busy[p] && w_count[p] != 0) begin
                from = p * W_FIFO + w_head[p];
                for (k = 0; k < BYTES; k = k + 1)
                    if (w_strb[from][k])
                        mem[w_word[p]][k*8 +: 8] <= w_data[from][k*8 +: 8];
                w_head[p] <= (w_head[p] + 1) % W_FIFO;
                w_word[p] <= w_word[p] + 1;
                w_left[p] <= w_left[p] - 1;
                if (w_left[p] == 1) begin
                    w_busy[p] <= 0;
                    b_ids[p * QUEUE + (b_head[p] + b_count[p]) % QUEUE] <= w_burst_id[p];
                end
            end
            w_count[p] <= w_count[p] + (wvalid[p] && wready[p]) - (w_busy[p] && w_count[p] != 0);
            b_count[p] <= b_count[p] + (w_busy[p] && w_count[p] != 0 && w_left[p] == 1)
                - (bvalid[p] && bready[p]);
            if (bvalid[p] && bready[p])
                b_head[p] <= (b_head[p] + 1) % QUEUE;
            if (!w_busy[p] && aw_count[p] != 0 && aw_due[p*QUEUE + aw_head[p]] <= now) begin
                from = p * QUEUE + aw_head[p];
                w_busy[p] <= 1;
                w_word[p] <= aw_word[from];
                w_left[p] <= aw_beats[from];
                w_burst_id[p] <= aw_id[from];
                aw_head[p] <= (aw_head[p] + 1) % QUEUE;
            end
            aw_count[p] <= aw_count[p] + (awvalid[p] && awready[p])
                - (!w_busy[p] && aw_count[p] != 0 && aw_due[p*QUEUE + aw_head[p]] <= now);
            // This port's bucket: refilled, then a beat less for each beat taken.
            taken = taken + (wvalid[p] && wready[p]);
            all_taken = all_taken + taken;
            level = own_level[p] + $signed({16'd0, port_rate});
            if (level > BEAT + $signed({16'd0, port_rate}))
                level = BEAT + $signed({16'd0, port_rate});
            // (No limit: kept full, so that a long run does not count it down for ever.)
            own_level[p] <= port_rate == 0 ? BEAT : level - BEAT * taken;
        end
        level = shared_level + $signed({16'd0, memory_rate});
        if (level > BEAT + $signed({16'd0, memory_rate}))
            level = BEAT + $signed({16'd0, memory_rate});
        shared_level <= memory_rate == 0 ? BEAT : level - BEAT * all_taken;
    end
endmodule

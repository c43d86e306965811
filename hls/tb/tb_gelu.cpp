// Testbench of the GELU (moevit_gelu.h). Per case, in:
//   n, b, c, mult, shift, q[n]
// out: gelu(q)[n] (s31), then requantize(gelu(q))[n] (int8).
#include "moevit_gelu.h"
#include "parameters.h"
#include "tb_io.h"

using namespace moevit;

int main(int argc, char **argv) {
    return tb_main(argc, argv, [](tb_input &in, tb_output &out) {
        unsigned n = in.next();
        gelu_consts g;
        g.b = in.next();
        g.c = in.next();
        g.mult = in.next();
        g.shift = in.next();
        std::vector<act_t> q = in.array<act_t>(n);
        for (unsigned i = 0; i < n; i++) out.put(gelu(q[i], g.b, g.c).to_int64());
        for (unsigned i = 0; i < n; i++) out.put(gelu_requantize(q[i], g).to_int64());
    });
}

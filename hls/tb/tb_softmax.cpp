// Testbench of the softmax (moevit_softmax.h), the attention's instance. Per case, in:
//   rows, n, mult, shift, scores[rows*n]
// out: probs[rows*n].
#include "moevit_softmax.h"
#include "parameters.h"
#include "tb_io.h"

using namespace moevit;

int main(int argc, char **argv) {
    return tb_main(argc, argv, [](tb_input &in, tb_output &out) {
        unsigned rows = in.next(), n = in.next();
        mult_t mult = in.next();
        shift_t shift = in.next();
        hls::stream<score_t> scores("scores");
        hls::stream<prob_t> probs("probs");
        for (unsigned r = 0; r < rows; r++) {
            for (unsigned i = 0; i < n; i++) scores.write(in.next());
            softmax<attention_softmax_config>(scores, probs, n, mult, shift);
            for (unsigned i = 0; i < n; i++) out.put(probs.read().to_int64());
        }
    });
}

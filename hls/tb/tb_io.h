// C-simulation testbench I/O: little-endian int64 values in plain binary files
// that moevit.hls.csim writes and reads. The input file holds the number of
// cases, then each case's fields in the order its testbench reads them; the
// testbench writes each case's outputs in the order the Python side reads them.
// The comparison with the golden model happens in Python, in full.
#ifndef MOEVIT_TB_IO_H
#define MOEVIT_TB_IO_H

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

struct tb_input {
    FILE *file;
    long long next() {
        int64_t value;
        if (std::fread(&value, sizeof value, 1, file) != 1) {
            std::fprintf(stderr, "testbench: input file ended early\n");
            std::exit(3);
        }
        return value;
    }
    // n values into a vector of T (ap_int types convert from long long).
    template <class T>
    std::vector<T> array(size_t n) {
        std::vector<T> values(n);
        for (size_t i = 0; i < n; i++) values[i] = next();
        return values;
    }
};

struct tb_output {
    FILE *file;
    void put(long long value) {
        int64_t v = value;
        std::fwrite(&v, sizeof v, 1, file);
    }
    template <class T>
    void array(const std::vector<T> &values) {
        for (size_t i = 0; i < values.size(); i++) put(values[i].to_int64());
    }
};

// main() of every testbench: argv[1] the input file, argv[2] the output file;
// run_case(in, out) once per case.
template <class RUN>
int tb_main(int argc, char **argv, RUN run_case) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    tb_input in = {std::fopen(argv[1], "rb")};
    tb_output out = {std::fopen(argv[2], "wb")};
    if (!in.file || !out.file) {
        std::fprintf(stderr, "testbench: cannot open %s or %s\n", argv[1], argv[2]);
        return 2;
    }
    long long cases = in.next();
    for (long long c = 0; c < cases; c++) run_case(in, out);
    if (std::fgetc(in.file) != EOF) {
        std::fprintf(stderr, "testbench: input file has data after the last case\n");
        return 3;
    }
    std::fclose(in.file);
    return std::fclose(out.file) == 0 ? 0 : 3;
}

#endif

"""``moevit hw compile`` and ``moevit hw disassemble`` through the real command line:
the files, the listing read back, and each bad input as one line with exit status 2."""

import re

import pytest

from moevit.cli import main
from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.program import FILES, read_program


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from moevit.model.integer.quantize import save_quantized
    from moevit.sim.units import tiny_quantized

    path = tmp_path_factory.mktemp("quantized") / "tiny.npz"
    save_quantized(path, tiny_quantized(trained=False)[0])
    return path


@pytest.fixture(scope="module")
def too_many_tokens(tmp_path_factory):
    """A quantized model of 145 tokens (96x96 images): more than tiny's 128-token buffer."""
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.evaluate import signal_model
    from moevit.model.integer.quantize import quantize, save_quantized

    config = get_config("tiny").replace(name="tiny-96", image_size=(96, 96))
    path = tmp_path_factory.mktemp("quantized") / "tiny-96.npz"
    images = SyntheticDataset(config, "val", size=2, seed=0).images
    save_quantized(path, quantize(signal_model(config), images))
    return path


def _error(capsys, argv, message):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert re.fullmatch(r"moevit: error: " + message + r"\n", err), err
    return out


def test_compile_then_disassemble(quantized, tmp_path, capsys):
    folder = tmp_path / "program"
    assert main(["hw", "compile", "--quantized", str(quantized), "-o", str(folder)]) == 0
    out = capsys.readouterr().out
    assert re.match(r"51 instructions for 2 tasks, memory image \d+ bytes \(\d+ of weights\), "
                    r"hardware 'tiny', bus 128 bits\n", out), out
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert main(["hw", "disassemble", str(folder)]) == 0
    listing = capsys.readouterr().out
    lst = (folder / "program.lst").read_text()
    assert listing.endswith(lst) and listing.startswith("# model 'tiny' on hardware 'tiny': "
                                                        "51 instructions, tasks 0 semseg, 1 depth")
    assert len(lst.splitlines()) == len(read_program(folder).instructions) == 51
    # One line per instruction: unit, shape, addresses, and the golden tensor it produces.
    assert re.search(r"^ +4  LINEAR +linear +tokens=65 in_features=64 out_features=192 .* "
                     r"x=blocks\.0\.norm1\.out@0x[0-9a-f]+ .*-> blocks\.0\.attn\.qkv\.out@0x",
                     lst, re.M), lst
    assert re.search(r"^ +\d+  TASK_LINEAR +linear +tokens=64 in_features=64 max_out=256 tasks=2 "
                     r".*table=heads\.table@0x[0-9a-f]+ x=norm\.out\+64@0x.* -> output@0x", lst,
                     re.M), lst
    assert main(["hw", "compile", "--quantized", str(quantized), "--bus-bits", "64",
                 "-o", str(tmp_path / "narrow")]) == 0
    narrow = read_program(tmp_path / "narrow")
    assert narrow.layout.bus_bits == narrow.hw.bus_width == 64
    assert read_program(folder).layout.bus_bits == DEFAULT_HW["tiny"].bus_width == 128
    capsys.readouterr()
    assert main(["hw", "compile", "--quantized", str(quantized), "--onchip", "32768",
                 "-o", str(tmp_path / "onchip")]) == 0
    assert re.search(r"^on chip: \d+ tensors in a \d+-byte window \(peak live \d+ bytes; "
                     r"\d+ one after the other\)$", capsys.readouterr().out, re.M)
    onchip = read_program(tmp_path / "onchip")
    assert onchip.hw.onchip_bytes == 32768 and onchip.layout.onchip_regions()


def test_bad_inputs(quantized, too_many_tokens, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _error(capsys, ["hw", "compile", "--quantized", str(tmp_path / "none.npz"), "-o",
                    str(tmp_path / "out")], r"Quantized model \S+none\.npz does not exist")
    _error(capsys, ["hw", "compile", "--quantized", str(quantized), "-o", str(a_file)],
           r"The program folder \S+file is a file, not a folder")
    _error(capsys, ["hw", "compile", "--quantized", str(quantized), "--hw", "nope", "-o",
                    str(tmp_path / "out")], r"Unknown config 'nope'; known configs are \[.*\]")
    _error(capsys, ["hw", "compile", "--quantized", str(quantized), "--bus-bits", "100", "-o",
                    str(tmp_path / "out")],
           r"argument --bus-bits: invalid choice: 100 .*\(see: moevit hw compile --help\)")
    _error(capsys, ["hw", "compile", "--quantized", str(quantized), "--bus-bits", "512", "-o",
                    str(tmp_path / "out")],
           r"The attention engine's 1 head lane\(s\) of 16 bytes are not whole 512-bit bus "
           r"words \(64 bytes\) for model 'tiny'; every request of the engine is whole bus words")
    _error(capsys, ["hw", "compile", "--quantized", str(quantized), "--onchip", "8", "-o",
                    str(tmp_path / "out")],
           r"On-chip activation memory must be a non-negative multiple of the 16-byte bus "
           r"word, not 8 bytes$")
    _error(capsys, ["hw", "compile", "--quantized", str(a_file), "-o", str(tmp_path / "out")],
           r"Quantized model \S+file is corrupt or truncated: .*")
    _error(capsys, ["hw", "compile", "--quantized", str(too_many_tokens), "--hw", "tiny", "-o",
                    str(tmp_path / "out")],
           r"Layer patch_embed\.proj does not fit hardware 'tiny': Linear descriptor of 144 "
           r"tokens exceeds the 128-token buffer of hardware 'tiny'")
    assert not (tmp_path / "out").exists()  # nothing written by a command that failed
    _error(capsys, ["hw", "disassemble", str(tmp_path / "out")],
           r"Program folder \S+out does not exist")
    folder = tmp_path / "program"
    assert main(["hw", "compile", "--quantized", str(quantized), "-o", str(folder)]) == 0
    capsys.readouterr()
    data = bytearray((folder / "weights.bin").read_bytes())
    data[0] ^= 0xFF
    (folder / "weights.bin").write_bytes(bytes(data))
    _error(capsys, ["hw", "disassemble", str(folder)],
           r"\S+weights\.bin does not match layout\.json \(SHA-256 differs\): changed, damaged, "
           r"or from another compilation")

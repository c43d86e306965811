"""The register map as data: its rules, its JSON and its C header (compiled with ``cc``)."""

import json
import subprocess

import pytest

from moevit.errors import ConfigError
from moevit.hw.program import regmap as rm
from moevit.hw.program.regmap import REGMAP, Field, Register, RegisterMap


def _rw(name, offset, bits=32):
    return Register(name, offset, bits, (Field(name, 0, bits, "rw", "host"),))


def test_vitis_block_registers_and_arguments():
    """The ap_ctrl_hs layout of UG1393 / UG1399, and the arguments from 0x10."""
    assert [(r.name, r.offset) for r in REGMAP.registers[:4]] == [
        ("ap_ctrl", 0x00), ("gie", 0x04), ("ier", 0x08), ("isr", 0x0C)]
    ctrl = REGMAP["ap_ctrl"]
    assert {f.name: (f.bit, f.access) for f in ctrl.fields} == {
        "ap_start": (0, "coh"), "ap_done": (1, "cor"), "ap_idle": (2, "ro"),
        "ap_ready": (3, "cor"), "auto_restart": (7, "rw"), "interrupt": (9, "ro")}
    assert REGMAP["gie"].field("enable").bit == 0
    assert [(f.name, f.bit) for f in REGMAP["ier"].fields] == [("done", 0), ("ready", 1)]
    assert [(f.name, f.bit, f.access) for f in REGMAP["isr"].fields] == [
        ("done", 0, "tow"), ("ready", 1, "tow")]
    args = REGMAP.arguments
    assert [a.name for a in args] == ["program", "weights", "input", "output", "scratch",
                                      "task", "images"]
    assert args[0].offset == 0x10 and min(a.offset for a in args) == 0x10
    assert all(a.bits == 64 for a in args[:5]) and all(a.bits == 32 for a in args[5:])
    assert {f"busy_{u}" for u in REGMAP.units} <= {r.name for r in REGMAP}
    assert REGMAP["cycles"].bits == 64


def test_every_register_once_aligned_without_overlap():
    names = [r.name for r in REGMAP]
    assert len(names) == len(set(names))
    words = [r.offset // 4 + k for r in REGMAP for k in range(r.words)]
    assert len(words) == len(set(words))
    for r in REGMAP:
        assert r.offset % (r.bits // 8) == 0, r.name
        assert r.offset + r.bits // 8 <= 1 << REGMAP.address_width
        used = 0
        for f in r.fields:
            assert f.mask & used == 0 and f.mask >> r.bits == 0, (r.name, f.name)
            used |= f.mask


def test_json_round_trip(tmp_path):
    json_path, header = rm.write(tmp_path, REGMAP)
    data = json.loads(json_path.read_text())
    assert data["version"] == 1 and data["interface"] == "s_axi_control"
    assert [r["name"] for r in data["registers"]] == [r.name for r in REGMAP]
    assert rm.load(json_path).to_dict() == REGMAP.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moevit_control.h", "moevit_control.json"]


def test_c_header_compiles_and_equals_the_json(tmp_path):
    json_path, header = rm.write(tmp_path, REGMAP)
    data = json.loads(json_path.read_text())
    prints = []
    for r in data["registers"]:
        name = "MOEVIT_CONTROL_" + r["name"].upper()
        prints.append(f'printf("{r["name"]} %d %d\\n", {name}, {name}_BITS);')
        if len(r["fields"]) > 1 or r["fields"][0]["width"] != r["bits"]:
            for f in r["fields"]:
                fname = f"{name}_{f['name'].upper()}"
                prints.append(f'printf("{r["name"]}.{f["name"]} %d %u\\n", {fname}_SHIFT, '
                              f'{fname}_MASK);')
    for err in data["error_codes"]:
        prints.append(f'printf("error.{err} %d\\n", MOEVIT_CONTROL_ERROR_{err.upper()});')
    source = tmp_path / "check.c"
    source.write_text('#include <stdio.h>\n#include "moevit_control.h"\n'
                      '#include "moevit_control.h"\n'  # the include guard
                      "int main(void) {\n" + "\n".join(prints) + "\nreturn 0;\n}\n")
    binary = tmp_path / "check"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    "-I", str(tmp_path), str(source), "-o", str(binary)],
                   check=True, capture_output=True)
    got = subprocess.run([str(binary)], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    expected = []
    for r in data["registers"]:
        expected.append(f"{r['name']} {r['offset']} {r['bits']}")
        if len(r["fields"]) > 1 or r["fields"][0]["width"] != r["bits"]:
            expected += [f"{r['name']}.{f['name']} {f['bit']} {((1 << f['width']) - 1) << f['bit']}"
                         for f in r["fields"]]
    expected += [f"error.{name} {e['code']}" for name, e in data["error_codes"].items()]
    assert got[:-1] == expected


@pytest.mark.parametrize("registers, message", [
    ([_rw("a", 0x10), _rw("a", 0x14)], r"^Register name 'a' is not a new lower-case identifier$"),
    ([_rw("a", 0x14, 64)], r"^Register a at 0x14 is not aligned to its 8 bytes$"),
    ([_rw("a", 0x10, 64), _rw("b", 0x14)], r"^Register b at 0x14 overlaps register a$"),
    ([_rw("a", 0x10, 16)], r"^Register a must have 32 or 64 bits, not 16$"),
    ([_rw("a", 0x1000)], r"^Register a at 0x1000 lies beyond the 12-bit address range$"),
    ([Register("a", 0, 32, (Field("x", 30, 4, "rw", "host"),))],
     r"^Field a\.x: bits 30\.\.33 do not fit in 32 bits$"),
    ([Register("a", 0, 32, (Field("x", 0, 4, "rw", "host"), Field("y", 3, 1, "rw", "host")))],
     r"^Field a\.y overlaps another field of a$"),
    ([Register("a", 0, 32, (Field("x", 0, 1, "wo", "host"),))],
     r"^Field a\.x: access must be one of \('rw', 'ro', 'coh', 'cor', 'tow'\), not 'wo'$"),
    ([Register("a", 0, 32, (Field("x", 0, 1, "ro", "host"),))],
     r"^Field a\.x: only rw fields are driven by the host, not ro from host$"),
    ([Register("a", 0, 32, (Field("x", 0, 2, "cor", "control"),))],
     r"^Field a\.x: a cor field is one bit driven by the control block$"),
    ([Register("a", 0, 32, ())], r"^Register a has no field$"),
])
def test_bad_maps(registers, message):
    with pytest.raises(ConfigError, match=message):
        RegisterMap(registers)


def test_address_width_beyond_xrt():
    with pytest.raises(ConfigError, match=r"^Control address width must be 4\.\.16 bits "
                                          r"\(XRT's 64 KiB\), not 17$"):
        RegisterMap([_rw("a", 0x10)], address_width=17)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "map.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match=r"^Cannot read the register map .*map\.json: "):
        rm.load(path)
    path.write_text(json.dumps({"format": "moevit-regmap", "version": 2}))
    with pytest.raises(ConfigError, match=r"^Not a moevit register map of version 1 "
                                          r"\(format 'moevit-regmap', version 2\)$"):
        rm.load(path)
    data = REGMAP.to_dict()
    del data["registers"][0]["offset"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"^Register map is missing or mistyping 'offset'$"):
        rm.load(path)

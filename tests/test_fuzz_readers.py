"""Fuzzing every file reader through the command that reads it, with hypothesis.

Each reader gets a real file of ``tiny`` and corruptions of it: byte-level (bit flips,
random bytes written over a span, truncation, bytes appended) and, for the structured
files, edits of the content behind the checksums (a JSON leaf replaced by a random value,
a key deleted or added; an array or tensor of another shape or dtype; the file then
re-sealed so the reader's deeper checks are reached):

============================  ===============================================
file                          read by
============================  ===============================================
quantized model (.npz)        ``moevit hw compile --quantized``
program (program.bin)         ``moevit hw disassemble`` (tests/test_fuzz_program.py)
weights (weights.bin)         ``moevit hw disassemble`` (SHA-256 re-sealed)
program layout (layout.json)  ``moevit hw disassemble``
HwConfig JSON (layout's hw)   ``moevit hw disassemble``
checkpoint (.pt)              ``moevit export m3vit``
ONNX graph (.onnx)            ``moevit onnx-stats`` (slow only: the export takes 30 s)
board JSON                    ``moevit hw boards FILE.json``
register map JSON             :func:`moevit.hw.program.regmap.load` (no command reads it yet)
============================  ===============================================

The command exits 0 (the file is still valid), 1 (``onnx-stats``: the graph's figures
differ from the model's) or 2 with one line ``moevit: error: ...``; never a traceback.
Fast: a few cases per reader; slow: hundreds. Counts go to ``build/reliability/``.
"""

import hashlib
import io
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moevit.cli import main
from moevit.errors import ConfigError
from moevit.sim.reliability import hypothesis_settings, record, tiny_program, tiny_quantized_model

FAST, SLOW = 12, 300
TALLY = {}


def _examples(slow):
    return SLOW if slow else FAST


# Corruptions ------------------------------------------------------------------------------
def byte_mutations(size):
    """Lists of byte-level corruptions of a ``size``-byte file."""
    at = st.integers(0, max(size - 1, 0))
    one = st.one_of(st.tuples(st.just("flip"), at, st.integers(0, 7)),
                    st.tuples(st.just("over"), at, st.binary(min_size=1, max_size=32)),
                    st.tuples(st.just("truncate"), at),
                    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)))
    return st.lists(one, min_size=1, max_size=3)


def mutate_bytes(data, mutations):
    data = bytearray(data)
    for kind, *args in mutations:
        if kind == "flip" and args[0] < len(data):
            data[args[0]] ^= 1 << args[1]
        elif kind == "over" and args[0] < len(data):
            data[args[0]:args[0] + len(args[1])] = args[1]
        elif kind == "truncate":
            del data[args[0]:]
        elif kind == "append":
            data += args[0]
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**66, 2**66) | st.floats()
    | st.text(max_size=6) | st.sampled_from(["", "tiny", "0x10", "-1", "NaN"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=2),
    max_leaves=4)


def _paths(doc, path=()):
    """Every path to a node of a JSON document (the root excluded)."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) \
        if isinstance(doc, list) else ()
    for key, value in items:
        yield path + (key,)
        yield from _paths(value, path + (key,))


def json_mutations(doc):
    """Lists of edits of a JSON document: ``(path, action, value)``."""
    paths = sorted(_paths(doc), key=repr)
    one = st.tuples(st.sampled_from(paths), st.sampled_from(["set", "delete", "add"]),
                    JSON_VALUES)
    return st.lists(one, min_size=1, max_size=3)


def mutate_json(doc, mutations):
    doc = json.loads(json.dumps(doc))
    for path, action, value in mutations:
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            if action == "set":
                parent[key] = value
            elif action == "delete":
                del parent[key]
            elif isinstance(parent, dict):
                parent[f"{key}_extra"] = value
            elif isinstance(parent, list):
                parent.append(value)
        except (KeyError, IndexError, TypeError):
            pass   # an earlier edit removed the path, or set a scalar in its place
    return doc


def cli(capsys, argv, allowed=(0, 2)):
    """Run the command in-process: its exit status, checked, and the counts."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code in allowed, f"exit {code}: {err[-2000:]}"
    if code == 2:
        assert err.startswith("moevit: error: ") and err.count("\n") == 1, err
    return code


def fuzz_suite(name, slow, strategy, body):
    """Run ``body`` over ``max_examples`` draws of ``strategy`` and record the count."""
    codes = {}

    @hypothesis_settings(max_examples=_examples(slow))
    @given(strategy)
    def fuzz(mutation):
        code = body(mutation)
        codes[code] = codes.get(code, 0) + 1

    with record(f"fuzz-{name}{'-slow' if slow else ''}", "fuzz", f"reader: {name}") as counts:
        fuzz()
        counts.update(cases=sum(codes.values()),
                      detail=", ".join(f"{n} exit {c}" for c, n in sorted(codes.items())))
    assert codes.get(2, 0) > 0, f"no corruption of the {name} was rejected: {codes}"


SPEEDS = [False, pytest.param(True, marks=pytest.mark.slow)]


# The files --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real files of tiny, written once: quantized model, program folder, checkpoint and a
    board (the ONNX graph: :func:`onnx_file`)."""
    import torch

    from moevit.hw.boards import _board_files
    from moevit.hw.program.program import write_program
    from moevit.model.checkpoint import save_checkpoint
    from moevit.model.config import get_config
    from moevit.model.integer.quantize import save_quantized
    from moevit.model.moevit import MoEViT

    folder = tmp_path_factory.mktemp("readers")
    save_quantized(folder / "tiny.npz", tiny_quantized_model()[0])
    write_program(tiny_program()[0], folder / "program")
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny.pt", MoEViT(get_config("tiny")))
    (folder / "board.json").write_text(_board_files()["zcu102"].read_text())
    return folder


def _work(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("slow", SPEEDS)
def test_quantized_model_bytes(files, slow, tmp_path, capsys):
    data = (files / "tiny.npz").read_bytes()
    fuzz_suite("quantized-model", slow, byte_mutations(len(data)), lambda m: cli(capsys, [
        "hw", "compile", "--quantized", str(_work(tmp_path, "q.npz", mutate_bytes(data, m))),
        "-o", str(tmp_path / "out")]))


@pytest.mark.parametrize("slow", SPEEDS)
def test_quantized_model_content(files, slow, tmp_path, capsys):
    """The header's JSON edited and arrays reshaped or retyped, the checksum re-sealed."""
    from moevit.model.integer import quantize

    with np.load(files / "tiny.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays[quantize.HEADER].tobytes().decode())
    names = sorted(k for k in arrays if k != quantize.HEADER)
    edit = st.tuples(json_mutations(header),
                     st.lists(st.tuples(st.sampled_from(names),
                                        st.sampled_from(["shape", "dtype", "drop", "huge"])),
                              max_size=2))

    def body(mutation):
        head, changes = mutation
        out = {k: v for k, v in arrays.items() if k != quantize.HEADER}
        for name, how in changes:
            if name not in out:
                continue
            if how == "shape":
                out[name] = out[name].reshape(-1)[:max(out[name].size - 1, 0)]
            elif how == "dtype":
                out[name] = out[name].astype(np.float32)
            elif how == "huge":
                out[name] = np.full_like(out[name], np.iinfo(out[name].dtype).max
                                         if out[name].dtype.kind in "iu" else 1e38)
            else:
                del out[name]
        head = mutate_json(header, head)
        if isinstance(head, dict) and "checksum" in head:
            head["checksum"] = quantize._checksum(out)   # re-sealed: the checks behind it
        out[quantize.HEADER] = np.frombuffer(json.dumps(head).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **out)
        path = _work(tmp_path, "q.npz", buffer.getvalue())
        return cli(capsys, ["hw", "compile", "--quantized", str(path), "-o", str(tmp_path / "o")])

    fuzz_suite("quantized-model-content", slow, edit, body)


def _program_folder(files, tmp_path):
    import shutil

    folder = tmp_path / "program"
    if not folder.exists():
        shutil.copytree(files / "program", folder)
    return folder


@pytest.mark.parametrize("slow", SPEEDS)
def test_weights_bytes(files, slow, tmp_path, capsys):
    """weights.bin corrupted, its SHA-256 in layout.json re-sealed or not."""
    folder = _program_folder(files, tmp_path)
    data = (files / "program" / "weights.bin").read_bytes()
    meta = json.loads((files / "program" / "layout.json").read_text())

    def body(mutation):
        mutations, reseal = mutation
        mutated = mutate_bytes(data, mutations)
        (folder / "weights.bin").write_bytes(mutated)
        sums = dict(meta["sha256"], **{"weights.bin": hashlib.sha256(mutated).hexdigest()}) \
            if reseal else meta["sha256"]
        (folder / "layout.json").write_text(json.dumps(dict(meta, sha256=sums)))
        return cli(capsys, ["hw", "disassemble", str(folder)])

    fuzz_suite("weights", slow, st.tuples(byte_mutations(len(data)), st.booleans()), body)


@pytest.mark.parametrize("part", ["layout", "hw"])
@pytest.mark.parametrize("slow", SPEEDS)
def test_layout_json(files, slow, part, tmp_path, capsys):
    """layout.json (``layout``: any field; ``hw``: the HwConfig it holds) edited."""
    folder = _program_folder(files, tmp_path)
    meta = json.loads((files / "program" / "layout.json").read_text())
    target = meta["hw"] if part == "hw" else meta

    def body(mutations):
        edited = mutate_json(target, mutations)
        doc = dict(meta, hw=edited) if part == "hw" else edited
        (folder / "layout.json").write_text(json.dumps(doc))
        return cli(capsys, ["hw", "disassemble", str(folder)])

    fuzz_suite("hwconfig-json" if part == "hw" else "layout-json", slow,
               json_mutations(target), body)


@pytest.mark.parametrize("slow", SPEEDS)
def test_checkpoint_bytes(files, slow, tmp_path, capsys):
    data = (files / "tiny.pt").read_bytes()
    fuzz_suite("checkpoint", slow, byte_mutations(len(data)), lambda m: cli(capsys, [
        "export", "m3vit", str(_work(tmp_path, "c.pt", mutate_bytes(data, m))),
        "-o", str(tmp_path / "m3vit.pth")]))


@pytest.mark.parametrize("slow", SPEEDS)
def test_checkpoint_content(files, slow, tmp_path, capsys):
    """The checkpoint's config edited, a tensor reshaped, retyped, made NaN or dropped."""
    import torch

    payload = torch.load(files / "tiny.pt", weights_only=True)
    names = sorted(payload["state_dict"])
    edit = st.tuples(json_mutations(payload["config"]),
                     st.lists(st.tuples(st.sampled_from(names),
                                        st.sampled_from(["shape", "dtype", "nan", "drop"])),
                              max_size=2))

    def body(mutation):
        config, changes = mutation
        state = dict(payload["state_dict"])
        for name, how in changes:
            if name not in state:
                continue
            if how == "shape":
                state[name] = state[name].reshape(-1)[:max(state[name].numel() - 1, 0)]
            elif how == "dtype":
                state[name] = state[name].to(torch.int32)
            elif how == "nan" and state[name].is_floating_point() and state[name].numel():
                state[name] = state[name].clone().reshape(-1)
                state[name][0] = float("nan")
            else:
                del state[name]
        path = tmp_path / "c.pt"
        torch.save(dict(payload, config=mutate_json(payload["config"], config),
                        state_dict=state), path)
        return cli(capsys, ["export", "m3vit", str(path), "-o", str(tmp_path / "m3vit.pth")])

    fuzz_suite("checkpoint-content", slow, edit, body)


@pytest.mark.slow
def test_onnx_bytes(tmp_path, capsys):
    """Slow only: exporting the graph takes half a minute."""
    assert main(["export-onnx", "--config", "tiny", "--task", "0", "-o",
                 str(tmp_path / "tiny.onnx"), "--quiet"]) == 0
    data = (tmp_path / "tiny.onnx").read_bytes()
    fuzz_suite("onnx", True, byte_mutations(len(data)), lambda m: cli(capsys, [
        "onnx-stats", str(_work(tmp_path, "g.onnx", mutate_bytes(data, m)))], (0, 1, 2)))


@pytest.mark.parametrize("slow", SPEEDS)
def test_board_json(files, slow, tmp_path, capsys):
    text = (files / "board.json").read_text()
    doc = json.loads(text)
    data = text.encode()
    either = st.one_of(st.tuples(st.just("json"), json_mutations(doc)),
                       st.tuples(st.just("bytes"), byte_mutations(len(data))))

    def body(mutation):
        kind, mutations = mutation
        raw = json.dumps(mutate_json(doc, mutations)).encode() if kind == "json" \
            else mutate_bytes(data, mutations)
        return cli(capsys, ["hw", "boards", str(_work(tmp_path, "b.json", raw))])

    fuzz_suite("board-json", slow, either, body)


@pytest.mark.parametrize("slow", SPEEDS)
def test_register_map_json(slow, tmp_path):
    """No command reads a register map yet (the host driver will): its reader, which
    raises ConfigError for the command line to print, or returns a map."""
    from moevit.hw.program import regmap

    json_path, _ = regmap.write(tmp_path)
    text = json_path.read_text()
    doc = json.loads(text)
    either = st.one_of(st.tuples(st.just("json"), json_mutations(doc)),
                       st.tuples(st.just("bytes"), byte_mutations(len(text))))

    def body(mutation):
        kind, mutations = mutation
        raw = json.dumps(mutate_json(doc, mutations)).encode() if kind == "json" \
            else mutate_bytes(text.encode(), mutations)
        target = _work(tmp_path, "r.json", raw)
        try:
            regmap.load(target)
        except ConfigError as error:
            assert str(error) and "\n" not in str(error), repr(str(error))
            return 2
        return 0

    fuzz_suite("register-map-json", slow, either, body)

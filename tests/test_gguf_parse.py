"""Our GGUF header parser (checkpoints/gguf_parse.py) against the gguf package's GGUFReader, the
reference: the same metadata values, tensor infos and tensor data views on every test GGUF,
a file with every value type, and the real SmolLM2."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures_gguf import smollm2_path  # noqa: F401
from helpers_gguf import DATA
from lmstudio_lite.checkpoints.gguf_parse import parse

gguf = pytest.importorskip("gguf")


def assert_same_as_gguf_reader(path) -> None:
    ours, ref = parse(path), gguf.GGUFReader(path)
    want = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.fields) == list(want)  # same keys, same order
    for key, value in want.items():
        assert ours.fields[key] == value and type(ours.fields[key]) is type(value), key
    assert ours.version == ref.fields["GGUF.version"].contents() and ours.data_offset == ref.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for t, r in zip(ours.tensors, ref.tensors):
        assert (t.shape, t.type, t.offset, t.n_elements) == \
            (tuple(int(n) for n in r.shape), int(r.tensor_type), r.data_offset, int(r.n_elements)), t.name
        a = ours.array(t)
        assert a.dtype == r.data.dtype and a.shape == r.data.shape and np.array_equal(a, r.data), t.name
    skipped = parse(path, arrays=False)  # the model listing's read: the same, arrays left out
    assert skipped.tensors == ours.tensors
    assert skipped.fields == {k: None if isinstance(v, list) else v for k, v in ours.fields.items()}


@pytest.mark.parametrize("name", ["stories260K-f32.gguf", "llama3-rope-tiny.f32.gguf", "bpe-small.gguf"])
def test_test_files_read_as_gguf_reader_reads_them(name):
    assert_same_as_gguf_reader(DATA / name)


def test_every_value_type_alignment_and_tensor_type(tmp_path):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFValueType as V
    from gguf.quants import quantize

    w = gguf.GGUFWriter(str(tmp_path / "all.gguf"), "llama")
    w.add_custom_alignment(64)
    for i, (kind, value) in enumerate([(V.UINT8, 200), (V.INT8, -5), (V.UINT16, 60000), (V.INT16, -300),
                                       (V.UINT32, 2**31), (V.INT32, -7), (V.FLOAT32, 0.1), (V.BOOL, True),
                                       (V.STRING, "héllo ▁"), (V.UINT64, 2**40), (V.INT64, -2**40),
                                       (V.FLOAT64, 1e-300)]):
        w.add_key_value(f"t.{i}", value, kind)
    w.add_key_value("t.floats", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("t.bools", [True, False], V.ARRAY, sub_type=V.BOOL)
    rng = np.random.default_rng(0)
    w.add_tensor("f16", rng.random((3, 5)).astype(np.float16))
    w.add_tensor("i32", np.arange(7, dtype=np.int32))
    w.add_tensor("q", quantize(rng.random((4, 64), dtype=np.float32), Q.Q4_1), raw_dtype=Q.Q4_1)
    w.add_tensor("bf16", quantize(rng.random((2, 32), dtype=np.float32), Q.BF16), raw_dtype=Q.BF16)
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    assert_same_as_gguf_reader(tmp_path / "all.gguf")


def test_smollm2_reads_as_gguf_reader_reads_it(smollm2_path):  # noqa: F811
    assert_same_as_gguf_reader(smollm2_path)


@pytest.mark.parametrize("keep", [3, 20, 1000, 40000])
def test_a_cut_header_is_a_value_error(keep, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes((DATA / "bpe-small.gguf").read_bytes()[:keep])
    with pytest.raises(ValueError):
        parse(path)

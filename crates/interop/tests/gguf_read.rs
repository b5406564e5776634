//! The GGUF reader on files written here field by field: every metadata value type, versions 2
//! and 3, a custom alignment, tensors of several ggml types; then every kind of bad input (each
//! a clear error naming the file and the field), truncation at every length, and a proptest of
//! byte flips and truncations that must never panic. The round trip of our own export is in
//! tests/gguf.rs.

use std::path::Path;

use proptest::prelude::*;
use truthgpt_interop::gguf::value::{Array, Value, ValueType};
use truthgpt_interop::gguf::Gguf;
use truthgpt_interop::InteropError;
use truthgpt_quant::{dequantize, quantize_row, GgmlType};

const PATH: &str = "test.gguf";

fn string(s: &[u8]) -> Vec<u8> {
    [&(s.len() as u64).to_le_bytes()[..], s].concat()
}

fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    [string(key.as_bytes()), ty.to_le_bytes().to_vec(), payload.to_vec()].concat()
}

fn array(elem: u32, n: u64, items: &[u8]) -> Vec<u8> {
    [&elem.to_le_bytes()[..], &n.to_le_bytes(), items].concat()
}

struct Tensor {
    name: &'static str,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    /// Replaces the offset the builder computes.
    offset: Option<u64>,
}

fn tensor(name: &'static str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Tensor {
    Tensor { name, dims: dims.to_vec(), ty: ty.id(), data, offset: None }
}

/// A GGUF file's parts; `bytes` lays them out as the spec says.
struct File {
    version: u32,
    kvs: Vec<Vec<u8>>,
    tensors: Vec<Tensor>,
    alignment: u64,
    /// Replace the counts written in the header.
    n_kv: Option<u64>,
    n_tensors: Option<u64>,
}

impl File {
    fn new(kvs: Vec<Vec<u8>>, tensors: Vec<Tensor>) -> File {
        File { version: 3, kvs, tensors, alignment: 32, n_kv: None, n_tensors: None }
    }

    /// The file; no padding follows the last tensor, so any truncation cuts into something.
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.n_tensors.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        self.kvs.iter().for_each(|kv| b.extend(kv));
        let mut offset = 0u64;
        for t in &self.tensors {
            b.extend(string(t.name.as_bytes()));
            b.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(t.ty.to_le_bytes());
            b.extend(t.offset.unwrap_or(offset).to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(self.alignment);
        }
        for t in &self.tensors {
            b.resize((b.len() as u64).next_multiple_of(self.alignment) as usize, 0);
            b.extend(&t.data);
        }
        b
    }
}

fn q(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    quantize_row(ty, x, &mut out).unwrap();
    out
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37).sin()).collect()
}

/// One of each metadata value type (nested and empty arrays included), alignment 64, and
/// tensors of five types, a 0-d one among them.
fn kitchen_sink() -> File {
    let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let nested = [array(3, 2, &[1, 0, 0xfe, 0xff]), array(3, 0, &[])].concat();
    let kvs = vec![
        kv("general.alignment", 4, &64u32.to_le_bytes()),
        kv("k.u8", 0, &[7]),
        kv("k.i8", 1, &[0xfd]),
        kv("k.u16", 2, &65535u16.to_le_bytes()),
        kv("k.i16", 3, &(-2i16).to_le_bytes()),
        kv("k.i32", 5, &(-5i32).to_le_bytes()),
        kv("k.f32", 6, &1.5f32.to_le_bytes()),
        kv("k.bool", 7, &[1]),
        kv("k.string", 8, &string("héllo".as_bytes())),
        kv("k.u64", 10, &(1u64 << 40).to_le_bytes()),
        kv("k.i64", 11, &(-(1i64 << 40)).to_le_bytes()),
        kv("k.f64", 12, &0.25f64.to_le_bytes()),
        kv("k.strings", 9, &array(8, 2, &[string(b"a"), string(b"bc")].concat())),
        kv("k.f32s", 9, &array(6, 2, &f32s)),
        kv("k.nested", 9, &array(9, 2, &nested)),
        kv("k.empty", 9, &array(12, 0, &[])),
    ];
    let f32_data: Vec<u8> = ramp(6).iter().flat_map(|x| x.to_le_bytes()).collect();
    let tensors = vec![
        tensor("a", &[3, 2], GgmlType::F32, f32_data),
        tensor("b", &[64], GgmlType::Q8_0, q(GgmlType::Q8_0, &ramp(64))),
        tensor("c", &[256, 2], GgmlType::Q4_K, q(GgmlType::Q4_K, &ramp(512))),
        tensor("d", &[5], GgmlType::BF16, vec![0x80, 0x3f, 0, 0xc0, 0x49, 0x40, 0, 0, 1, 0x80]),
        tensor("scalar", &[], GgmlType::F32, 2.5f32.to_le_bytes().to_vec()),
    ];
    File { alignment: 64, ..File::new(kvs, tensors) }
}

fn parse(bytes: &[u8]) -> Result<Gguf<Vec<u8>>, InteropError> {
    Gguf::from_bytes(Path::new(PATH), bytes.to_vec())
}

/// The error `bytes` must give; it names the file and contains `field`.
#[track_caller]
fn refused(bytes: &[u8], field: &str) -> String {
    let err = match parse(bytes) {
        Ok(_) => panic!("accepted a file that should fail on {field}"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with(&format!("{PATH}: ")), "no file name in: {err}");
    assert!(err.contains(field), "{err:?} does not mention {field:?}");
    err
}

#[test]
fn every_value_type_and_tensor_reads_back_in_v2_and_v3() {
    for version in [2, 3] {
        let file = File { version, ..kitchen_sink() };
        let g = parse(&file.bytes()).unwrap();
        assert_eq!((g.version(), g.alignment()), (version, 64));
        let get = |k: &str| g.get(k).unwrap_or_else(|| panic!("{k} missing")).clone();
        assert_eq!(get("k.u8"), Value::U8(7));
        assert_eq!(get("k.i8"), Value::I8(-3));
        assert_eq!(get("k.u16"), Value::U16(65535));
        assert_eq!(get("k.i16"), Value::I16(-2));
        assert_eq!(get("general.alignment"), Value::U32(64));
        assert_eq!(get("k.i32"), Value::I32(-5));
        assert_eq!(get("k.f32"), Value::F32(1.5));
        assert_eq!(get("k.bool"), Value::Bool(true));
        assert_eq!(get("k.string").as_str(), Some("héllo"));
        assert_eq!(get("k.u64").as_u64(), Some(1 << 40));
        assert_eq!(get("k.i64"), Value::I64(-(1 << 40)));
        assert_eq!(get("k.f64"), Value::F64(0.25));
        assert_eq!(get("k.strings"), Value::Array(Array::String(vec!["a".into(), "bc".into()])));
        assert_eq!(get("k.f32s"), Value::Array(Array::F32(vec![1.5, -2.0])));
        let nested = Array::Array(vec![Array::I16(vec![1, -2]), Array::I16(vec![])]);
        assert_eq!(get("k.nested"), Value::Array(nested));
        assert_eq!(get("k.empty").as_array().map(|a| (a.element_type(), a.len())), Some((ValueType::F64, 0)));
        assert_eq!(g.metadata().len(), file.kvs.len());
        assert_eq!(g.metadata()[1].0, "k.u8", "metadata keeps file order");

        assert_eq!(g.tensors().len(), file.tensors.len());
        for (t, want) in g.tensors().iter().zip(&file.tensors) {
            assert_eq!((t.name.as_str(), &t.dims, t.ty.id()), (want.name, &want.dims, want.ty));
            assert_eq!(t.offset % 64, 0, "{}: aligned", t.name);
            assert_eq!(g.tensor_bytes(t), want.data, "{}", t.name);
            let values = g.dequantize(t.name.as_str()).unwrap();
            assert_eq!(values, dequantize(t.ty, &want.data, t.elements() as usize).unwrap(), "{}", t.name);
        }
        assert_eq!(g.tensor("c").unwrap().shape(), [2, 256]);
        assert_eq!(g.dequantize("d").unwrap()[..3], [1.0, -2.0, 3.140625]);
        assert_eq!(g.dequantize("scalar").unwrap(), [2.5]);
    }
}

#[test]
fn a_file_that_is_not_gguf_v2_or_v3_is_refused_by_name() {
    let good = kitchen_sink().bytes();
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGUX");
    refused(&bad, "not a GGUF file");
    for (version, says) in [(1u32, "version 1"), (0x0300_0000, "big-endian"), (4, "version 4")] {
        refused(&File { version, ..kitchen_sink() }.bytes(), says);
    }
    refused(&[], "magic");
}

#[test]
fn truncation_at_every_length_is_an_error() {
    let bytes = kitchen_sink().bytes();
    parse(&bytes).unwrap();
    for len in 0..bytes.len() {
        match parse(&bytes[..len]) {
            Ok(_) => panic!("a file cut to {len} of {} bytes was accepted", bytes.len()),
            Err(e) => assert!(e.to_string().starts_with(PATH), "{e}"),
        }
    }
}

#[test]
fn absurd_counts_and_lengths_fail_before_allocating() {
    let huge = 1u64 << 60;
    refused(&File { n_kv: Some(huge), ..kitchen_sink() }.bytes(), &format!("metadata count {huge}"));
    refused(&File { n_tensors: Some(huge), ..kitchen_sink() }.bytes(), &format!("tensor count {huge}"));
    let long_key = [&huge.to_le_bytes()[..], &[0; 16]].concat();
    refused(
        &File::new(vec![long_key], vec![]).bytes(),
        "metadata entry 0: key: string of 1152921504606846976 bytes",
    );
    let long_value = kv("k", 8, &huge.to_le_bytes());
    refused(&File::new(vec![long_value], vec![]).bytes(), "metadata entry 0 (`k`): string of");
    for elem in [0, 8, 9] {
        let long_array = kv("k", 9, &array(elem, huge, &[]));
        refused(&File::new(vec![long_array], vec![]).bytes(), "(`k`): array of 1152921504606846976");
    }
}

#[test]
fn bad_metadata_is_refused_naming_the_entry() {
    let one = |kv: Vec<u8>| File::new(vec![kv], vec![]).bytes();
    refused(&one(kv("k", 13, &[])), "metadata entry 0 (`k`): value type 13 is not a GGUF type");
    refused(&one(kv("k", 7, &[2])), "(`k`): bool byte is 2");
    refused(
        &one([string(b"\xff"), 0u32.to_le_bytes().to_vec(), vec![0]].concat()),
        "key: string is not UTF-8",
    );
    refused(&one(kv("k", 9, &array(13, 1, &[]))), "(`k`): array element value type 13");
    refused(&one(kv("k", 9, &array(7, 2, &[1, 3]))), "array element 1: bool byte is 3");
    let twice = File::new(vec![kv("k", 0, &[1]), kv("k", 0, &[2])], vec![]);
    refused(&twice.bytes(), "key `k` appears twice");
    // Five arrays deep is one too many; four is fine.
    let nest = |depth: usize| (1..depth).fold(array(0, 0, &[]), |inner, _| array(9, 1, &inner));
    parse(&one(kv("k", 9, &nest(4)))).unwrap();
    refused(&one(kv("k", 9, &nest(5))), "arrays nested more than 4 deep");
    for (value, says) in [
        (kv("general.alignment", 4, &0u32.to_le_bytes()), "general.alignment is 0, not a power of two"),
        (kv("general.alignment", 4, &48u32.to_le_bytes()), "general.alignment is 48"),
        (kv("general.alignment", 8, &string(b"32")), "general.alignment is string, not a u32"),
    ] {
        refused(&one(value), says);
    }
}

#[test]
fn bad_tensor_infos_are_refused_naming_the_tensor() {
    let with = |t: Tensor| File::new(vec![], vec![t]).bytes();
    let f32s = |n: usize| vec![0u8; 4 * n];
    refused(
        &with(Tensor { ty: 16, ..tensor("w", &[32], GgmlType::F32, vec![]) }),
        "`w`: ggml type id 16 is not one we read",
    );
    refused(&with(Tensor { ty: 99, ..tensor("w", &[32], GgmlType::F32, vec![]) }), "ggml type id 99");
    refused(
        &with(tensor("w", &[33], GgmlType::Q4_0, vec![0; 18])),
        "`w`: rows of 33 elements are not whole Q4_0 blocks",
    );
    refused(&with(tensor("w", &[1, 1, 1, 1, 1], GgmlType::F32, f32s(1))), "`w`: 5 dimensions");
    refused(
        &with(tensor("w", &[1 << 32, 1 << 32], GgmlType::F32, vec![])),
        "`w`: dimensions [4294967296, 4294967296] overflow",
    );
    refused(
        &with(tensor("w", &[1 << 40], GgmlType::F32, f32s(4))),
        "tensor `w`: 4398046511104 bytes at data offset 0 run past the end",
    );
    refused(
        &with(Tensor { offset: Some(64), ..tensor("w", &[4], GgmlType::F32, f32s(4)) }),
        "tensor `w`: 16 bytes at data offset 64",
    );
    refused(
        &with(Tensor { offset: Some(u64::MAX - 31), ..tensor("w", &[4], GgmlType::F32, f32s(4)) }),
        "run past the end",
    );
    refused(
        &with(Tensor { offset: Some(4), ..tensor("w", &[4], GgmlType::F32, f32s(4)) }),
        "data offset 4 is not a multiple of the alignment 32",
    );
    let pair =
        |second: Tensor| File::new(vec![], vec![tensor("w", &[16], GgmlType::F32, f32s(16)), second]).bytes();
    refused(
        &pair(Tensor { offset: Some(32), ..tensor("v", &[4], GgmlType::F32, f32s(4)) }),
        "tensors `w` and `v` overlap",
    );
    refused(&pair(tensor("w", &[4], GgmlType::F32, f32s(4))), "tensor info 1: tensor `w` appears twice");
}

#[test]
fn opening_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.gguf");
    let err = Gguf::open(&path).err().unwrap().to_string();
    assert!(err.contains("missing.gguf"), "{err}");
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, kitchen_sink().bytes()).unwrap();
    let g = Gguf::open(&path).unwrap();
    assert_eq!((g.path(), g.tensors().len()), (path.as_path(), 5));
}

/// Parses `bytes` and, if that succeeds, decodes every tensor: either may fail, neither may
/// panic (proptest reports a panic as a failure).
fn read_everything(bytes: &[u8]) {
    if let Ok(g) = parse(bytes) {
        for t in g.tensors() {
            let values = g.dequantize(&t.name).unwrap();
            assert_eq!(values.len() as u64, t.elements());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn flipped_and_truncated_files_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = kitchen_sink().bytes();
        for (at, mask) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        read_everything(&bytes);
    }

    #[test]
    fn random_bytes_after_valid_counts_never_panic(
        version in 2u32..=3,
        n_tensors in 0u64..4,
        n_kv in 0u64..4,
        tail in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        // Small counts, so that parsing goes past them into the random bytes.
        let bytes = [&b"GGUF"[..], &version.to_le_bytes(), &n_tensors.to_le_bytes(), &n_kv.to_le_bytes(), &tail].concat();
        read_everything(&bytes);
    }
}

use crate::GgmlType;

/// Errors of decoding or encoding ggml blocks. The caller (a file reader) adds the file and
/// tensor names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("ggml type id {0} is not one we read (we read {list})", list = GgmlType::names())]
    UnknownType(u32),
    #[error("{ty}: {elements} elements are not a whole number of {block}-element blocks")]
    PartialBlock { ty: GgmlType, elements: usize, block: usize },
    #[error("{ty}: {elements} elements take {want} bytes, got {got}")]
    Size { ty: GgmlType, elements: usize, want: usize, got: usize },
    #[error("{ty}: {elements} elements overflow the address space")]
    Overflow { ty: GgmlType, elements: u64 },
    #[error("cannot quantize to {0}: round-to-nearest is implemented for {list}", list = GgmlType::quantizable_names())]
    NoQuantizer(GgmlType),
    #[error("cannot quantize a non-finite value ({value}) at element {index}")]
    NonFinite { index: usize, value: f32 },
}

pub type Result<T, E = QuantError> = std::result::Result<T, E>;

//! Where a model's buffers live and its kernels run: `cpu` (the default) or `cuda[:N]`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA device of this ordinal.
    Cuda(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device {0:?}: expected `cpu`, `cuda` or `cuda:N`")]
pub struct DeviceParseError(String);

impl FromStr for Device {
    type Err = DeviceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| DeviceParseError(s.to_string())),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("CUDA:3", Device::Cuda(3)),
            (" gpu ", Device::Cuda(0)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device));
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
        }
        for bad in ["", "tpu", "cuda:", "cuda:-1", "cuda:x", "cuda0"] {
            let err = bad.parse::<Device>().unwrap_err().to_string();
            assert!(err.contains("expected `cpu`, `cuda` or `cuda:N`"), "{bad:?}: {err}");
        }
    }
}

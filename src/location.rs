//! Devices and `map_location`: where each storage goes, decided by torch.load's rules (spec §5)
//! before any tensor byte is read, with torch's error texts.
//!
//! 1. [`MapLocation`] turns a storage's saved tag into a target tag (or, for a callback, a
//!    [`Placement`]).
//! 2. [`restore_location`] applies torch's registry to that tag: `cpu` only when the tag is
//!    exactly `cpu`; `cuda`, `cuda:N`, `cuda0`… for CUDA; `meta` exactly; plus ptload's own
//!    `webgpu` (alias `wgpu`). Anything else is torch's "don't know how to restore" error.
//! 3. The caller checks that the chosen device exists ([`DeviceSupport`]).

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::torch::Dtype;

/// A place a storage can live.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory.
    Cpu,
    /// A CUDA device; `None` is torch's bare `cuda`: the current device.
    Cuda(Option<usize>),
    /// torch's meta device: shapes only, no data.
    Meta,
    /// A WebGPU device (ptload's own; torch has none).
    WebGpu,
    /// Another torch device type (`mps`, `xpu:0`, …), which ptload cannot place onto.
    Other {
        /// The device type, e.g. `xpu`.
        kind: String,
        /// Its index, if given.
        index: Option<usize>,
    },
}

/// Device types torch knows (for parsing device strings).
const TORCH_DEVICE_TYPES: [&str; 18] = [
    "cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve", "fpga",
    "maia", "xla", "lazy", "vulkan", "mps", "meta", "hpu",
];
const MORE_DEVICE_TYPES: [&str; 2] = ["mtia", "privateuseone"];

impl Device {
    /// Parses a torch device string (`cpu`, `cuda`, `cuda:1`, `meta`, `mps`, `xpu:0`) or ptload's
    /// `webgpu` / `wgpu`. Errors as torch's `torch.device()` does: `CPU` or `cuda0` are invalid.
    pub fn parse(text: &str) -> Result<Device> {
        let invalid = || location_error(format!("Invalid device string: '{text}'"));
        // torch's grammar: `[a-zA-Z_]+(:(0|[1-9][0-9]*))?` over the whole string.
        let split = text
            .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
            .unwrap_or(text.len());
        let (kind, rest) = text.split_at(split);
        let index = match rest.strip_prefix(':') {
            None if rest.is_empty() => None,
            Some(digits)
                if !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (digits == "0" || !digits.starts_with('0')) =>
            {
                Some(digits.parse::<usize>().map_err(|_| invalid())?)
            }
            _ => return Err(invalid()),
        };
        if kind.is_empty() {
            return Err(invalid());
        }
        match kind {
            "cpu" => match index {
                None => Ok(Device::Cpu),
                // torch.device('cpu:0') is valid but restores nowhere; keep its index.
                Some(i) => Ok(Device::Other {
                    kind: "cpu".into(),
                    index: Some(i),
                }),
            },
            "cuda" => Ok(Device::Cuda(index)),
            "meta" if index.is_none() => Ok(Device::Meta),
            "webgpu" | "wgpu" if index.is_none() => Ok(Device::WebGpu),
            k if TORCH_DEVICE_TYPES.contains(&k) || MORE_DEVICE_TYPES.contains(&k) => {
                Ok(Device::Other {
                    kind: k.to_owned(),
                    index,
                })
            }
            _ => Err(location_error(format!(
                "Expected one of {}, webgpu, wgpu device type at start of device string: {text}",
                TORCH_DEVICE_TYPES
                    .iter()
                    .chain(&MORE_DEVICE_TYPES[..2])
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The device type: `cpu`, `cuda`, `meta`, `webgpu`, …
    pub fn kind(&self) -> &str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
            Device::Meta => "meta",
            Device::WebGpu => "webgpu",
            Device::Other { kind, .. } => kind,
        }
    }
}

impl fmt::Display for Device {
    /// torch's `str(device)`: `cpu`, `cuda`, `cuda:1`, `meta`, plus `webgpu`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cuda(Some(i)) => write!(f, "cuda:{i}"),
            Device::Other {
                kind,
                index: Some(i),
            } => write!(f, "{kind}:{i}"),
            other => f.write_str(other.kind()),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Device> {
        Device::parse(s)
    }
}

/// What a `map_location` callback sees of a storage (torch passes the storage itself).
#[derive(Clone, Debug)]
pub struct StorageInfo {
    /// The storage's key in the file.
    pub key: crate::StorageKey,
    /// Its dtype (uint8 for untyped storages).
    pub dtype: Dtype,
    /// Its size in bytes.
    pub nbytes: u64,
    /// The tag saved with it (`cpu`, `cuda:0`, …; the common tags are static, not allocated).
    pub location: std::borrow::Cow<'static, str>,
}

impl StorageInfo {
    /// Place it on the CPU: the callback's `storage.cpu()`, or returning the storage as it is.
    pub fn cpu(&self) -> Placement {
        Placement(Device::Cpu)
    }
    /// Place it on CUDA device `index`: `storage.cuda(index)`.
    pub fn cuda(&self, index: usize) -> Placement {
        Placement(Device::Cuda(Some(index)))
    }
    /// Place it on `device`: `storage.to(device)`.
    pub fn to(&self, device: Device) -> Placement {
        Placement(device)
    }
}

/// A callback's decision: the device a storage goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement(pub Device);

/// A `map_location` callback: called once per storage with the storage and its saved tag;
/// `None` falls back to the default rule with the saved tag.
pub type MapCallback = Arc<dyn Fn(&StorageInfo, &str) -> Option<Placement> + Send + Sync>;

/// torch.load's `map_location` (spec §5.1).
#[derive(Clone, Default)]
pub enum MapLocation {
    /// `None`: each storage goes where its saved tag says.
    #[default]
    Default,
    /// A string or device: every storage goes there (as `str(device)`, so `cpu:0` fails as in torch).
    To(String),
    /// A dict: a saved tag found among the keys is replaced by its value; a missing tag is kept.
    Map(Vec<(String, String)>),
    /// A callback.
    With(MapCallback),
}

impl fmt::Debug for MapLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapLocation::Default => f.write_str("Default"),
            MapLocation::To(t) => f.debug_tuple("To").field(t).finish(),
            MapLocation::Map(m) => f.debug_tuple("Map").field(m).finish(),
            MapLocation::With(_) => f.write_str("With(<callback>)"),
        }
    }
}

impl From<&str> for MapLocation {
    fn from(s: &str) -> Self {
        MapLocation::To(s.to_owned())
    }
}
impl From<String> for MapLocation {
    fn from(s: String) -> Self {
        MapLocation::To(s)
    }
}
impl From<Device> for MapLocation {
    fn from(d: Device) -> Self {
        MapLocation::To(d.to_string())
    }
}

impl MapLocation {
    /// A dict `map_location` from `(from, to)` tag pairs.
    pub fn map<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        MapLocation::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// A callback `map_location`.
    pub fn with(
        f: impl Fn(&StorageInfo, &str) -> Option<Placement> + Send + Sync + 'static,
    ) -> Self {
        MapLocation::With(Arc::new(f))
    }

    /// Whether no storage byte needs reading (`'meta'`): torch skips restore_location entirely.
    pub fn is_meta(&self) -> bool {
        matches!(self, MapLocation::To(t) if t == "meta")
    }

    /// Where the storage `info` goes, by torch's rules, without checking the device exists.
    pub fn resolve(&self, info: &StorageInfo) -> Result<Device> {
        let saved: &str = &info.location;
        match self {
            MapLocation::With(f) => match f(info, saved) {
                Some(Placement(device)) => Ok(device),
                None => restore_location(saved),
            },
            _ => self
                .resolve_saved(saved)
                .unwrap_or_else(|| restore_location(saved)),
        }
    }

    /// The device a storage saved at location tag `saved` goes to, when that depends on the
    /// tag alone (every mapping but a callback, which sees the whole [`StorageInfo`]).
    pub(crate) fn resolve_saved(&self, saved: &str) -> Option<Result<Device>> {
        match self {
            MapLocation::Default => Some(restore_location(saved)),
            MapLocation::To(target) => Some(restore_location(target)),
            MapLocation::Map(pairs) => {
                let target = pairs
                    .iter()
                    .find(|(from, _)| from == saved)
                    .map_or(saved, |(_, to)| to.as_str());
                Some(restore_location(target))
            }
            MapLocation::With(_) => None,
        }
    }
}

/// Whether `tag` fires the deserializer of accelerator `name`: it equals the name or starts
/// with `name:` or `name<digit>` (torch's `<name>(:|[0-9]+)` match).
fn accelerator_tag(tag: &str, name: &str) -> bool {
    match tag.strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest.starts_with(':') || rest.starts_with(|c: char| c.is_ascii_digit()),
        None => false,
    }
}

/// torch's `default_restore_location`: the device a tag restores to, or torch's error.
pub fn restore_location(tag: &str) -> Result<Device> {
    if tag == "cpu" {
        return Ok(Device::Cpu);
    }
    for name in ["cuda", "hpu", "xpu", "mtia"] {
        if accelerator_tag(tag, name) {
            return Device::parse(tag);
        }
    }
    if tag.starts_with("mps") {
        return Ok(Device::Other {
            kind: "mps".into(),
            index: None,
        });
    }
    if tag == "meta" {
        return Ok(Device::Meta);
    }
    if tag == "webgpu" || tag == "wgpu" {
        return Ok(Device::WebGpu);
    }
    Err(location_error(format!(
        "don't know how to restore data location of torch.storage.UntypedStorage (tagged with {tag})"
    )))
}

/// Which devices this build and machine can place storages on.
#[derive(Clone, Debug, Default)]
pub struct DeviceSupport {
    /// Number of CUDA devices usable (0 when the `cuda` feature is off or no driver is found).
    pub cuda_devices: usize,
    /// Why CUDA is unusable, when it is.
    pub cuda_reason: Option<String>,
    /// Whether a WebGPU placer is available.
    pub webgpu: bool,
}

impl DeviceSupport {
    /// Checks that `device` can be placed onto, with torch's messages when it cannot.
    pub fn check(&self, device: &Device) -> Result<Device> {
        match device {
            Device::Cpu | Device::Meta => Ok(device.clone()),
            Device::Cuda(index) => {
                if self.cuda_devices == 0 {
                    let reason = self
                        .cuda_reason
                        .as_deref()
                        .unwrap_or("no CUDA device is available");
                    return Err(location_error(format!(
                        "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False \
                         ({reason}). If you are running on a CPU-only machine, please use map_location=\"cpu\" \
                         (CLI: --map-location cpu) to map your storages to the CPU."
                    )));
                }
                let index = index.unwrap_or(0);
                if index >= self.cuda_devices {
                    return Err(location_error(format!(
                        "Attempting to deserialize object on CUDA device {index} but torch.cuda.device_count() is {}. \
                         Please use map_location to map your storages to an existing device.",
                        self.cuda_devices
                    )));
                }
                Ok(Device::Cuda(Some(index)))
            }
            Device::WebGpu => {
                if self.webgpu {
                    Ok(Device::WebGpu)
                } else {
                    // With the `wgpu` feature the placer exists but needs the caller's device.
                    let message = if cfg!(feature = "wgpu") {
                        "Attempting to deserialize object on a WebGPU device, but this loader has no \
                         WebGPU placer (give it your wgpu device with Loader::wgpu(device, queue), or use \
                         map_location=\"cpu\")."
                    } else {
                        "Attempting to deserialize object on a WebGPU device, but this build of ptload has no \
                         WebGPU placer (enable the `wgpu` feature, or use map_location=\"cpu\")."
                    };
                    Err(location_error(message.to_string()))
                }
            }
            Device::Other { kind, index } => {
                let upper = kind.to_ascii_uppercase();
                Err(location_error(match kind.as_str() {
                    "mps" => "torch.UntypedStorage(): Storage device not recognized: mps".to_string(),
                    "hpu" | "xpu" | "mtia" => format!(
                        "Attempting to deserialize object on a {upper} device but torch.{kind}.is_available() is False. \
                         If you are running on a CPU-only machine, please use map_location=\"cpu\" to map your storages to the CPU."
                    ),
                    _ => format!(
                        "don't know how to restore data location of torch.storage.UntypedStorage (tagged with {})",
                        match index {
                            Some(i) => format!("{kind}:{i}"),
                            None => kind.clone(),
                        }
                    ),
                }))
            }
        }
    }
}

fn location_error(message: String) -> Error {
    Error::new(ErrorKind::Location { message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(location: &str) -> StorageInfo {
        StorageInfo {
            key: "0".into(),
            dtype: Dtype::Float32,
            nbytes: 16,
            location: location.to_owned().into(),
        }
    }

    #[test]
    fn parse_devices() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(None));
        assert_eq!(Device::parse("cuda:1").unwrap(), Device::Cuda(Some(1)));
        assert_eq!(Device::parse("wgpu").unwrap(), Device::WebGpu);
        assert_eq!(Device::parse("cuda:1").unwrap().to_string(), "cuda:1");
        assert!(Device::parse("CPU")
            .unwrap_err()
            .to_string()
            .starts_with("Expected one of cpu, cuda, ipu, xpu, mkldnn, opengl, opencl, ideep, hip, ve, fpga, maia, xla, lazy, vulkan, mps, meta, hpu, mtia, privateuseone"));
        for bad in ["cuda:01", "cuda:x", "cuda:-1", "cuda:"] {
            assert_eq!(
                Device::parse(bad).unwrap_err().to_string(),
                format!("Invalid device string: '{bad}'")
            );
        }
        assert_eq!(
            Device::parse("cuda0").unwrap_err().to_string(),
            "Invalid device string: 'cuda0'"
        );
    }

    #[test]
    fn map_locations_from_text_and_their_debug() {
        let from_string = MapLocation::from(String::from("cpu"));
        assert_eq!(format!("{from_string:?}"), r#"To("cpu")"#);
        assert_eq!(from_string.resolve(&info("cuda:0")).unwrap(), Device::Cpu);
        assert_eq!(format!("{:?}", MapLocation::Default), "Default");
        assert_eq!(
            format!("{:?}", MapLocation::map([("cuda:0", "cpu")])),
            r#"Map([("cuda:0", "cpu")])"#
        );
        let callback = MapLocation::with(|_, _| None);
        assert_eq!(format!("{callback:?}"), "With(<callback>)");
    }

    #[test]
    fn device_types_and_indices_as_torch_device_reads_them() {
        // torch.device('meta') / ('meta:0') / ('xpu:1') / ('mtia:2'), asked of torch 2.15.
        assert_eq!(Device::parse("meta").unwrap(), Device::Meta);
        let other = |kind: &str, index| Device::Other {
            kind: kind.into(),
            index,
        };
        assert_eq!(Device::parse("meta:0").unwrap(), other("meta", Some(0)));
        assert_eq!(Device::parse("xpu:1").unwrap(), other("xpu", Some(1)));
        assert_eq!(Device::parse("mtia:2").unwrap(), other("mtia", Some(2)));
        // ptload's own device takes no index; torch knows neither it nor `foo`.
        for bad in ["webgpu:0", "wgpu:1", "foo"] {
            assert!(
                Device::parse(bad)
                    .unwrap_err()
                    .to_string()
                    .ends_with(&format!("device type at start of device string: {bad}")),
                "{bad}"
            );
        }
    }

    #[test]
    fn torch_rules() {
        assert_eq!(
            MapLocation::Default.resolve(&info("cpu")).unwrap(),
            Device::Cpu
        );
        assert_eq!(
            MapLocation::from("cpu").resolve(&info("cuda:0")).unwrap(),
            Device::Cpu
        );
        let err = MapLocation::from("cpu:0")
            .resolve(&info("cpu"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "don't know how to restore data location of torch.storage.UntypedStorage (tagged with cpu:0)"
        );
        assert!(MapLocation::from("CPU").resolve(&info("cpu")).is_err());
        let dict = MapLocation::map([("cuda:0", "cpu")]);
        assert_eq!(dict.resolve(&info("cuda:0")).unwrap(), Device::Cpu);
        // A missing key keeps the saved tag.
        assert_eq!(
            dict.resolve(&info("cuda:1")).unwrap(),
            Device::Cuda(Some(1))
        );
        // No chaining: values are not looked up again.
        let chain = MapLocation::map([("cuda:0", "cuda:1"), ("cuda:1", "cpu")]);
        assert_eq!(
            chain.resolve(&info("cuda:0")).unwrap(),
            Device::Cuda(Some(1))
        );
        let cb = MapLocation::with(|s, _| (s.key == "0").then(|| s.cpu()));
        assert_eq!(cb.resolve(&info("cuda:0")).unwrap(), Device::Cpu);
        let none = MapLocation::with(|_, _| None);
        assert_eq!(
            none.resolve(&info("cuda:2")).unwrap(),
            Device::Cuda(Some(2))
        );
        let err = MapLocation::Default.resolve(&info("weird:0")).unwrap_err();
        assert!(err.to_string().contains("(tagged with weird:0)"));
        assert_eq!(
            MapLocation::Default.resolve(&info("meta")).unwrap(),
            Device::Meta
        );
    }

    #[test]
    fn support_errors() {
        let support = DeviceSupport::default();
        let err = support
            .check(&Device::Cuda(Some(0)))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False"));
        assert!(err.contains("--map-location cpu"));
        let two = DeviceSupport {
            cuda_devices: 2,
            ..Default::default()
        };
        let err = two.check(&Device::Cuda(Some(3))).unwrap_err().to_string();
        assert!(err.contains("on CUDA device 3 but torch.cuda.device_count() is 2"));
        assert_eq!(
            two.check(&Device::Cuda(None)).unwrap(),
            Device::Cuda(Some(0))
        );
        // torch 2.15, loading a storage tagged `xpu:0` on a machine without XPU.
        let err = support
            .check(&Device::parse("xpu:0").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "Attempting to deserialize object on a XPU device but torch.xpu.is_available() is False."
            ),
            "{err}"
        );
    }
}

//! Random-access bytes of a checkpoint: a memory map of a file, or a buffer the caller handed
//! over. Everything above reads through `&[u8]`; storages borrow slices of the same shared
//! bytes, so a CPU load copies nothing it does not have to.

use std::fmt;
use std::sync::Arc;

/// Shared, immutable bytes: an mmap, a `Vec<u8>`, an `Arc<[u8]>`, a `&'static [u8]`, …
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A checkpoint's bytes and the name used in error messages.
#[derive(Clone)]
pub struct Source {
    name: String,
    bytes: SharedBytes,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl Source {
    /// Wraps bytes the caller owns; `name` appears in errors (`<memory>` by convention).
    pub fn from_bytes(
        name: impl Into<String>,
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
    ) -> Self {
        Source {
            name: name.into(),
            bytes: Arc::new(bytes),
        }
    }

    /// Opens a file: memory-mapped when the `mmap` feature is on, else read whole.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> crate::Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| crate::Error::from(e).in_file(&name))?;
        let len = file
            .metadata()
            .map_err(|e| crate::Error::from(e).in_file(&name))?
            .len();
        if len == 0 {
            return Ok(Source::from_bytes(name, Vec::new()));
        }
        #[cfg(feature = "mmap")]
        {
            // SAFETY: the map is private and read-only. As with every mmap-based loader
            // (safetensors, torch's mmap=True), truncating or rewriting the file while the
            // checkpoint is alive is undefined behaviour; callers who cannot rule that out should
            // read the file into memory and use `Source::from_bytes`.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| crate::Error::from(e).in_file(&name))?;
            Ok(Source::from_bytes(name, map))
        }
        #[cfg(not(feature = "mmap"))]
        {
            let mut file = file;
            let mut bytes = Vec::with_capacity(len as usize);
            std::io::Read::read_to_end(&mut file, &mut bytes)
                .map_err(|e| crate::Error::from(e).in_file(&name))?;
            Ok(Source::from_bytes(name, bytes))
        }
    }

    /// The name used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All the bytes.
    pub fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    /// The shared handle, for storages that borrow from it.
    pub fn shared(&self) -> &SharedBytes {
        &self.bytes
    }
}

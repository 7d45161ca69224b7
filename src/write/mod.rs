//! Writing checkpoints: the tensors of a loaded [`Checkpoint`] (or a subtree of it) as a
//! `.safetensors` file or as a `.pt` file in torch.save's zip format.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Writer`] (options), [`Report`], choosing the tensors ([`Writer::select`]), the output file (a temporary name in the target folder, renamed when complete) |
//! | `safetensors.rs` | the safetensors writer, through the `safetensors` crate |
//! | `sharded.rs` | sharded safetensors + `model.safetensors.index.json`, as transformers names them |
//! | `torch_zip.rs` | torch.save's zip container, through the `zip` crate |
//! | `pickle.rs` | the protocol-2 pickle of `data.pkl` (an `OrderedDict` of `_rebuild_tensor_v2/v3` calls) |
//!
//! Views are written as contiguous copies of their elements (safetensors) or as the views
//! they are over whole storages (`.pt`, where shared storages stay shared). Only tensors are
//! written; every other value is listed in [`Report::skipped_values`].
//!
//! ```
//! # fn main() -> Result<(), ptload::Error> {
//! let ckpt = ptload::load("examples/tiny_convnet.pt")?;
//! let dir = tempfile::tempdir().unwrap();
//! let out = dir.path().join("model.safetensors");
//! let report = ptload::Writer::new().save_safetensors(&ckpt, &out)?;
//! assert_eq!(report.written.len(), ckpt.tensors().count());
//! // An existing target needs `force`.
//! let err = ptload::Writer::new().save_safetensors(&ckpt, &out).unwrap_err();
//! assert!(err.to_string().contains("already exists"));
//! # Ok(()) }
//! ```

mod pickle;
mod safetensors;
#[cfg(not(target_arch = "wasm32"))]
mod sharded;
mod torch_zip;

use compact_str::ToCompactString;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::loader::{Checkpoint, Tensor};
use crate::place::{Progress, ProgressFn};
use crate::plan::walk_tensors;
use crate::torch::{Dtype, Value};

pub use self::safetensors::safetensors_dtype;
pub(crate) use self::safetensors::torch_dtype;
#[cfg(not(target_arch = "wasm32"))]
pub use self::sharded::parse_size;

/// What a write did: the tensors written, and what it left out and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Paths written, in file order of the source.
    pub written: Vec<String>,
    /// Paths of values that are not tensors (epochs, hyper-parameters, …), not written.
    pub skipped_values: Vec<String>,
    /// Tensors left out because the output format has no name for their dtype
    /// ([`Writer::skip_unsupported`]).
    pub skipped_unsupported: Vec<(String, Dtype)>,
    /// With [`Writer::dedup`]: `(dropped, kept)` for each alias written once.
    pub aliases: Vec<(String, String)>,
    /// Tensor bytes written.
    pub bytes: u64,
}

/// Options for writing checkpoints: the builder behind [`crate::save`] and
/// [`crate::save_safetensors`].
#[derive(Clone, Default)]
pub struct Writer {
    force: bool,
    dedup: bool,
    skip_unsupported: bool,
    select: Option<String>,
    source_name: Option<String>,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("force", &self.force)
            .field("dedup", &self.dedup)
            .field("skip_unsupported", &self.skip_unsupported)
            .field("select", &self.select)
            .field("source_name", &self.source_name)
            .finish()
    }
}

/// One tensor chosen for writing.
pub(crate) struct Chosen<'c> {
    pub path: String,
    pub tensor: Tensor<'c>,
}

impl Writer {
    /// Default options: no overwriting, every tensor under its own path, unsupported dtypes
    /// refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overwrite an existing target (default `false`: an existing target is an error).
    pub fn force(&mut self, yes: bool) -> &mut Self {
        self.force = yes;
        self
    }

    /// safetensors only: write tensors that share one storage completely (tied weights) once,
    /// under the first of their names in sorted order, and record each dropped name in
    /// `__metadata__` as `dropped → kept`, the way transformers' and safetensors' own
    /// `save_model` do. Default `false`: every path is written with its own copy.
    pub fn dedup(&mut self, yes: bool) -> &mut Self {
        self.dedup = yes;
        self
    }

    /// Leave out tensors whose dtype the output format cannot name (listed in
    /// [`Report::skipped_unsupported`]) instead of failing (default `false`).
    pub fn skip_unsupported(&mut self, yes: bool) -> &mut Self {
        self.skip_unsupported = yes;
        self
    }

    /// Write only the subtree at this `.`-joined path (e.g. `state_dict`, `model`); tensor
    /// names are then relative to it.
    pub fn select(&mut self, path: impl Into<String>) -> &mut Self {
        self.select = Some(path.into());
        self
    }

    /// The source file name recorded in a safetensors `__metadata__` (`"source"`).
    pub fn source_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.source_name = Some(name.into());
        self
    }

    /// Calls `f` as tensor bytes are written, with the bytes written so far and in all.
    pub fn on_progress(&mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> &mut Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Writes the tensors as a `.safetensors` file at `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_safetensors(
        &self,
        ckpt: &Checkpoint,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Report> {
        let path = path.as_ref();
        let name = path.display().to_string();
        self.save_safetensors_inner(ckpt, path)
            .map_err(|e| output_error(e, &name))
    }

    /// Writes the tensors as a `.pt` file at `path`, in torch.save's zip format
    /// (loadable by `torch.load(weights_only=True)`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, ckpt: &Checkpoint, path: impl AsRef<std::path::Path>) -> Result<Report> {
        let path = path.as_ref();
        let name = path.display().to_string();
        self.save_torch_inner(ckpt, path)
            .map_err(|e| output_error(e, &name))
    }

    /// The tensors to write (in file order) and the report so far (skipped values).
    pub(crate) fn choose<'c>(
        &self,
        ckpt: &'c Checkpoint,
        supported: impl Fn(&Tensor<'_>) -> bool,
        format: &str,
    ) -> Result<(Vec<Chosen<'c>>, Report)> {
        let root = match &self.select {
            None => &ckpt.root,
            Some(path) => ckpt.root.get_path(path).ok_or_else(|| {
                Error::new(ErrorKind::Unsupported {
                    what: format!("--select: the checkpoint has no value at '{path}'"),
                })
            })?,
        };
        let mut report = Report::default();
        let mut metas = Vec::new();
        walk_tensors(root, &mut String::new(), &mut |path, _, meta| {
            metas.push((path.to_owned(), meta))
        });
        if self.select.is_none() {
            if let Some(constants) = &ckpt.constants {
                walk_tensors(
                    constants,
                    &mut "constants".to_owned(),
                    &mut |path, _, meta| metas.push((path.to_owned(), meta)),
                );
            }
        }
        skipped_values(root, &mut String::new(), &mut report.skipped_values);
        let mut chosen = Vec::with_capacity(metas.len());
        for (path, meta) in metas {
            let tensor = ckpt.tensor_view(meta);
            if !supported(&tensor) {
                if self.skip_unsupported {
                    report.skipped_unsupported.push((path, tensor.dtype()));
                    continue;
                }
                return Err(Error::unsupported(format!(
                    "tensor '{path}' has dtype {}, which {format} cannot store \
                     (use --skip-unsupported to leave it out)",
                    tensor.dtype()
                )));
            }
            if tensor.storage().is_none() || tensor.device() == crate::Device::Meta {
                return Err(Error::unsupported(format!(
                    "tensor '{path}' has no data (a meta tensor): there are no bytes to write"
                )));
            }
            chosen.push(Chosen { path, tensor });
        }
        let mut seen = std::collections::HashSet::new();
        for c in &chosen {
            if !seen.insert(c.path.as_str()) {
                return Err(Error::unsupported(format!(
                    "two tensors have the path '{}': {format} needs distinct names",
                    c.path
                )));
            }
        }
        Ok((chosen, report))
    }

    fn progress(&self, written: u64, total: u64) {
        if let Some(f) = &self.progress {
            f(Progress {
                placed_bytes: written,
                total_bytes: total,
            });
        }
    }
}

impl Checkpoint {
    /// A checkpoint of contiguous tensors given as `(name, dtype, shape, bytes)` (bytes in C
    /// order, host byte order), to write with a [`Writer`]: its root is an `OrderedDict` of
    /// the tensors, each over a storage of its own.
    ///
    /// ```
    /// use ptload::{Checkpoint, Dtype, Writer};
    /// let ckpt = Checkpoint::from_tensors(vec![
    ///     ("w".into(), Dtype::Float32, vec![2], [1f32, 2.0].iter().flat_map(|f| f.to_le_bytes()).collect()),
    /// ]).unwrap();
    /// let (bytes, report) = Writer::new().to_pt_bytes(&ckpt).unwrap();
    /// assert_eq!(report.written, ["w"]);
    /// let back = ptload::load_bytes(bytes).unwrap();
    /// assert_eq!(back.tensor("w").unwrap().to_contiguous_bytes().unwrap(), ckpt.tensor("w").unwrap().to_contiguous_bytes().unwrap());
    /// ```
    pub fn from_tensors(tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)>) -> Result<Checkpoint> {
        let mut items = Vec::with_capacity(tensors.len());
        let mut storages = Vec::with_capacity(tensors.len());
        for (id, (name, dtype, shape, bytes)) in tensors.into_iter().enumerate() {
            let size = dtype.element_size() as u64;
            let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            let nbytes = numel.and_then(|n| n.checked_mul(size));
            if nbytes != Some(bytes.len() as u64) {
                return Err(Error::invalid_tensor(format!(
                    "tensor '{name}': {} bytes given for shape {shape:?} of {dtype}",
                    bytes.len()
                )));
            }
            let mut stride = vec![0u64; shape.len()];
            let mut acc = 1u64;
            for (s, &d) in stride.iter_mut().zip(&shape).rev() {
                *s = acc;
                acc = acc.saturating_mul(d.max(1));
            }
            let meta = crate::TensorMeta::view(Some(id), dtype, shape, stride, 0);
            items.push((
                Value::Str(name.as_str().into()),
                Value::Tensor(Box::new(meta)),
            ));
            storages.push(crate::Storage {
                key: id.to_compact_string(),
                dtype,
                numel: numel.unwrap_or(0),
                location: "cpu".into(),
                device: crate::Device::Cpu,
                data: crate::StorageData::Owned(bytes),
            });
        }
        let root = Value::Dict(Box::new(crate::Dict {
            class: "collections.OrderedDict".into(),
            items,
            attributes: Vec::new(),
        }));
        Ok(Checkpoint::from_parts(
            root,
            storages,
            crate::Format::Zip,
            crate::ByteOrder::Little,
            u64::MAX,
        ))
    }
}

/// I/O errors are about the output file and name it; the others are about the checkpoint's
/// contents (an unsupported dtype, a missing `--select` path) and are left for the caller to
/// tie to the input.
#[cfg(not(target_arch = "wasm32"))]
fn output_error(e: Error, output: &str) -> Error {
    if matches!(e.kind(), ErrorKind::Io(_)) {
        e.in_file(output)
    } else {
        e
    }
}

/// Paths of values that are neither tensors nor containers of other values.
fn skipped_values(value: &Value, path: &mut String, out: &mut Vec<String>) {
    if matches!(value, Value::Tensor(_)) {
        return;
    }
    let mut any = false;
    for (segment, child) in value.children() {
        any = true;
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&segment);
        skipped_values(child, path, out);
        path.truncate(len);
    }
    let container = matches!(
        value,
        Value::List(_)
            | Value::Tuple(_)
            | Value::Dict(_)
            | Value::Set(_)
            | Value::FrozenSet(_)
            | Value::Object(_)
    );
    // Empty containers hold nothing to lose; a leaf that is not a tensor is skipped.
    if !any && !container {
        out.push(if path.is_empty() {
            "(root)".to_owned()
        } else {
            path.clone()
        });
    }
}

/// The output file: a temporary name in the target's folder, renamed over the target when
/// complete, deleted if dropped before.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) struct Output {
    place: Place,
    target: std::path::PathBuf,
    force: bool,
    permissions: std::fs::Permissions,
}

/// Where an [`Output`] is written before it is renamed over the target.
#[cfg(not(target_arch = "wasm32"))]
enum Place {
    /// A temporary file, written through [`Output::file`].
    File(tempfile::NamedTempFile),
    /// A path not made yet, in a temporary folder of its own, for a writer that creates the
    /// file itself (the safetensors crate writes a file of its own and renames it there).
    /// Renaming onto a path that exists would make ext4 write the whole file out first
    /// (`auto_da_alloc`): 0.8 s for 1 GiB.
    Folder {
        folder: tempfile::TempDir,
        path: std::path::PathBuf,
    },
}

#[cfg(not(target_arch = "wasm32"))]
impl Output {
    /// Refuses an existing target without `force`, then creates the temporary file.
    pub(crate) fn create(target: &std::path::Path, force: bool) -> Result<Self> {
        let (folder, prefix) = Self::prepare(target, force)?;
        let temp = temp_names(&prefix, true)
            .tempfile_in(&folder)
            .map_err(|e| folder_error(&folder, e))?;
        let permissions = temp.as_file().metadata()?.permissions();
        Ok(Output {
            place: Place::File(temp),
            target: target.to_owned(),
            force,
            permissions,
        })
    }

    /// Refuses an existing target without `force`, then makes a temporary folder beside it:
    /// [`Output::path`] is a path in it that does not exist yet, for a writer that creates
    /// the file itself.
    pub(crate) fn create_path(target: &std::path::Path, force: bool) -> Result<Self> {
        let (folder, prefix) = Self::prepare(target, force)?;
        let temp = temp_names(&prefix, false)
            .tempdir_in(&folder)
            .map_err(|e| folder_error(&folder, e))?;
        let path = temp
            .path()
            .join(target.file_name().unwrap_or("out".as_ref()));
        // The permissions a new file gets here (0666 less the umask), for the writer's file,
        // which may be private: learnt from a file made and removed in the private folder.
        let probe = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let permissions = probe.metadata()?.permissions();
        drop(probe);
        std::fs::remove_file(&path)?;
        Ok(Output {
            place: Place::Folder { folder: temp, path },
            target: target.to_owned(),
            force,
            permissions,
        })
    }

    /// The target's folder and the prefix of temporary names beside the target.
    fn prepare(target: &std::path::Path, force: bool) -> Result<(std::path::PathBuf, String)> {
        if !force && target.exists() {
            return Err(Error::new(ErrorKind::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the target already exists (use --force to overwrite it)",
            ))));
        }
        if target.is_dir() {
            return Err(Error::new(ErrorKind::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the target is a directory",
            ))));
        }
        let folder = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        let file_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok((folder, format!(".{file_name}.")))
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        match &self.place {
            Place::File(temp) => temp.path(),
            Place::Folder { path, .. } => path,
        }
    }

    /// The temporary file (of [`Output::create`]).
    pub(crate) fn file(&self) -> &std::fs::File {
        match &self.place {
            Place::File(temp) => temp.as_file(),
            Place::Folder { .. } => unreachable!("Output::file of an output made by create_path"),
        }
    }

    /// Renames the complete file over the target.
    pub(crate) fn finish(self) -> Result<()> {
        std::fs::set_permissions(self.path(), self.permissions.clone())?;
        match self.place {
            Place::File(temp) => {
                let result = if self.force {
                    temp.persist(&self.target).map(|_| ())
                } else {
                    temp.persist_noclobber(&self.target).map(|_| ())
                };
                result.map_err(|e| Error::from(e.error))
            }
            Place::Folder { folder, path } => {
                if self.force {
                    std::fs::rename(&path, &self.target)?;
                } else {
                    // A hard link fails when the target exists (as persist_noclobber);
                    // where links are not supported, a checked rename.
                    match std::fs::hard_link(&path, &self.target) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            return Err(Error::from(e))
                        }
                        Err(_) if self.target.exists() => {
                            return Err(Error::from(std::io::Error::new(
                                std::io::ErrorKind::AlreadyExists,
                                "the target already exists (use --force to overwrite it)",
                            )))
                        }
                        Err(_) => std::fs::rename(&path, &self.target)?,
                    }
                }
                drop(folder); // removes the folder and the link left in it
                Ok(())
            }
        }
    }
}

/// Temporary names `<prefix>XXXXXX.partial`; a `file` is made as any new file (0666 less the
/// umask), not tempfile's private 0600 (a folder stays private).
#[cfg(not(target_arch = "wasm32"))]
fn temp_names(prefix: &str, file: bool) -> tempfile::Builder<'_, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(".partial");
    #[cfg(not(unix))]
    let _ = file;
    #[cfg(unix)]
    if file {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder
}

/// Why no temporary file or folder could be made in `folder`.
#[cfg(not(target_arch = "wasm32"))]
fn folder_error(folder: &std::path::Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io(std::io::Error::new(
        e.kind(),
        format!(
            "cannot create a file in the folder '{}': {e}",
            folder.display()
        ),
    )))
}

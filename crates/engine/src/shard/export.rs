//! `export`: split a GGUF model into layer-range shard files (GGUF containers) plus a manifest.
//!
//! Disk safety, as the seed system learned the hard way:
//! - a preflight sums the bytes to be written per filesystem and refuses when free space is short;
//! - an existing shard or manifest is never overwritten without `force`, and nothing of the
//!   user's is ever deleted (only our own `.partial` file of a failed write is removed);
//! - every file is written to `NAME.partial`, flushed, synced, then renamed into place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{self, Manifest, ShardEntry, SourceModel};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, TensorInfo, Value};
use crate::model::config::ModelConfig;
use crate::quant;
use crate::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    /// Keep every tensor's type.
    Keep,
    /// Convert every matrix to Q8_0 (the engine's INT8 format); vectors stay F32.
    Q8_0,
}

#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub start: usize,
    pub end: usize,
    pub path: PathBuf,
}

impl LayerSpec {
    /// `START:END:PATH` with END exclusive.
    pub fn parse(s: &str) -> Result<LayerSpec, String> {
        let mut it = s.splitn(3, ':');
        let (a, b, p) = (it.next(), it.next(), it.next());
        match (a, b, p) {
            (Some(a), Some(b), Some(p)) if !p.is_empty() => Ok(LayerSpec {
                start: a
                    .parse()
                    .map_err(|_| format!("bad start layer {a:?} in {s:?}"))?,
                end: b
                    .parse()
                    .map_err(|_| format!("bad end layer {b:?} in {s:?}"))?,
                path: PathBuf::from(p),
            }),
            _ => Err(format!("--layer-spec {s:?} is not START:END:PATH")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub model: PathBuf,
    pub specs: Vec<LayerSpec>,
    pub ty: ExportType,
    /// Build only the shard with exactly this range.
    pub only: Option<(usize, usize)>,
    pub force: bool,
    pub manifest: PathBuf,
    pub verify_width: usize,
    pub device: String,
    /// Simulated free-space limit (tests); None = ask the filesystem.
    pub disk_limit: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub manifest: Option<PathBuf>,
    pub written: Vec<PathBuf>,
    pub bytes_written: u64,
    /// Shards of the topology whose files do not exist yet (with --only).
    pub missing: Vec<PathBuf>,
}

/// Progress events for a progress bar.
pub enum Progress<'a> {
    Hashing {
        path: &'a Path,
        done: u64,
        total: u64,
    },
    Writing {
        path: &'a Path,
        done: u64,
        total: u64,
    },
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Io(format!("{what} {}: {e}", path.display()))
}

/// Hash a file, reporting progress.
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(Progress)) -> Result<String, EngineError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, "cannot open", e))?;
    let total = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| io_err(path, "cannot read", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        progress(Progress::Hashing { path, done, total });
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64, EngineError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| EngineError::Io(format!("bad path {}", dir.display())))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io_err(
            dir,
            "cannot query free space of",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Tensors that belong to a shard of `layers`, with embedding/head placement.
fn shard_tensors(
    f: &GgufFile,
    start: usize,
    end: usize,
    first: bool,
    last: bool,
) -> Vec<&TensorInfo> {
    // With tied embeddings the LM head is token_embd, so the last shard carries it too.
    let tied = f.tensor("output.weight").is_none();
    f.tensors
        .iter()
        .filter(|t| {
            let n = t.name.as_str();
            if let Some(rest) = n.strip_prefix("blk.") {
                let layer: Option<usize> = rest.split('.').next().and_then(|s| s.parse().ok());
                return layer.is_some_and(|l| l >= start && l < end);
            }
            match n {
                "token_embd.weight" => first || (last && tied),
                "output_norm.weight" | "output.weight" => last,
                // RoPE factors are used by every layer: every shard carries them.
                _ => n.starts_with("rope_factors") || n.starts_with("rope_freqs"),
            }
        })
        .collect()
}

/// The type a tensor is written as.
fn target_type(t: &TensorInfo, ty: ExportType) -> GgmlType {
    match ty {
        ExportType::Keep => t.ggml_type,
        ExportType::Q8_0 => {
            if t.shape.len() >= 2 && t.row_len().is_multiple_of(32) {
                GgmlType::Q8_0
            } else {
                t.ggml_type
            }
        }
    }
}

struct Planned<'a> {
    spec: &'a LayerSpec,
    index: usize,
    writer: GgufWriter,
    tensors: Vec<&'a TensorInfo>,
}

pub fn export(
    opts: &ExportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportReport, EngineError> {
    let src = GgufFile::open(&opts.model)?;
    let cfg = ModelConfig::from_gguf(&src)?;
    if opts.specs.is_empty() {
        return Err(EngineError::BadInput(
            "no --layer-spec or --topology given".into(),
        ));
    }
    manifest::parse_device(&opts.device).map_err(EngineError::BadInput)?;
    let ranges: Vec<(usize, usize)> = opts.specs.iter().map(|s| (s.start, s.end)).collect();
    manifest::check_coverage(&ranges, cfg.n_layer)
        .map_err(|e| EngineError::BadInput(format!("--layer-spec coverage: {e}")))?;
    if let Some(only) = opts.only {
        if !ranges.contains(&only) {
            return Err(EngineError::BadInput(format!(
                "--only {}:{} matches no --layer-spec range",
                only.0, only.1
            )));
        }
    }
    let manifest_dir = opts
        .manifest
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();

    // Plan every shard to build and check for existing files before writing anything.
    let n = opts.specs.len();
    let mut plans = Vec::new();
    for (i, spec) in opts.specs.iter().enumerate() {
        if opts.only.is_some_and(|o| o != (spec.start, spec.end)) {
            continue;
        }
        if spec.path.exists() && !opts.force {
            return Err(EngineError::BadInput(format!(
                "{} already exists; refusing to overwrite it (pass --force to replace it)",
                spec.path.display()
            )));
        }
        let tensors = shard_tensors(&src, spec.start, spec.end, i == 0, i + 1 == n);
        let mut w = GgufWriter::new();
        for (k, v) in &src.metadata {
            if k != "general.alignment" {
                w.set_kv(k.clone(), v.clone());
            }
        }
        w.set_kv("verispec.shard.layer_start", Value::U32(spec.start as u32));
        w.set_kv("verispec.shard.layer_end", Value::U32(spec.end as u32));
        w.set_kv("verispec.shard.index", Value::U32(i as u32));
        w.set_kv("verispec.shard.count", Value::U32(n as u32));
        for t in &tensors {
            w.add_tensor(t.name.clone(), &t.shape, target_type(t, opts.ty))?;
        }
        plans.push(Planned {
            spec,
            index: i,
            writer: w,
            tensors,
        });
    }
    let writes_manifest_now = opts.only.is_none()
        || opts
            .specs
            .iter()
            .all(|s| s.path.exists() || opts.only == Some((s.start, s.end)));
    if writes_manifest_now && opts.manifest.exists() && !opts.force {
        return Err(EngineError::BadInput(format!(
            "{} already exists; refusing to overwrite it (pass --force to replace it)",
            opts.manifest.display()
        )));
    }

    // Preflight: bytes needed per directory against the free space there.
    let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for p in &plans {
        let dir = p
            .spec
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, "cannot create", e))?;
        *need.entry(dir).or_default() += p.writer.total_size();
    }
    let total_need: u64 = need.values().sum();
    for (dir, bytes) in &need {
        let free = match opts.disk_limit {
            Some(l) => l,
            None => free_space(dir)?,
        };
        if *bytes > free {
            return Err(EngineError::Io(format!(
                "not enough disk space in {}: the shards need {} bytes, {} are free; nothing was written",
                dir.display(),
                bytes,
                free
            )));
        }
    }
    if let Some(limit) = opts.disk_limit {
        if total_need > limit {
            return Err(EngineError::Io(format!(
                "not enough disk space: the shards need {total_need} bytes, {limit} are free; nothing was written"
            )));
        }
    }

    let source_sha = sha256_file(&opts.model, progress)?;
    let mut report = ExportReport {
        manifest: None,
        written: Vec::new(),
        bytes_written: 0,
        missing: Vec::new(),
    };
    let mut built: BTreeMap<usize, (String, u64)> = BTreeMap::new();
    for p in plans {
        let (sha, bytes) =
            write_shard(&src, p.writer, &p.tensors, &p.spec.path, opts.ty, progress)?;
        report.written.push(p.spec.path.clone());
        report.bytes_written += bytes;
        built.insert(p.index, (sha, bytes));
    }

    // The manifest: every shard's file must exist to be hashed.
    let mut shards = Vec::new();
    for (i, spec) in opts.specs.iter().enumerate() {
        let (sha, bytes) = match built.remove(&i) {
            Some(x) => x,
            None if spec.path.exists() => {
                let bytes = std::fs::metadata(&spec.path)
                    .map(|m| m.len())
                    .map_err(|e| io_err(&spec.path, "cannot stat", e))?;
                (sha256_file(&spec.path, progress)?, bytes)
            }
            None => {
                report.missing.push(spec.path.clone());
                continue;
            }
        };
        let shard_file = GgufFile::open(&spec.path)?;
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        for t in &shard_file.tensors {
            *types.entry(t.ggml_type.name().to_string()).or_default() += 1;
        }
        let last = i + 1 == n;
        shards.push(ShardEntry {
            layers: [spec.start, spec.end],
            path: relative_to(&spec.path, &manifest_dir)?,
            sha256: sha,
            bytes,
            device: opts.device.clone(),
            embed: i == 0,
            output_norm: last,
            lm_head: last,
            tensor_types: types,
        });
    }
    if !report.missing.is_empty() {
        return Ok(report);
    }
    let (_, hparams) = src.arch_hparams();
    let arch = cfg.arch.name();
    let m = Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        source: SourceModel {
            path: opts.model.display().to_string(),
            sha256: source_sha,
            arch: arch.into(),
            n_layer: cfg.n_layer,
            hparams,
        },
        tokenizer: shards[0].path.clone(),
        verify_width: opts.verify_width,
        shards,
    };
    m.validate().map_err(EngineError::BadInput)?;
    let json = serde_json::to_vec_pretty(&m).map_err(|e| EngineError::Io(e.to_string()))?;
    write_atomic(&opts.manifest, &json)?;
    report.manifest = Some(opts.manifest.clone());
    Ok(report)
}

/// `path` relative to `dir` when it lies inside it, else as given (made absolute).
fn relative_to(path: &Path, dir: &Path) -> Result<String, EngineError> {
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(|e| io_err(p, "cannot resolve", e));
    let (p, d) = (abs(path)?, abs(dir)?);
    match p.strip_prefix(&d) {
        Ok(rel) => Ok(rel.display().to_string()),
        Err(_) => Err(EngineError::BadInput(format!(
            "shard {} is outside the manifest's folder {}; manifest paths must be relative",
            path.display(),
            dir.display()
        ))),
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let tmp = partial_path(path);
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, "cannot write", e));
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, "cannot rename into place", e))
}

/// A writer that hashes and counts what passes through.
struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_shard(
    src: &GgufFile,
    writer: GgufWriter,
    tensors: &[&TensorInfo],
    path: &Path,
    ty: ExportType,
    progress: &mut dyn FnMut(Progress),
) -> Result<(String, u64), EngineError> {
    let tmp = partial_path(path);
    let total = writer.total_size();
    let result = (|| -> Result<(String, u64), EngineError> {
        let file = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, "cannot create", e))?;
        let hw = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            bytes: 0,
        };
        let mut tw = writer.begin(hw)?;
        let mut row = Vec::new();
        let mut q = Vec::new();
        for t in tensors {
            let data = src.tensor_data(t);
            let out_ty = target_type(t, ty);
            if out_ty == t.ggml_type {
                tw.write_chunk(data)?;
            } else {
                let n_in = t.row_len() as usize;
                let rows = t.n_rows() as usize;
                let in_rb = data.len() / rows.max(1);
                row.resize(n_in, 0f32);
                q.resize(
                    GgmlType::Q8_0.row_bytes(n_in as u64).unwrap_or(0) as usize,
                    0u8,
                );
                for r in 0..rows {
                    quant::dequantize_row(t.ggml_type, &data[r * in_rb..(r + 1) * in_rb], &mut row)
                        .map_err(|e| EngineError::Model(format!("{}: {e}", t.name)))?;
                    quant::quantize_row_q8_0(&row, &mut q)
                        .map_err(|e| EngineError::Model(format!("{} row {r}: {e}", t.name)))?;
                    tw.write_chunk(&q)?;
                }
            }
            progress(Progress::Writing {
                path,
                done: tw.next_tensor().map(|n| n.offset).unwrap_or(total),
                total,
            });
        }
        let mut hw = tw.finish()?;
        hw.flush().map_err(|e| io_err(&tmp, "cannot write", e))?;
        let HashingWriter { inner, hash, bytes } = hw;
        let file = inner
            .into_inner()
            .map_err(|e| io_err(&tmp, "cannot write", e.error()))?;
        file.sync_all()
            .map_err(|e| io_err(&tmp, "cannot sync", e))?;
        Ok((hex(&hash.finalize()), bytes))
    })();
    match result {
        Ok(r) => {
            std::fs::rename(&tmp, path).map_err(|e| io_err(path, "cannot rename into place", e))?;
            Ok(r)
        }
        Err(e) => {
            // Our own partial file; the user's files are never touched.
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

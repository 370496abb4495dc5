//! Reading and writing ONNX model files, external data included.
//!
//! A model is decoded whole into [`ModelProto`] (cost: one pass over the
//! file, memory ≈ the file's size). Tensors stored as external data stay
//! where they are: their `location` is kept verbatim, checked to resolve
//! inside the model's folder, and the files are copied next to the output
//! when it is written to another folder.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use prost::Message;

use crate::bail;
use crate::error::{Error, Result};
use crate::proto::{
    tensor_proto::DataLocation, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
};

/// A decoded model and the folder its external data is relative to.
#[derive(Debug, Clone)]
pub struct Model {
    /// The decoded protobuf.
    pub proto: ModelProto,
    /// The file it came from.
    pub path: PathBuf,
}

impl Model {
    /// The folder external-data locations are relative to.
    pub fn dir(&self) -> PathBuf {
        folder_of(&self.path)
    }

    /// The main graph.
    pub fn graph(&self) -> &GraphProto {
        self.proto
            .graph
            .as_ref()
            .expect("load() guarantees a graph")
    }

    /// The main graph, mutably.
    pub fn graph_mut(&mut self) -> &mut GraphProto {
        self.proto
            .graph
            .as_mut()
            .expect("load() guarantees a graph")
    }

    /// The opset version imported for `domain` (`""` = the ONNX domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        self.proto
            .opset_import
            .iter()
            .find(|o| {
                o.domain.as_deref().unwrap_or("") == domain
                    || (domain.is_empty() && o.domain.as_deref() == Some("ai.onnx"))
            })
            .and_then(|o| o.version)
    }
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Read and decode `path`, then check every external-data reference.
///
/// Errors name the file and say whether it is not ONNX at all, truncated,
/// or refers to data outside its folder or past the end of a data file.
pub fn load(path: &Path) -> Result<Model> {
    let bytes =
        fs::read(path).map_err(|e| Error(format!("{}: cannot read: {e}", path.display())))?;
    decode(&bytes, path)
}

/// Decode `bytes` as the model file `path` (external data is resolved, and
/// checked, against `path`'s folder). [`load`] without the read; the ONNX
/// reader's fuzz target enters here.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Model> {
    let shown = path.display();
    if bytes.is_empty() {
        bail!("{shown}: not an ONNX model: the file is empty");
    }
    let proto = match ModelProto::decode(bytes) {
        Ok(p) => p,
        Err(e) => {
            let why = e.to_string();
            if why.contains("buffer underflow") || why.contains("unexpected end") {
                bail!("{shown}: truncated ONNX file ({} bytes): the protobuf ends inside a message ({why})", bytes.len());
            }
            bail!("{shown}: not an ONNX model: it is not a valid ModelProto protobuf ({why})");
        }
    };
    if proto.ir_version.is_none() || proto.graph.is_none() {
        bail!(
            "{shown}: not an ONNX model (or truncated): {} missing",
            if proto.graph.is_none() {
                "the graph is"
            } else {
                "ir_version is"
            }
        );
    }
    let model = Model {
        proto,
        path: path.to_path_buf(),
    };
    crate::validate::graph(&shown.to_string(), model.graph())?;
    for (owner, t) in external_tensors(model.graph()) {
        check_external(&model.dir(), &shown.to_string(), &owner, t)?;
    }
    Ok(model)
}

/// Encode `model` to `out`. External data files are copied into `out`'s
/// folder (same relative paths) when that folder differs from the source's.
pub fn save(model: &Model, out: &Path) -> Result<()> {
    let src_dir = model.dir();
    let dst_dir = folder_of(out);
    fs::create_dir_all(&dst_dir)
        .map_err(|e| Error(format!("{}: cannot create folder: {e}", dst_dir.display())))?;
    let same = match (src_dir.canonicalize(), dst_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        let locations: BTreeSet<String> = external_tensors(model.graph())
            .into_iter()
            .filter_map(|(_, t)| external_entry(t, "location").map(str::to_string))
            .collect();
        for loc in locations {
            let from = src_dir.join(&loc);
            let to = dst_dir.join(&loc);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| Error(format!("{}: {e}", parent.display())))?;
            }
            fs::copy(&from, &to).map_err(|e| {
                Error(format!(
                    "cannot copy external data {} to {}: {e}",
                    from.display(),
                    to.display()
                ))
            })?;
        }
    }
    let bytes = model.proto.encode_to_vec();
    fs::write(out, bytes).map_err(|e| Error(format!("{}: cannot write: {e}", out.display())))
}

/// The value of key `key` in a tensor's `external_data`.
pub fn external_entry<'t>(t: &'t TensorProto, key: &str) -> Option<&'t str> {
    t.external_data
        .iter()
        .find(|e| e.key.as_deref() == Some(key))
        .and_then(|e| e.value.as_deref())
}

/// Every tensor stored as external data, with a description of its owner,
/// in the graph, its nodes' attributes and nested subgraphs.
pub fn external_tensors(graph: &GraphProto) -> Vec<(String, &TensorProto)> {
    let mut out = Vec::new();
    collect_tensors(graph, &mut |owner, t| {
        if t.data_location == Some(DataLocation::External as i32) {
            out.push((owner, t));
        }
    });
    out
}

fn collect_tensors<'g>(graph: &'g GraphProto, f: &mut dyn FnMut(String, &'g TensorProto)) {
    for t in &graph.initializer {
        f(format!("initializer '{}'", t.name()), t);
    }
    for s in &graph.sparse_initializer {
        for t in s.values.iter().chain(s.indices.iter()) {
            f(format!("sparse initializer '{}'", t.name()), t);
        }
    }
    for n in &graph.node {
        collect_node_tensors(n, f);
    }
}

fn collect_node_tensors<'g>(n: &'g NodeProto, f: &mut dyn FnMut(String, &'g TensorProto)) {
    for a in &n.attribute {
        collect_attr_tensors(n, a, f);
    }
}

fn collect_attr_tensors<'g>(
    n: &'g NodeProto,
    a: &'g AttributeProto,
    f: &mut dyn FnMut(String, &'g TensorProto),
) {
    let owner = || {
        format!(
            "node '{}' ({}) attribute '{}'",
            n.name(),
            n.op_type(),
            a.name()
        )
    };
    if let Some(t) = &a.t {
        f(owner(), t);
    }
    for t in &a.tensors {
        f(owner(), t);
    }
    if let Some(g) = &a.g {
        collect_tensors(g, f);
    }
    for g in &a.graphs {
        collect_tensors(g, f);
    }
}

/// Refuse a location that is absolute or climbs out of `dir`, and data that
/// is missing or past the end of its file.
fn check_external(dir: &Path, model: &str, owner: &str, t: &TensorProto) -> Result<()> {
    let Some(loc) = external_entry(t, "location") else {
        bail!("{model}: {owner}: external data without a 'location' entry");
    };
    let rel = Path::new(loc);
    let mut depth = 0i32;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => {
                bail!("{model}: {owner}: external data location '{loc}' is absolute; it must be relative to the model's folder")
            }
        }
        if depth < 0 {
            bail!("{model}: {owner}: external data location '{loc}' points outside the model's folder {}", dir.display());
        }
    }
    let file = dir.join(rel);
    // A symlink could still lead out: compare resolved paths.
    if let (Ok(d), Ok(f)) = (dir.canonicalize(), file.canonicalize()) {
        if !f.starts_with(&d) {
            bail!("{model}: {owner}: external data location '{loc}' resolves outside the model's folder {}", d.display());
        }
    }
    let size = fs::metadata(&file)
        .map_err(|e| {
            Error(format!(
                "{model}: {owner}: external data file {}: {e}",
                file.display()
            ))
        })?
        .len();
    let num = |key: &str| -> Result<u64> {
        match external_entry(t, key) {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| {
                Error(format!(
                    "{model}: {owner}: external data '{key}' = '{v}' is not a number"
                ))
            }),
        }
    };
    let offset = num("offset")?;
    let length = match external_entry(t, "length") {
        Some(_) => num("length")?,
        None => size.saturating_sub(offset),
    };
    if offset.checked_add(length).is_none_or(|end| end > size) {
        bail!(
            "{model}: {owner}: external data {} has {size} bytes, but offset {offset} + length {length} reaches past its end (truncated data file?)",
            file.display()
        );
    }
    Ok(())
}

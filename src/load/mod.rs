//! Finding and reading runbooks and inventories: the first stage of the pipeline.
//!
//! Receives a runbook name or path and an environment; produces the
//! [`runbook::Runbook`] and [`inventory::Inventory`] models, every value with
//! its position in its file. `decode` turns YAML into the runbook model,
//! `lint` finds the SOP traps in it (`opsrun check`).
//!
//! Runbook lookup order (README, "Runbook format"): a path; else `./runbooks/<name>.yaml`;
//! else the library embedded in the binary at build time.

pub(crate) mod decode;
mod decode_step;
pub mod inventory;
pub mod lint;
pub mod runbook;

use crate::diagnostic::{suggest, SourceFile};
use crate::error::Error;
use crate::yaml;
use inventory::Inventory;
use runbook::Runbook;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The runbooks shipped in the repo's `runbooks/`, embedded by build.rs.
pub mod library {
    include!(concat!(env!("OUT_DIR"), "/library.rs"));

    pub fn get(name: &str) -> Option<&'static str> {
        RUNBOOKS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    pub fn names() -> impl Iterator<Item = &'static str> {
        RUNBOOKS.iter().map(|(n, _)| *n)
    }
}

/// Where a runbook was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Library(String),
}

fn attach(source: &Arc<SourceFile>, e: yaml::Error) -> Error {
    Error::from(e.in_file(source))
}

fn read(path: &Path) -> Result<Arc<SourceFile>, Error> {
    let bytes = std::fs::read(path).map_err(|reason| Error::Read {
        path: path.to_path_buf(),
        reason,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        reason: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ),
    })?;
    Ok(SourceFile::new(path, text))
}

/// A runbook decoded as far as it goes, and the structural problems of the rest.
pub struct Loaded {
    /// The params, vars and steps that decoded; those with a problem are left out.
    pub runbook: Runbook,
    /// Every structural problem of the file, in file order; `None` when it decoded fully.
    pub problems: Option<Error>,
}

impl Loaded {
    /// The runbook, if it decoded fully.
    pub fn complete(self) -> Result<Runbook, Error> {
        self.problems.map_or(Ok(self.runbook), Err)
    }
}

/// Parses and decodes runbook text, keeping what decoded next to the problems:
/// the later stages check the templates of a broken file too (one pass). An
/// error when nothing could be decoded (a YAML error, not a mapping).
pub fn partial_runbook_from_source(source: Arc<SourceFile>) -> Result<Loaded, Error> {
    let root = yaml::parse(&source.text).map_err(|e| attach(&source, e))?;
    let (runbook, mut errs) = decode::decode(&root, source.clone());
    let problems = match errs.len() {
        0 => None,
        1 => Some(attach(&source, errs.remove(0))),
        _ => Some(Error::InvalidAll(
            errs.into_iter().map(|e| e.in_file(&source)).collect(),
        )),
    };
    match runbook {
        Some(runbook) => Ok(Loaded { runbook, problems }),
        // The decoder gives no runbook only with a problem saying why.
        None => {
            Err(problems.unwrap_or_else(|| Error::Usage("the runbook could not be decoded".into())))
        }
    }
}

/// Parses and decodes runbook text; the building block for every lookup.
pub fn runbook_from_source(source: Arc<SourceFile>) -> Result<Runbook, Error> {
    partial_runbook_from_source(source)?.complete()
}

pub fn inventory_from_source(source: Arc<SourceFile>) -> Result<Inventory, Error> {
    let root = yaml::parse(&source.text).map_err(|e| attach(&source, e))?;
    inventory::decode(&root, source.clone()).map_err(|e| attach(&source, e))
}

fn looks_like_path(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".yaml") || spec.ends_with(".yml")
}

/// Finds a runbook by name or path.
pub fn find_runbook(spec: &str, root: &Path) -> Result<(Arc<SourceFile>, Origin), Error> {
    if looks_like_path(spec) {
        let p = PathBuf::from(spec);
        return Ok((read(&p)?, Origin::File(p)));
    }
    for ext in ["yaml", "yml"] {
        let p = root.join("runbooks").join(format!("{spec}.{ext}"));
        if p.is_file() {
            return Ok((read(&p)?, Origin::File(p)));
        }
    }
    if let Some(text) = library::get(spec) {
        let src = SourceFile::new(format!("library:{spec}.yaml"), text);
        return Ok((src, Origin::Library(spec.to_string())));
    }
    let known: Vec<String> = list_runbooks(root).into_iter().map(|(n, _)| n).collect();
    let hint = match suggest(spec, known.iter().map(String::as_str)) {
        Some(s) => format!(", did you mean `{s}`?"),
        None => String::new(),
    };
    Err(Error::RunbookNotFound {
        name: spec.to_string(),
        hint,
        searched: format!(
            "{}/, the built-in library (`opsrun list` shows all)",
            root.join("runbooks").display()
        ),
    })
}

pub fn load_runbook(spec: &str, root: &Path) -> Result<Runbook, Error> {
    load_partial_runbook(spec, root)?.complete()
}

/// [`load_runbook`], keeping what decoded of a runbook with structural problems.
pub fn load_partial_runbook(spec: &str, root: &Path) -> Result<Loaded, Error> {
    let (src, _) = find_runbook(spec, root)?;
    partial_runbook_from_source(src)
}

/// Every runbook name visible from `root`: local files shadow the library.
pub fn list_runbooks(root: &Path) -> Vec<(String, Origin)> {
    let mut out: Vec<(String, Origin)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("runbooks")) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for p in files {
            let is_yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if let (true, Some(stem)) = (is_yaml, p.file_stem().and_then(|s| s.to_str())) {
                out.push((stem.to_string(), Origin::File(p.clone())));
            }
        }
    }
    for name in library::names() {
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), Origin::Library(name.to_string())));
        }
    }
    out
}

/// Loads `-i FILE`, or `inventories/<env>.yaml` under `root`.
pub fn load_inventory(
    env: Option<&str>,
    file: Option<&Path>,
    root: &Path,
) -> Result<Inventory, Error> {
    let path = match (file, env) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(env)) => {
            let dir = root.join("inventories");
            let p = ["yaml", "yml"]
                .iter()
                .map(|ext| dir.join(format!("{env}.{ext}")))
                .find(|p| p.is_file());
            match p {
                Some(p) => p,
                None => {
                    let known = list_envs(root);
                    let hint = match suggest(env, known.iter().map(String::as_str)) {
                        Some(s) => format!("; did you mean `{s}`?"),
                        None if known.is_empty() => {
                            format!("; no inventories in {}", dir.display())
                        }
                        None => format!("; known environments: {}", known.join(", ")),
                    };
                    return Err(Error::InventoryNotFound {
                        env: env.to_string(),
                        path: dir.join(format!("{env}.yaml")),
                        hint,
                    });
                }
            }
        }
        (None, None) => {
            return Err(Error::Usage(
                "no inventory: give `--env ENV` (reads inventories/ENV.yaml) or `-i FILE`".into(),
            ))
        }
    };
    let inv = inventory_from_source(read(&path)?)?;
    match (env, file) {
        // `-i` with `--env`: never a rename, or a file of other hosts could pose as
        // the named environment in the records and answer its typed gate.
        (Some(env), Some(_)) if env != inv.name => Err(Error::EnvMismatch {
            given: env.to_string(),
            name: inv.name.clone(),
            path,
        }),
        (Some(env), None) if env != inv.name => Err(Error::MisnamedInventory {
            name: inv.name.clone(),
            path,
        }),
        _ => Ok(inv),
    }
}

pub fn list_envs(root: &Path) -> Vec<String> {
    let mut envs: Vec<String> = std::fs::read_dir(root.join("inventories"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    let ok = matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"));
                    ok.then(|| p.file_stem()?.to_str().map(str::to_string))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    envs.sort();
    envs
}

//! Reads manifest inputs for `apply` and `delete -f`: a file, every `.yaml`/`.yml`/`.json` file
//! of a directory (sorted, not recursive), or `-` for standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::exit::{CliError, CliResult};

/// One manifest source: the name errors will show, and its text.
pub type Source = (String, String);

/// Reads every source named by `-f` arguments, in order.
pub fn read_sources(paths: &[PathBuf]) -> CliResult<Vec<Source>> {
    let mut sources = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|error| CliError::data(format!("<stdin>: cannot read: {error}")))?;
            sources.push(("<stdin>".to_string(), text));
        } else if path.is_dir() {
            let files = manifest_files(path)?;
            if files.is_empty() {
                return Err(CliError::data(format!(
                    "{}: directory holds no .yaml, .yml or .json file",
                    path.display()
                )));
            }
            for file in files {
                sources.push(read_file(&file)?);
            }
        } else {
            sources.push(read_file(path)?);
        }
    }
    Ok(sources)
}

fn manifest_files(dir: &Path) -> CliResult<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|error| {
        CliError::data(format!("{}: cannot read directory: {error}", dir.display()))
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|error| CliError::data(format!("{}: {error}", dir.display())))?
            .path();
        let is_manifest = matches!(
            path.extension().and_then(|ext| ext.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if path.is_file() && is_manifest {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_file(path: &Path) -> CliResult<Source> {
    let meta = std::fs::metadata(path)
        .map_err(|error| CliError::data(format!("{}: {error}", path.display())))?;
    if meta.len() > drover_api::manifest::MAX_MANIFEST_BYTES as u64 {
        return Err(CliError::data(format!(
            "{}: manifest is {} bytes, over the limit of {} bytes",
            path.display(),
            meta.len(),
            drover_api::manifest::MAX_MANIFEST_BYTES
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::data(format!("{}: cannot read: {error}", path.display())))?;
    Ok((path.display().to_string(), text))
}

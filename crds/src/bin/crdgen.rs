//! Prints (or writes, or checks) the CustomResourceDefinitions of the Ironvisor API.
//!
//! ```text
//! crdgen                              # both CRDs on stdout, separated by ---
//! crdgen --out-dir crds/generated     # one file per CRD
//! crdgen --check crds/generated       # exit 1 if the files are out of date
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use ironvisor_crds::crd::{CrdError, CrdKind, REGENERATE_COMMAND};

/// Command line of crdgen.
#[derive(Debug, Parser)]
#[command(about = "Print, write or check the Ironvisor CRDs")]
struct Args {
    /// Write one `<crd name>.yaml` file per CRD into this directory.
    #[arg(long, conflicts_with = "check")]
    out_dir: Option<PathBuf>,
    /// Compare the files in this directory with the generated CRDs.
    #[arg(long)]
    check: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum CrdgenError {
    #[error(transparent)]
    Crd(#[from] CrdError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is out of date or missing ({reason}); regenerate with: {REGENERATE_COMMAND}")]
    OutOfDate { path: PathBuf, reason: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (&args.out_dir, &args.check) {
        (Some(dir), _) => write_all(dir),
        (None, Some(dir)) => check_all(dir),
        (None, None) => print_all(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("crdgen: {error}");
            ExitCode::FAILURE
        }
    }
}

fn print_all() -> Result<(), CrdgenError> {
    let mut documents = Vec::new();
    for kind in CrdKind::ALL {
        documents.push(kind.yaml()?);
    }
    print!("{}", documents.join("---\n"));
    Ok(())
}

fn write_all(dir: &Path) -> Result<(), CrdgenError> {
    std::fs::create_dir_all(dir).map_err(|source| CrdgenError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for kind in CrdKind::ALL {
        let path = dir.join(kind.file_name());
        std::fs::write(&path, kind.yaml()?).map_err(|source| CrdgenError::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn check_all(dir: &Path) -> Result<(), CrdgenError> {
    for kind in CrdKind::ALL {
        let path = dir.join(kind.file_name());
        let expected = kind.yaml()?;
        match std::fs::read_to_string(&path) {
            Ok(found) if found == expected => {}
            Ok(_) => {
                return Err(CrdgenError::OutOfDate {
                    path,
                    reason: "content differs".into(),
                })
            }
            Err(error) => {
                return Err(CrdgenError::OutOfDate {
                    path,
                    reason: error.to_string(),
                })
            }
        }
    }
    Ok(())
}

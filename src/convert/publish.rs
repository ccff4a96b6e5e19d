//! A run's outputs (the bmodel, `model.log`, `config/`) are written under temporary names in
//! the output folder and renamed into place together at the end; the caller writes
//! `manifest.json` after them (it records the published bmodel's file stamp). A failed run
//! leaves the previous run's outputs as they were; one stopped between the renames and the
//! manifest leaves an earlier manifest whose stamp no longer matches the new bmodel.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct Staging {
    out_dir: PathBuf,
    /// (staged path, final path), in publishing order.
    entries: Vec<(PathBuf, PathBuf)>,
    published: bool,
}

impl Staging {
    pub fn new(out_dir: &Path) -> Staging {
        Staging {
            out_dir: out_dir.to_path_buf(),
            entries: Vec::new(),
            published: false,
        }
    }

    /// Where to write the output `name` until [`Self::publish`].
    pub fn file(&mut self, name: &str) -> PathBuf {
        let staged = self
            .out_dir
            .join(format!(".{name}.staged.{}", std::process::id()));
        self.entries.push((staged.clone(), self.out_dir.join(name)));
        staged
    }

    /// A fresh folder standing in for the output folder `name` until [`Self::publish`].
    pub fn dir(&mut self, name: &str) -> Result<PathBuf> {
        let staged = self.file(name);
        let _ = std::fs::remove_dir_all(&staged);
        std::fs::create_dir_all(&staged)
            .with_context(|| format!("creating {}", staged.display()))?;
        Ok(staged)
    }

    /// Renames everything into place, in the order it was staged.
    pub fn publish(mut self) -> Result<()> {
        for (staged, target) in &self.entries {
            if staged.is_dir() && target.is_dir() {
                std::fs::remove_dir_all(target)
                    .with_context(|| format!("replacing {}", target.display()))?;
            }
            std::fs::rename(staged, target)
                .with_context(|| format!("moving {} into place", target.display()))?;
        }
        self.published = true;
        Ok(())
    }
}

impl Drop for Staging {
    /// A run that stops before publishing leaves no staged file behind.
    fn drop(&mut self) {
        if self.published {
            return;
        }
        for (staged, _) in &self.entries {
            let _ = std::fs::remove_file(staged);
            let _ = std::fs::remove_dir_all(staged);
        }
    }
}

/// After a failed run (without `--debug`), the work folder keeps only the piece logs: the
/// exported ONNX and each piece's work files go.
pub fn clean_failed_work(folder: &Path) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_appear_together_or_not_at_all() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir(out.path().join("config")).unwrap();
        std::fs::write(out.path().join("config/old.json"), b"old").unwrap();
        std::fs::write(out.path().join("manifest.json"), b"old").unwrap();
        {
            let mut s = Staging::new(out.path());
            std::fs::write(s.file("a.bmodel"), b"new").unwrap();
            std::fs::write(s.dir("config").unwrap().join("new.json"), b"new").unwrap();
            std::fs::write(s.file("manifest.json"), b"new").unwrap();
            // Dropped unpublished: the earlier outputs stay, nothing staged is left.
        }
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(out.path()), ["config", "manifest.json"]);
        assert_eq!(
            std::fs::read(out.path().join("manifest.json")).unwrap(),
            b"old"
        );
        let mut s = Staging::new(out.path());
        std::fs::write(s.file("a.bmodel"), b"new").unwrap();
        std::fs::write(s.dir("config").unwrap().join("new.json"), b"new").unwrap();
        std::fs::write(s.file("manifest.json"), b"new").unwrap();
        s.publish().unwrap();
        assert_eq!(names(out.path()), ["a.bmodel", "config", "manifest.json"]);
        assert_eq!(names(&out.path().join("config")), ["new.json"]);
        assert_eq!(
            std::fs::read(out.path().join("manifest.json")).unwrap(),
            b"new"
        );
    }
}

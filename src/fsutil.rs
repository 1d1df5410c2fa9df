//! File and directory writes that never leave a half-written file behind.

use std::fs::{self, File};
use std::path::Path;

use anyhow::{Context, Result};

/// Writes through `fill` into a temp file beside `path`, fsyncs it, renames it over `path` and
/// fsyncs the directory. On any error the temp file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, fill: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!("cannot write {}: directory {} does not exist", path.display(), dir.display());
    }
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Builds a directory through `fill` in a temp directory beside `out` and renames it into place,
/// so a failure leaves nothing behind and an existing `out` (replaced only with `force`) is
/// replaced whole or not at all.
pub fn write_dir_atomically(out: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out.exists() && !force {
        anyhow::bail!("{} exists; pass --force to replace it", out.display());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = out.file_name().with_context(|| format!("{} is not a directory path", out.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    fs::rename(&tmp, out).with_context(|| format!("cannot move the output into {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_neither_target_nor_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let err = write_atomically(&target, |_| Err(std::io::Error::other("disk on fire"))).unwrap_err();
        assert!(format!("{err:#}").contains("disk on fire"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        write_atomically(&target, |f| std::io::Write::write_all(f, b"ok")).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"ok");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

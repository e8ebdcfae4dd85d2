//! The files the log is made of, behind a seam: [`Storage`] is one flat directory of files
//! with exactly the operations the log needs — positioned reads and writes, `fdatasync`,
//! preallocation, and the directory operations whose durability needs a directory `fsync`.
//!
//! The daemon uses [`FsStorage`] (the real file system). Tests and the simulator use
//! [`SimDisk`](crate::sim::SimDisk), which keeps every write that was not synced apart and,
//! at a simulated crash, drops, tears or partly keeps them — the power-loss behaviour a real
//! disk has and a real test cannot trigger on demand. Everything that decides what is durable
//! (the segment log, checkpoints, the base) goes through this seam, so the same code runs on
//! both; sled, which holds only what can be rebuilt from these files, does not.
//!
//! Names are plain file names (no `/`): each directory of the data dir is its own `Storage`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One directory of files. Every method is one system call or a few, and none is durable on
/// its own: file contents need [`StorageFile::sync_data`], directory entries (create,
/// rename, remove) need [`Storage::sync_dir`].
pub trait Storage: Send + Sync + 'static {
    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a file, empty (an existing one of that name is emptied).
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// The names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file, replacing any file of the new name.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes the directory's entries durable: files created, renamed or removed in it.
    fn sync_dir(&self) -> io::Result<()>;
    /// Bytes free for this directory's files (`statvfs`'s `f_bavail`).
    fn free_bytes(&self) -> io::Result<u64>;
    /// Where the directory is, for messages.
    fn describe(&self) -> String;
}

/// One open file.
// A file's length is a position to write at, never asked as "is it empty".
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`; a read past the end is an
    /// [`io::ErrorKind::UnexpectedEof`] error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's size.
    fn len(&self) -> io::Result<u64>;
    /// Cuts or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk space for the file's first `len` bytes, extending its size with zeros
    /// if it is shorter (`fallocate` mode 0): writes inside that space cannot fail for want
    /// of room. `ENOSPC` (an error of kind [`io::ErrorKind::StorageFull`]) when there is not
    /// enough.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the file's contents and size are durable when this returns.
    fn sync_data(&self) -> io::Result<()>;
}

/// The real file system: one directory.
#[derive(Debug, Clone)]
pub struct FsStorage {
    dir: PathBuf,
}

impl FsStorage {
    /// The directory at `dir`, created (and its creation made durable) if missing.
    pub fn open(dir: &Path) -> io::Result<FsStorage> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(FsStorage {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a plain file name"),
            ));
        }
        Ok(self.dir.join(name))
    }
}

impl Storage for FsStorage {
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(name)?)?;
        Ok(Arc::new(FsFile(file)))
    }

    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(name)?)?;
        Ok(Arc::new(FsFile(file)))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name)?)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from)?, self.path(to)?)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn free_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.dir).map_err(io::Error::from)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// A real file.
#[derive(Debug)]
struct FsFile(File);

impl StorageFile for FsFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // A file system without fallocate (some network ones): reserve by writing zeros
            // past the end, which allocates as well where allocation happens at write time.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                let have = self.len()?;
                if have >= len {
                    return Ok(());
                }
                let zeros = vec![0u8; 1 << 20];
                let mut at = have;
                while at < len {
                    let n = (len - at).min(zeros.len() as u64) as usize;
                    self.0.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// True for the errors a full disk gives (`ENOSPC`, `EDQUOT`).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(28)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_write_read_allocate_and_list() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FsStorage::open(&tmp.path().join("d")).unwrap();
        let f = s.create("a").unwrap();
        f.allocate(4096).unwrap();
        assert_eq!(f.len().unwrap(), 4096);
        f.write_all_at(b"hello", 10).unwrap();
        f.sync_data().unwrap();
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, 10).unwrap();
        assert_eq!(&buf, b"hello");
        let err = f.read_exact_at(&mut buf, 4094).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        s.rename("a", "b").unwrap();
        s.sync_dir().unwrap();
        assert_eq!(s.list().unwrap(), vec!["b".to_string()]);
        assert!(s.free_bytes().unwrap() > 0);
        assert!(s.open("a").is_err());
        assert!(s.open("../x").is_err());
        s.remove("b").unwrap();
        assert!(s.list().unwrap().is_empty());
    }
}

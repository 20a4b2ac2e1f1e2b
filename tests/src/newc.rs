//! A writer for the `newc` cpio format the Linux initramfs unpacker reads.
//!
//! Only what the rig appends is supported: directories and regular files owned by root.
//! Linux unpacks concatenated archives, so this archive goes after `l1-base.cpio`.

use crate::error::RigError;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
/// Inode numbers well above what `cpio` gave the base archive (only hard links use them).
const FIRST_INODE: u32 = 0x4000_0000;

/// Builds a newc archive in memory.
#[derive(Debug)]
pub struct NewcWriter {
    buf: Vec<u8>,
    next_inode: u32,
}

impl Default for NewcWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl NewcWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self { buf: Vec::new(), next_inode: FIRST_INODE }
    }

    /// Adds a directory (`path` without a leading '/'; parents must come first).
    pub fn dir(&mut self, path: &str, perm: u32) {
        let inode = self.take_inode();
        self.header(inode, S_IFDIR | (perm & 0o7777), 2, 0, path);
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), RigError> {
        let len = u32::try_from(data.len())
            .map_err(|_| RigError::CpioEntryTooLarge { path: path.to_string(), len: data.len() })?;
        let inode = self.take_inode();
        self.header(inode, S_IFREG | (perm & 0o7777), 1, len, path);
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    /// Ends the archive with its trailer and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, TRAILER);
        self.buf
    }

    fn take_inode(&mut self) -> u32 {
        let inode = self.next_inode;
        self.next_inode = self.next_inode.wrapping_add(1);
        inode
    }

    fn header(&mut self, inode: u32, mode: u32, nlink: u32, filesize: u32, name: &str) {
        let name = name.trim_start_matches('/');
        // The name size counts the terminating NUL; names here are short paths.
        let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        let fields = [
            inode, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime
            filesize, 0, 0, 0, 0, // dev major/minor, rdev major/minor
            namesize, 0, // check
        ];
        self.buf.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.buf.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(entry: &[u8], index: usize) -> u32 {
        let start = 6 + index * 8;
        let text = std::str::from_utf8(&entry[start..start + 8]).unwrap();
        u32::from_str_radix(text, 16).unwrap()
    }

    #[test]
    fn file_entry_layout() {
        let mut writer = NewcWriter::new();
        writer.file("/cases.sh", 0o755, b"echo hi\n").unwrap();
        let bytes = writer.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(field(&bytes, 1), S_IFREG | 0o755);
        assert_eq!(field(&bytes, 6), 8);
        assert_eq!(field(&bytes, 11), "cases.sh".len() as u32 + 1);
        // 110-byte header + "cases.sh\0" = 119, padded to 120; then 8 data bytes.
        assert_eq!(&bytes[110..119], b"cases.sh\0");
        assert_eq!(&bytes[120..128], b"echo hi\n");
        assert_eq!(&bytes[128..134], b"070701");
        assert!(bytes.len() % 4 == 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn directory_entry_and_padding() {
        let mut writer = NewcWriter::new();
        writer.dir("cases", 0o755);
        writer.file("cases/01.sh", 0o644, b"x").unwrap();
        let bytes = writer.finish();
        assert_eq!(field(&bytes, 1), S_IFDIR | 0o755);
        assert_eq!(field(&bytes, 4), 2);
        // Second entry starts 4-aligned after "cases\0" (110 + 6 = 116).
        assert_eq!(&bytes[116..122], b"070701");
        assert_ne!(field(&bytes, 0), field(&bytes[116..], 0));
    }

    /// GNU cpio (installed by images/host-deps.sh) must list what we write.
    #[test]
    fn gnu_cpio_reads_it() {
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return; // No cpio on this machine: the layout tests above still ran.
        };
        let mut writer = NewcWriter::new();
        writer.dir("cases", 0o755);
        writer.file("cases/01-a.sh", 0o644, b"echo a\n").unwrap();
        writer.file("cases.sh", 0o755, b"sh /cases/01-a.sh\n").unwrap();
        let bytes = writer.finish();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "cases\ncases/01-a.sh\ncases.sh\n");
    }
}

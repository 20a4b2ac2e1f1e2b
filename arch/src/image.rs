//! Recognising and unpacking an arm64 Linux kernel as distributions ship it.
//!
//! The result is always the raw `Image` (Documentation/arch/arm64/booting.rst) ready to copy
//! into guest RAM. Accepted inputs:
//! - a raw `Image` (Debian's `/boot/vmlinuz-*`; it starts with the EFI stub's "MZ" but is still
//!   a raw Image: the magic at offset 0x38 decides);
//! - a gzip- or zstd-compressed Image (Ubuntu's `/boot/vmlinuz-*`, `Image.gz`, `Image.zst`);
//! - an EFI zboot image (Fedora's `/boot/vmlinuz-*`) with a gzip or zstd payload.
//!
//! We don't use `linux-loader` here: its arm64 Image (PE) loader only compiles on aarch64 hosts,
//! and this logic must be unit-tested on any host and shared with the macOS backend. It also
//! knows nothing about compressed or zboot kernels.

use std::fmt;
use std::io::Read;

use crate::layout::MIB;

/// Length of the arm64 Image header.
pub const HEADER_LEN: usize = 64;
/// "ARM\x64", little-endian, at offset 0x38 of the Image header.
pub const ARM64_IMAGE_MAGIC: u32 = 0x644d_5241;
/// Decompressed kernels larger than this are refused, so a corrupt or hostile file (a
/// "zip bomb") fails with an error instead of using up host memory.
pub const MAX_DECOMPRESSED_SIZE: u64 = 512 * MIB;
/// text_offset assumed for kernels older than 3.17, whose header has `image_size == 0`.
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// Room for BSS and early allocations added to the file length of a pre-3.17 kernel, which
/// does not say how much memory it needs past the end of the file. Such kernels had a few MiB
/// of BSS; 16 MiB is generous.
pub const LEGACY_BSS_ALLOWANCE: u64 = 16 * MIB;

const MAGIC_OFFSET: usize = 0x38;
const FLAG_BIG_ENDIAN: u64 = 1 << 0;
const FLAG_PAGE_SIZE_SHIFT: u64 = 1;
const FLAG_PAGE_SIZE_MASK: u64 = 0b11;
/// text_offset has always been below 2 MiB (the Image sits at a 2 MiB-aligned base plus
/// text_offset); anything else is a corrupt header.
const MAX_TEXT_OFFSET: u64 = 2 * MIB;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
/// The kernel build compresses with `lz4 -l`, the legacy frame format.
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const BZIP2_MAGIC: [u8; 3] = *b"BZh";
const LZMA_MAGIC: [u8; 3] = [0x5d, 0x00, 0x00];
const LZO_MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const UIMAGE_MAGIC: [u8; 4] = 0x2705_1956u32.to_be_bytes();
const MZ_MAGIC: [u8; 2] = *b"MZ";
const X86_SETUP_MAGIC_OFFSET: usize = 0x202;
const X86_SETUP_MAGIC: [u8; 4] = *b"HdrS";
const ARM32_ZIMAGE_MAGIC_OFFSET: usize = 0x24;
const ARM32_ZIMAGE_MAGIC: u32 = 0x016f_2818;
const RISCV_IMAGE_MAGIC_OFFSET: usize = 0x38;
const RISCV_IMAGE_MAGIC: [u8; 4] = *b"RSC\x05";

// EFI zboot header (drivers/firmware/efi/libstub/zboot-header.S): "MZ", "zimg", then the
// payload's offset and size from the start of the file, and the compression name.
const ZBOOT_TYPE_OFFSET: usize = 4;
const ZBOOT_TYPE: [u8; 4] = *b"zimg";
const ZBOOT_PAYLOAD_OFFSET_OFFSET: usize = 8;
const ZBOOT_PAYLOAD_SIZE_OFFSET: usize = 12;
const ZBOOT_COMPRESSION_OFFSET: usize = 24;
/// The compression name runs up to the PE header pointer at 0x3c.
const ZBOOT_COMPRESSION_END: usize = 0x3c;

/// How the kernel file was packaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raw arm64 Image.
    Raw,
    /// A gzip-compressed Image (e.g. Ubuntu's vmlinuz, `Image.gz`).
    Gzip,
    /// A zstd-compressed Image (`Image.zst`).
    Zstd,
    /// An EFI zboot PE file (e.g. Fedora's vmlinuz) holding a compressed Image.
    EfiZboot {
        /// The compression named in the zboot header ("gzip", "zstd").
        compression: String,
    },
}

impl ImageFormat {
    /// The packaging alone, e.g. "gzip-compressed", used in messages about the contents.
    fn packaging(&self) -> String {
        match self {
            Self::Raw => "raw".to_string(),
            Self::Gzip => "gzip-compressed".to_string(),
            Self::Zstd => "zstd-compressed".to_string(),
            Self::EfiZboot { compression } => format!("EFI zboot ({compression})"),
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} arm64 Image", self.packaging())
    }
}

/// Errors recognising or unpacking a kernel. The messages say what the file is and what to pass
/// instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// Zero-length file.
    #[error("kernel file is empty; pass an arm64 Linux Image, e.g. arch/arm64/boot/Image or /boot/vmlinuz-*")]
    Empty,
    /// Shorter than the 64-byte Image header and not recognisable.
    #[error(
        "kernel file is only {len} bytes, shorter than the {HEADER_LEN}-byte arm64 Image header; \
         pass an arm64 Linux Image, e.g. arch/arm64/boot/Image or /boot/vmlinuz-*"
    )]
    TooShort {
        /// File length.
        len: usize,
    },
    /// The header says the kernel is big-endian.
    #[error(
        "kernel is a big-endian arm64 Image; Aperture boots little-endian kernels only, \
         rebuild it without CONFIG_CPU_BIG_ENDIAN"
    )]
    BigEndian,
    /// text_offset outside what any real kernel uses.
    #[error(
        "kernel header has text_offset {0:#x}, which is not a 4 KiB-aligned offset below 2 MiB; \
         the Image is corrupt, pass an intact arm64 Image"
    )]
    BadTextOffset(u64),
    /// The header's image_size is smaller than the file itself.
    #[error(
        "kernel header says the Image needs {image_size} bytes but the file is {file_len} bytes; \
         the file is corrupt or has data appended, pass an intact arm64 Image"
    )]
    ImageSizeTooSmall {
        /// image_size from the header.
        image_size: u64,
        /// Length of the (decompressed) Image.
        file_len: u64,
    },
    /// The compressed stream is corrupt or truncated.
    #[error("{compression} kernel could not be decompressed ({reason}); the file is corrupt or truncated, copy it again")]
    Decompress {
        /// "gzip" or "zstd".
        compression: &'static str,
        /// What the decoder found.
        reason: DecompressFault,
    },
    /// Decompression produced more than [`MAX_DECOMPRESSED_SIZE`].
    #[error(
        "{compression} kernel decompresses to more than {limit_mib} MiB, far larger than any \
         kernel; the file is corrupt or not a kernel"
    )]
    DecompressedTooLarge {
        /// "gzip" or "zstd".
        compression: &'static str,
        /// The limit in MiB.
        limit_mib: u64,
    },
    /// The zboot header points outside the file.
    #[error(
        "kernel is an EFI zboot image whose payload ({size} bytes at offset {offset}) does not fit \
         in the {file_len}-byte file; the file is truncated or corrupt, copy it again"
    )]
    ZbootBadPayload {
        /// Payload offset from the header.
        offset: u64,
        /// Payload size from the header.
        size: u64,
        /// File length.
        file_len: usize,
    },
    /// The zboot header's compression name is not readable text.
    #[error("kernel is an EFI zboot image with an unreadable compression name in its header; the file is corrupt")]
    ZbootBadCompressionName,
    /// A zboot image compressed with something other than gzip or zstd.
    #[error(
        "kernel is an EFI zboot image compressed with {0}; Aperture supports gzip and zstd zboot \
         images: pass the raw Image (arch/arm64/boot/Image) or rebuild with \
         CONFIG_KERNEL_GZIP or CONFIG_KERNEL_ZSTD"
    )]
    ZbootUnsupportedCompression(String),
    /// A compressed kernel whose contents are not a raw Image.
    #[error("{packaging} kernel decompressed to something that is not an arm64 Image: {inner}")]
    NotAnImageInside {
        /// How the outer file was packaged.
        packaging: String,
        /// What is wrong with the contents.
        inner: Box<ImageError>,
    },
    /// Compressed data inside compressed data.
    #[error("kernel is compressed twice; decompress it fully and pass the raw Image")]
    CompressedTwice,
    /// An ELF file, most likely vmlinux.
    #[error("kernel is an ELF file (vmlinux?); pass the arm64 Image, e.g. arch/arm64/boot/Image or /boot/vmlinuz-*")]
    Elf,
    /// An x86 kernel.
    #[error("kernel is an x86 bzImage, not an arm64 kernel; pass an arm64 Image")]
    X86BzImage,
    /// A U-Boot legacy image wrapping the kernel.
    #[error("kernel is a U-Boot uImage; pass the Image inside it (dumpimage -T kernel -o Image -i uImage)")]
    UImage,
    /// A 32-bit Arm kernel.
    #[error("kernel is a 32-bit Arm zImage, not an arm64 kernel; pass an arm64 Image")]
    Arm32ZImage,
    /// A RISC-V kernel.
    #[error("kernel is a RISC-V Image, not an arm64 kernel; pass an arm64 Image")]
    RiscvImage,
    /// A compression Aperture does not unpack itself.
    #[error("kernel is {compression}-compressed; decompress it with `{command}` first, or pass the raw Image")]
    UnsupportedCompression {
        /// Compression name.
        compression: &'static str,
        /// The command that decompresses it.
        command: &'static str,
    },
    /// A PE/EFI binary without the arm64 Image magic.
    #[error("kernel is a PE/EFI binary that is not an arm64 Linux Image; pass an arm64 Image, e.g. arch/arm64/boot/Image or /boot/vmlinuz-*")]
    NotArm64Pe,
    /// Nothing recognisable.
    #[error(
        "kernel is in an unknown format (first bytes: {first_bytes}); pass an arm64 Linux Image, \
         e.g. arch/arm64/boot/Image or /boot/vmlinuz-*"
    )]
    Unknown {
        /// The first bytes of the file in hex.
        first_bytes: String,
    },
}

/// A kernel ready to be copied into guest RAM.
#[derive(Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// The raw Image (decompressed if it came compressed).
    pub image: Vec<u8>,
    /// Offset of the Image from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes of memory the kernel occupies from its load address, including BSS; at least
    /// `image.len()`.
    pub image_size: u64,
    /// How the file was packaged.
    pub format: ImageFormat,
}

// By hand: a derived Debug would print every byte of the kernel.
impl fmt::Debug for KernelImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelImage")
            .field("image_len", &self.image.len())
            .field("text_offset", &self.text_offset)
            .field("image_size", &self.image_size)
            .field("format", &self.format)
            .finish()
    }
}

/// Where a kernel goes and how much room it takes: all the loader needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLayout {
    /// Offset of the Image from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes of memory the kernel occupies from its load address, including BSS.
    pub image_size: u64,
}

/// Bytes of the start of a kernel file [`raw_layout`] looks at.
pub const RAW_HEADER_LEN: usize = 64;

/// For a kernel file of `file_len` bytes that starts with `head` (its first
/// [`RAW_HEADER_LEN`] bytes): the layout if it is an uncompressed Image, whose bytes can then
/// go straight from the file into guest RAM; `None` for anything else (read the whole file
/// and use [`KernelImage::from_bytes`], which also names what is wrong with a bad one).
pub fn raw_layout(head: &[u8], file_len: u64) -> Option<Result<KernelLayout, ImageError>> {
    match identify(head) {
        Ok(Packaging::Raw) => Some(raw_header(head, file_len)),
        _ => None,
    }
}

impl KernelImage {
    /// Where it goes and how much room it takes.
    pub fn layout(&self) -> KernelLayout {
        KernelLayout { text_offset: self.text_offset, image_size: self.image_size }
    }

    /// Recognises the kernel file `data`, decompresses it if needed and validates the Image
    /// header.
    pub fn from_bytes(data: Vec<u8>) -> Result<Self, ImageError> {
        Self::from_bytes_with_limit(data, MAX_DECOMPRESSED_SIZE)
    }

    /// [`Self::from_bytes`] with a chosen decompression limit (tests use a small one).
    fn from_bytes_with_limit(data: Vec<u8>, limit: u64) -> Result<Self, ImageError> {
        match identify(&data)? {
            Packaging::Raw => parse_raw(data, ImageFormat::Raw),
            Packaging::Gzip => parse_contents(gunzip(&data, limit)?, ImageFormat::Gzip),
            Packaging::Zstd => parse_contents(unzstd(&data, limit)?, ImageFormat::Zstd),
            Packaging::EfiZboot => {
                let (compression, payload) = zboot_payload(&data)?;
                let image = match compression.as_str() {
                    "gzip" => gunzip(payload, limit)?,
                    "zstd" => unzstd(payload, limit)?,
                    _ => return Err(ImageError::ZbootUnsupportedCompression(compression)),
                };
                parse_contents(image, ImageFormat::EfiZboot { compression })
            }
        }
    }

    /// Page size the kernel was built for, from the header flags (None if unspecified).
    pub fn page_size(&self) -> Option<u64> {
        let flags = read_u64(&self.image, 24)?;
        match (flags >> FLAG_PAGE_SIZE_SHIFT) & FLAG_PAGE_SIZE_MASK {
            1 => Some(4 << 10),
            2 => Some(16 << 10),
            3 => Some(64 << 10),
            _ => None,
        }
    }
}

/// What [`identify`] found, for the formats Aperture unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packaging {
    Raw,
    Gzip,
    Zstd,
    EfiZboot,
}

/// Decides what `data` is, or says why it cannot be booted.
fn identify(data: &[u8]) -> Result<Packaging, ImageError> {
    if data.is_empty() {
        return Err(ImageError::Empty);
    }
    // zboot first: it starts with "MZ" too, and carries no Image magic at 0x38.
    if data.starts_with(&MZ_MAGIC) && bytes_at(data, ZBOOT_TYPE_OFFSET) == Some(&ZBOOT_TYPE[..]) {
        return Ok(Packaging::EfiZboot);
    }
    if read_u32(data, MAGIC_OFFSET) == Some(ARM64_IMAGE_MAGIC) {
        return Ok(Packaging::Raw);
    }
    if data.starts_with(&GZIP_MAGIC) {
        return Ok(Packaging::Gzip);
    }
    if data.starts_with(&ZSTD_MAGIC) {
        return Ok(Packaging::Zstd);
    }
    Err(describe_foreign(data))
}

/// The error for a file that is not something Aperture boots, naming what it is.
fn describe_foreign(data: &[u8]) -> ImageError {
    let compressed =
        |compression, command| ImageError::UnsupportedCompression { compression, command };
    if data.starts_with(&ELF_MAGIC) {
        ImageError::Elf
    } else if data.starts_with(&UIMAGE_MAGIC) {
        ImageError::UImage
    } else if data.starts_with(&XZ_MAGIC) {
        compressed("xz", "xz -d")
    } else if data.starts_with(&LZ4_FRAME_MAGIC) || data.starts_with(&LZ4_LEGACY_MAGIC) {
        compressed("lz4", "lz4 -d")
    } else if data.starts_with(&BZIP2_MAGIC) {
        compressed("bzip2", "bzip2 -d")
    } else if data.starts_with(&LZO_MAGIC) {
        compressed("lzo", "lzop -d")
    } else if data.starts_with(&LZMA_MAGIC) {
        compressed("lzma", "unlzma")
    // bzImage before the generic PE check: x86 kernels carry an EFI stub ("MZ") too.
    } else if bytes_at(data, X86_SETUP_MAGIC_OFFSET) == Some(&X86_SETUP_MAGIC[..]) {
        ImageError::X86BzImage
    } else if bytes_at(data, RISCV_IMAGE_MAGIC_OFFSET) == Some(&RISCV_IMAGE_MAGIC[..]) {
        ImageError::RiscvImage
    } else if read_u32(data, ARM32_ZIMAGE_MAGIC_OFFSET) == Some(ARM32_ZIMAGE_MAGIC) {
        ImageError::Arm32ZImage
    } else if data.starts_with(&MZ_MAGIC) {
        ImageError::NotArm64Pe
    } else if data.len() < HEADER_LEN {
        ImageError::TooShort { len: data.len() }
    } else {
        let first_bytes = data.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>();
        ImageError::Unknown { first_bytes: first_bytes.join(" ") }
    }
}

/// Parses the decompressed contents of a `format` file, which must be a raw Image.
fn parse_contents(image: Vec<u8>, format: ImageFormat) -> Result<KernelImage, ImageError> {
    let inner = match identify(&image) {
        Ok(Packaging::Raw) => return parse_raw(image, format),
        // Compressed twice: no distribution ships that.
        Ok(_) => ImageError::CompressedTwice,
        Err(e) => e,
    };
    Err(ImageError::NotAnImageInside { packaging: format.packaging(), inner: Box::new(inner) })
}

/// Validates the header of a raw Image.
fn parse_raw(image: Vec<u8>, format: ImageFormat) -> Result<KernelImage, ImageError> {
    let KernelLayout { text_offset, image_size } = raw_header(&image, image.len() as u64)?;
    Ok(KernelImage { image, text_offset, image_size, format })
}

/// Validates the header at the start of a raw Image file of `file_len` bytes.
fn raw_header(head: &[u8], file_len: u64) -> Result<KernelLayout, ImageError> {
    let (Some(text_offset), Some(image_size), Some(flags)) =
        (read_u64(head, 8), read_u64(head, 16), read_u64(head, 24))
    else {
        return Err(ImageError::TooShort { len: head.len() });
    };
    if image_size == 0 {
        // Kernels older than 3.17 leave image_size 0, and their text_offset may be in the
        // kernel's own endianness; booting.rst says to assume 0x80000. They also do not say how
        // much room BSS needs, so reserve the file rounded up to 2 MiB plus a generous allowance.
        let image_size = file_len.next_multiple_of(2 * MIB) + LEGACY_BSS_ALLOWANCE;
        return Ok(KernelLayout { text_offset: LEGACY_TEXT_OFFSET, image_size });
    }
    if flags & FLAG_BIG_ENDIAN != 0 {
        return Err(ImageError::BigEndian);
    }
    // Flags bits 1-2 (page size) only inform; bit 3 (placement anywhere vs. near the start of
    // RAM) needs nothing: the loader always puts the kernel at the 2 MiB-aligned start of RAM.
    if text_offset >= MAX_TEXT_OFFSET || text_offset % 4096 != 0 {
        return Err(ImageError::BadTextOffset(text_offset));
    }
    if image_size < file_len {
        return Err(ImageError::ImageSizeTooSmall { image_size, file_len });
    }
    Ok(KernelLayout { text_offset, image_size })
}

/// Returns the compression name and the compressed payload of an EFI zboot image.
fn zboot_payload(data: &[u8]) -> Result<(String, &[u8]), ImageError> {
    let (Some(offset), Some(size), Some(name)) = (
        read_u32(data, ZBOOT_PAYLOAD_OFFSET_OFFSET),
        read_u32(data, ZBOOT_PAYLOAD_SIZE_OFFSET),
        data.get(ZBOOT_COMPRESSION_OFFSET..ZBOOT_COMPRESSION_END),
    ) else {
        return Err(ImageError::TooShort { len: data.len() });
    };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = &name[..name_len];
    if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ImageError::ZbootBadCompressionName);
    }
    let compression = String::from_utf8_lossy(name).into_owned();
    let bad_payload = ImageError::ZbootBadPayload {
        offset: offset.into(),
        size: size.into(),
        file_len: data.len(),
    };
    let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(size)) else {
        return Err(bad_payload);
    };
    match start.checked_add(len).and_then(|end| data.get(start..end)) {
        Some(payload) if !payload.is_empty() => Ok((compression, payload)),
        _ => Err(bad_payload),
    }
}

/// Decompresses one gzip member.
fn gunzip(data: &[u8], limit: u64) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    read_capped(flate2::read::GzDecoder::new(data), "gzip", limit, &mut out)?;
    Ok(out)
}

/// What a decoder found wrong with a compressed kernel. Comparable (for tests), so an I/O
/// error is kept as its kind and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecompressFault {
    /// The decoder reported an error (its text: decoders' error types differ).
    Decoder(String),
    /// A zstd frame's checksum does not match its data.
    Checksum {
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of the decoded data.
        computed: u32,
    },
}

impl std::fmt::Display for DecompressFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Decoder(text) => f.write_str(text),
            Self::Checksum { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
        }
    }
}

/// Decompresses a zstd stream of one or more frames. Stops at the first bytes that are not a
/// zstd frame: the kernel's zboot build appends the decompressed size after the frame.
fn unzstd(mut data: &[u8], limit: u64) -> Result<Vec<u8>, ImageError> {
    let decode_error =
        |reason: DecompressFault| ImageError::Decompress { compression: "zstd", reason };
    let mut out = Vec::new();
    while data.starts_with(&ZSTD_MAGIC) {
        // A fresh decoder per frame: ruzstd 0.7 enforces a 100 MiB window limit only when a
        // decoder is reused, and `zstd -22 --ultra` (the kernel's zboot build) uses 128 MiB.
        let mut decoder = ruzstd::StreamingDecoder::new(&mut data)
            .map_err(|e| decode_error(DecompressFault::Decoder(e.to_string())))?;
        read_capped(&mut decoder, "zstd", limit, &mut out)?;
        let frame = &decoder.decoder;
        if let (Some(stored), Some(computed)) =
            (frame.get_checksum_from_data(), frame.get_calculated_checksum())
        {
            if stored != computed {
                return Err(decode_error(DecompressFault::Checksum { stored, computed }));
            }
        }
    }
    Ok(out)
}

/// Appends everything `reader` yields to `out`, failing once `out` exceeds `limit` bytes
/// (reading at most one byte past it).
fn read_capped(
    reader: impl Read,
    compression: &'static str,
    limit: u64,
    out: &mut Vec<u8>,
) -> Result<(), ImageError> {
    let room = limit.saturating_add(1).saturating_sub(out.len() as u64);
    reader.take(room).read_to_end(out).map_err(|e| ImageError::Decompress {
        compression,
        reason: DecompressFault::Decoder(e.to_string()),
    })?;
    if out.len() as u64 > limit {
        return Err(ImageError::DecompressedTooLarge { compression, limit_mib: limit / MIB });
    }
    Ok(())
}

fn bytes_at(data: &[u8], offset: usize) -> Option<&[u8]> {
    data.get(offset..offset.checked_add(4)?)
}

fn read_u32(data: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes_at(data, offset)?.try_into().ok()?))
}

fn read_u64(data: &[u8], offset: usize) -> Option<u64> {
    let bytes = data.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Flags: little-endian, 4 KiB pages.
    const FLAGS_LE_4K: u64 = 0b0010;

    /// A synthetic raw Image: a 64-byte header and a `(i % 251)` pattern up to `len` bytes.
    fn raw_image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        v[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b 0x40: skip the header
        v[4..8].fill(0);
        v[8..16].copy_from_slice(&text_offset.to_le_bytes());
        v[16..24].copy_from_slice(&image_size.to_le_bytes());
        v[24..32].copy_from_slice(&flags.to_le_bytes());
        v[32..56].fill(0);
        v[56..60].copy_from_slice(&ARM64_IMAGE_MAGIC.to_le_bytes());
        v[60..64].fill(0);
        v
    }

    fn modern_image() -> Vec<u8> {
        raw_image(0, 2 * MIB, FLAGS_LE_4K, 8192)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// A zstd frame built by hand from uncompressed ("raw") blocks, without a checksum.
    fn zstd_raw_frame(data: &[u8]) -> Vec<u8> {
        const BLOCK: usize = 128 << 10;
        let mut v = ZSTD_MAGIC.to_vec();
        v.push(0x00); // frame header descriptor: no content size, no checksum, no dictionary
        v.push(7 << 3); // window descriptor: 2^(10 + 7) = 128 KiB
        let chunks: Vec<&[u8]> = data.chunks(BLOCK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = u32::from(i + 1 == chunks.len());
            let header = last | ((chunk.len() as u32) << 3); // block type 0: raw
            v.extend_from_slice(&header.to_le_bytes()[..3]);
            v.extend_from_slice(chunk);
        }
        v
    }

    /// A zstd frame of `blocks` run-length-encoded 128 KiB blocks of zeros: a tiny zip bomb.
    fn zstd_rle_frame(blocks: usize) -> Vec<u8> {
        let mut v = ZSTD_MAGIC.to_vec();
        v.extend_from_slice(&[0x00, 7 << 3]);
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            let header = last | (1 << 1) | ((128u32 << 10) << 3);
            v.extend_from_slice(&header.to_le_bytes()[..3]);
            v.push(0);
        }
        v
    }

    /// `modern_image()` compressed by `zstd -22 --ultra` reading stdin, as the kernel's zboot
    /// build does: a 128 MiB window (above ruzstd's reuse limit) and a content checksum.
    const ZSTD_ULTRA_FIXTURE: [u8; 294] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x88, 0xcd, 0x08, 0x00, 0x74, 0x10, 0x10, 0x00, 0x00, 0x14,
        0x00, 0x20, 0x02, 0x00, 0x41, 0x52, 0x4d, 0x64, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46,
        0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55,
        0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x73,
        0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7c, 0x7d, 0x7e, 0x7f, 0x80, 0x81, 0x82,
        0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f, 0x90, 0x91,
        0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f, 0xa0,
        0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
        0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe,
        0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd,
        0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc,
        0xdd, 0xde, 0xdf, 0xe0, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb,
        0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
        0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c,
        0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b,
        0x3c, 0x3d, 0x3e, 0x3f, 0x05, 0x00, 0x7b, 0x61, 0xf7, 0x9b, 0x96, 0x2e, 0x4b, 0x5c, 0x81,
        0xaf, 0xc0, 0x0e, 0xf0, 0x06, 0xc1, 0x14, 0x29, 0x3d,
    ];

    /// An EFI zboot container: the zboot header, a stand-in PE header, the payload at 0x200,
    /// then a 4-byte size trailer and padding as the kernel build leaves them.
    fn zboot(compression: &str, payload: &[u8]) -> Vec<u8> {
        let payload_offset = 0x200usize;
        let mut v = vec![0u8; payload_offset];
        v[0..4].copy_from_slice(b"MZ\0\0");
        v[4..8].copy_from_slice(b"zimg");
        v[8..12].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        v[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        v[24..24 + compression.len()].copy_from_slice(compression.as_bytes());
        v[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        v[0x40..0x44].copy_from_slice(b"PE\0\0");
        v.extend_from_slice(payload);
        v.extend_from_slice(&8192u32.to_le_bytes());
        v.resize(v.len() + 0x100, 0);
        v
    }

    fn parse(data: Vec<u8>) -> Result<KernelImage, ImageError> {
        KernelImage::from_bytes(data)
    }

    #[test]
    fn accepted_formats() {
        let image = modern_image();
        let zstd_with_trailer = [zstd_raw_frame(&image), 8192u32.to_le_bytes().to_vec()].concat();
        let split = [zstd_raw_frame(&image[..100]), zstd_raw_frame(&image[100..])].concat();
        let cases: Vec<(&str, Vec<u8>, ImageFormat)> = vec![
            ("raw", image.clone(), ImageFormat::Raw),
            ("gzip", gzip(&image), ImageFormat::Gzip),
            ("zstd raw blocks", zstd_raw_frame(&image), ImageFormat::Zstd),
            ("zstd size trailer", zstd_with_trailer, ImageFormat::Zstd),
            ("zstd two frames", split, ImageFormat::Zstd),
            ("zstd -22 --ultra", ZSTD_ULTRA_FIXTURE.to_vec(), ImageFormat::Zstd),
            (
                "zboot gzip",
                zboot("gzip", &gzip(&image)),
                ImageFormat::EfiZboot { compression: "gzip".into() },
            ),
            (
                "zboot zstd",
                zboot("zstd", &ZSTD_ULTRA_FIXTURE),
                ImageFormat::EfiZboot { compression: "zstd".into() },
            ),
        ];
        for (name, data, format) in cases {
            let k = parse(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(k.format, format, "{name}");
            assert!(k.image == image, "{name}: decompressed bytes differ");
            assert_eq!(k.text_offset, 0, "{name}");
            assert_eq!(k.image_size, 2 * MIB, "{name}");
            assert_eq!(k.page_size(), Some(4096), "{name}");
        }
    }

    #[test]
    fn debian_style_image_with_efi_stub_is_raw() {
        let mut image = raw_image(0, 40 * MIB, 0b0100, 4096);
        image[0..4].copy_from_slice(b"MZ@\xfa"); // the EFI stub's "MZ" disguised as an instruction
        image[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes()); // PE header offset
        let k = parse(image.clone()).unwrap();
        assert_eq!(k.format, ImageFormat::Raw);
        assert_eq!(k.image_size, 40 * MIB);
        assert_eq!(k.page_size(), Some(16 << 10));
        assert!(k.image == image);
    }

    #[test]
    fn raw_layout_reads_the_header_alone() {
        let image = raw_image(0x8_0000, 4 * MIB, FLAGS_LE_4K, 8192);
        let whole = KernelImage::from_bytes(image.clone()).unwrap();
        let head = &image[..RAW_HEADER_LEN];
        assert_eq!(raw_layout(head, image.len() as u64), Some(Ok(whole.layout())));
        // The file length is checked against image_size as for a whole image.
        assert_eq!(
            raw_layout(head, 5 * MIB),
            Some(Err(ImageError::ImageSizeTooSmall { image_size: 4 * MIB, file_len: 5 * MIB }))
        );
        // Anything but a raw Image is left to from_bytes.
        assert_eq!(raw_layout(&gzip(&image)[..RAW_HEADER_LEN], 100), None);
        assert_eq!(raw_layout(b"not a kernel", 12), None);
        assert_eq!(raw_layout(&[], 0), None);
    }

    #[test]
    fn header_fields() {
        let k = parse(raw_image(0x8_0000, 3 * MIB, 0b0110, 4096)).unwrap();
        assert_eq!(
            (k.text_offset, k.image_size, k.page_size()),
            (0x8_0000, 3 * MIB, Some(64 << 10))
        );
        // A header with flags 0 (page size unspecified) is fine.
        let k = parse(raw_image(0, 3 * MIB, 0, 4096)).unwrap();
        assert_eq!(k.page_size(), None);
        // Bit 3 (placement anywhere) needs nothing from us.
        assert!(parse(raw_image(0, 3 * MIB, 0b1010, 4096)).is_ok());
        // image_size exactly the file length is fine.
        assert!(parse(raw_image(0, 4096, 0, 4096)).is_ok());
    }

    #[test]
    fn pre_3_17_kernel_gets_legacy_defaults() {
        let len = 3 * MIB as usize + 5;
        let k = parse(raw_image(0x1234, 0, 0, len)).unwrap();
        assert_eq!(k.text_offset, LEGACY_TEXT_OFFSET);
        assert_eq!(k.image_size, 4 * MIB + LEGACY_BSS_ALLOWANCE);
        assert_eq!(k.image.len(), len);
    }

    #[test]
    fn format_display() {
        assert_eq!(ImageFormat::Raw.to_string(), "raw arm64 Image");
        assert_eq!(ImageFormat::Gzip.to_string(), "gzip-compressed arm64 Image");
        assert_eq!(ImageFormat::Zstd.to_string(), "zstd-compressed arm64 Image");
        let zboot = ImageFormat::EfiZboot { compression: "gzip".into() };
        assert_eq!(zboot.to_string(), "EFI zboot (gzip) arm64 Image");
    }

    #[test]
    fn debug_does_not_dump_the_image() {
        let k = parse(modern_image()).unwrap();
        let text = format!("{k:?}");
        assert!(text.contains("image_len: 8192"), "{text}");
        assert!(text.len() < 200, "{text}");
    }

    /// A buffer of `len` bytes that starts with `prefix` and has `at` bytes placed at `offset`.
    fn bytes(len: usize, prefix: &[u8], at: Option<(usize, &[u8])>) -> Vec<u8> {
        let mut v = vec![0xaau8; len];
        v[..prefix.len()].copy_from_slice(prefix);
        if let Some((offset, b)) = at {
            v[offset..offset + b.len()].copy_from_slice(b);
        }
        v
    }

    #[test]
    fn rejected_files_say_what_they_are() {
        let compressed =
            |compression, command| ImageError::UnsupportedCompression { compression, command };
        let cases: Vec<(&str, Vec<u8>, ImageError, &str)> = vec![
            ("empty", vec![], ImageError::Empty, "empty"),
            ("short", vec![1, 2, 3], ImageError::TooShort { len: 3 }, "only 3 bytes"),
            ("elf", bytes(4096, b"\x7fELF\x02\x01\x01", None), ImageError::Elf, "vmlinux?"),
            (
                "bzImage",
                bytes(4096, b"MZ", Some((0x202, b"HdrS"))),
                ImageError::X86BzImage,
                "x86 bzImage, not an arm64 kernel",
            ),
            (
                "uImage",
                bytes(4096, &[0x27, 0x05, 0x19, 0x56], None),
                ImageError::UImage,
                "pass the Image inside it",
            ),
            ("xz", bytes(4096, &XZ_MAGIC, None), compressed("xz", "xz -d"), "xz -d"),
            (
                "lz4 frame",
                bytes(4096, &LZ4_FRAME_MAGIC, None),
                compressed("lz4", "lz4 -d"),
                "lz4-compressed",
            ),
            (
                "lz4 legacy",
                bytes(4096, &LZ4_LEGACY_MAGIC, None),
                compressed("lz4", "lz4 -d"),
                "lz4 -d",
            ),
            (
                "bzip2",
                bytes(4096, b"BZh91AY&SY", None),
                compressed("bzip2", "bzip2 -d"),
                "bzip2 -d",
            ),
            (
                "lzma",
                bytes(4096, &[0x5d, 0, 0, 0x80, 0], None),
                compressed("lzma", "unlzma"),
                "lzma",
            ),
            ("lzo", bytes(4096, &LZO_MAGIC, None), compressed("lzo", "lzop -d"), "lzop -d"),
            (
                "arm32 zImage",
                bytes(4096, &[0; 4], Some((0x24, &ARM32_ZIMAGE_MAGIC.to_le_bytes()))),
                ImageError::Arm32ZImage,
                "32-bit Arm",
            ),
            (
                "riscv",
                bytes(4096, b"MZ", Some((0x30, b"RISCV\0\0\0RSC\x05"))),
                ImageError::RiscvImage,
                "RISC-V",
            ),
            (
                "pe",
                bytes(4096, b"MZ\x90\0", None),
                ImageError::NotArm64Pe,
                "PE/EFI binary that is not an arm64 Linux Image",
            ),
            (
                "unknown",
                bytes(4096, &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4], None),
                ImageError::Unknown { first_bytes: "de ad be ef 01 02 03 04".into() },
                "unknown format (first bytes: de ad be ef 01 02 03 04)",
            ),
        ];
        for (name, data, want, text) in cases {
            let err = parse(data).unwrap_err();
            assert_eq!(err, want, "{name}");
            assert!(err.to_string().contains(text), "{name}: {err}");
        }
    }

    #[test]
    fn bad_headers() {
        let cases: Vec<(&str, Vec<u8>, ImageError)> = vec![
            ("big-endian", raw_image(0, 2 * MIB, 0b1011, 4096), ImageError::BigEndian),
            (
                "image_size below file length",
                raw_image(0, 4095, FLAGS_LE_4K, 4096),
                ImageError::ImageSizeTooSmall { image_size: 4095, file_len: 4096 },
            ),
            (
                "text_offset 2 MiB",
                raw_image(2 * MIB, 8 * MIB, 0, 4096),
                ImageError::BadTextOffset(2 * MIB),
            ),
            (
                "text_offset unaligned",
                raw_image(0x80, 8 * MIB, 0, 4096),
                ImageError::BadTextOffset(0x80),
            ),
        ];
        for (name, data, want) in cases {
            assert_eq!(parse(data).unwrap_err(), want, "{name}");
        }
        assert!(ImageError::BigEndian.to_string().contains("little-endian"));
    }

    #[test]
    fn zboot_errors() {
        for compression in ["xz", "lzma", "lz4", "lzo"] {
            let err = parse(zboot(compression, &[1, 2, 3, 4])).unwrap_err();
            assert_eq!(err, ImageError::ZbootUnsupportedCompression(compression.into()));
            let text = err.to_string();
            assert!(
                text.contains(compression) && text.contains("supports gzip and zstd"),
                "{text}"
            );
        }
        let mut past_end = zboot("gzip", &gzip(&modern_image()));
        past_end[12..16].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(matches!(
            parse(past_end).unwrap_err(),
            ImageError::ZbootBadPayload { size: 0x10_0000, .. }
        ));
        let mut wrap = zboot("gzip", &[1]);
        wrap[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        wrap[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(wrap).unwrap_err(), ImageError::ZbootBadPayload { .. }));
        assert!(matches!(
            parse(zboot("gzip", &[])).unwrap_err(),
            ImageError::ZbootBadPayload { .. }
        ));
        assert_eq!(parse(zboot("", &[1])).unwrap_err(), ImageError::ZbootBadCompressionName);
        assert_eq!(
            parse(zboot("gz\u{1}p", &[1])).unwrap_err(),
            ImageError::ZbootBadCompressionName
        );
        assert_eq!(parse(b"MZ\0\0zimg".to_vec()).unwrap_err(), ImageError::TooShort { len: 8 });
        // A zboot whose payload is garbage fails in the decompressor, naming it.
        let err = parse(zboot("zstd", &ZSTD_MAGIC)).unwrap_err();
        assert!(matches!(err, ImageError::Decompress { compression: "zstd", .. }), "{err}");
    }

    #[test]
    fn compressed_files_that_do_not_hold_an_image() {
        let elf = bytes(4096, b"\x7fELF", None);
        let err = parse(gzip(&elf)).unwrap_err();
        assert_eq!(
            err,
            ImageError::NotAnImageInside {
                packaging: "gzip-compressed".into(),
                inner: Box::new(ImageError::Elf)
            }
        );
        assert!(
            err.to_string().starts_with("gzip-compressed kernel decompressed to something"),
            "{err}"
        );
        let err = parse(zboot("zstd", &zstd_raw_frame(&elf))).unwrap_err();
        assert!(err.to_string().contains("EFI zboot (zstd) kernel"), "{err}");
        let err = parse(gzip(&gzip(&modern_image()))).unwrap_err();
        assert!(
            matches!(&err, ImageError::NotAnImageInside { inner, .. } if **inner == ImageError::CompressedTwice),
            "{err}"
        );
        // Bad headers inside are reported too.
        let err = parse(gzip(&raw_image(0, 2 * MIB, 1, 4096))).unwrap_err();
        assert_eq!(err, ImageError::BigEndian);
    }

    #[test]
    fn corrupt_compressed_data() {
        let gz = gzip(&modern_image());
        let err = parse(gz[..gz.len() / 2].to_vec()).unwrap_err();
        assert!(matches!(err, ImageError::Decompress { compression: "gzip", .. }), "{err}");
        let mut bad_crc = gz.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 1;
        assert!(matches!(
            parse(bad_crc).unwrap_err(),
            ImageError::Decompress { compression: "gzip", .. }
        ));

        let err = parse(ZSTD_ULTRA_FIXTURE[..200].to_vec()).unwrap_err();
        assert!(matches!(err, ImageError::Decompress { compression: "zstd", .. }), "{err}");
        let mut bad_checksum = ZSTD_ULTRA_FIXTURE.to_vec();
        *bad_checksum.last_mut().unwrap() ^= 1;
        let err = parse(bad_checksum).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn decompression_is_capped() {
        let limit = MIB;
        let gz_bomb = gzip(&vec![0u8; 2 * MIB as usize]);
        assert!(gz_bomb.len() < 16 << 10);
        let err = KernelImage::from_bytes_with_limit(gz_bomb, limit).unwrap_err();
        assert_eq!(err, ImageError::DecompressedTooLarge { compression: "gzip", limit_mib: 1 });
        assert!(err.to_string().contains("more than 1 MiB"), "{err}");

        let zstd_bomb = zstd_rle_frame(16); // 2 MiB from 4 bytes a block
        let err = KernelImage::from_bytes_with_limit(zstd_bomb.clone(), limit).unwrap_err();
        assert_eq!(err, ImageError::DecompressedTooLarge { compression: "zstd", limit_mib: 1 });
        // The cap counts all frames together.
        let two = [zstd_rle_frame(6), zstd_rle_frame(6)].concat();
        let err = KernelImage::from_bytes_with_limit(two, limit).unwrap_err();
        assert!(matches!(err, ImageError::DecompressedTooLarge { .. }), "{err}");
        let err = KernelImage::from_bytes_with_limit(zboot("zstd", &zstd_bomb), limit).unwrap_err();
        assert!(matches!(err, ImageError::DecompressedTooLarge { .. }), "{err}");
        // Within the limit, the data comes through (and is then rejected as not a kernel).
        let err = KernelImage::from_bytes_with_limit(zstd_rle_frame(2), limit).unwrap_err();
        assert!(matches!(err, ImageError::NotAnImageInside { .. }), "{err}");
        assert_eq!(MAX_DECOMPRESSED_SIZE, 512 * MIB);
    }
}

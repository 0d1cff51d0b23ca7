//! Attachments: the bytes of an `image` or `file` (PDF) input, read once,
//! their kind taken from the bytes (never from the file name), and the
//! token estimate each provider family bills for them.
//!
//! An attachment never reaches a template: a template that reads the input
//! gets its descriptor `{name, mime, bytes}` ([`Attachment::descriptor`]).
//! The bytes go only into a request, through a step's `attachments:`.
//!
//! Token estimates (plan prices, the context-window check), per attachment:
//! - OpenAI-dialect providers: an image is scaled to fit 2048×2048, then its
//!   short side to 768, and costs 85 + 170 per 512-px tile (high detail);
//! - Anthropic: `width × height / 750`, at most 1,600 (larger images are
//!   scaled down by the API);
//! - Gemini: 258 per image; Ollama: 258 per image (Gemma 3's and similar
//!   vision encoders use a fixed count of this order);
//! - a PDF: 1,500 per page (Anthropic and OpenAI send each page's text and
//!   its picture; Gemini bills 258 per page).
//!
//! A stand-in (a plan without the file) is a 1024×1024 image or a one-page
//! PDF.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::policy::ProviderKind;

/// The largest attachment read (the providers' own limits are 20–32 MB).
pub const MAX_ATTACHMENT_BYTES: u64 = 20 * 1024 * 1024;

/// The most pages a PDF is counted with: past it the count is a bound.
const MAX_COUNTED_PAGES: u64 = 2_000;

/// What a model must take to serve a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Pdf,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Pdf => "PDF",
        }
    }
}

/// The formats tollgate sends, recognised by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mime {
    #[serde(rename = "image/png")]
    Png,
    #[serde(rename = "image/jpeg")]
    Jpeg,
    #[serde(rename = "image/gif")]
    Gif,
    #[serde(rename = "image/webp")]
    Webp,
    #[serde(rename = "application/pdf")]
    Pdf,
}

impl Mime {
    pub fn as_str(self) -> &'static str {
        match self {
            Mime::Png => "image/png",
            Mime::Jpeg => "image/jpeg",
            Mime::Gif => "image/gif",
            Mime::Webp => "image/webp",
            Mime::Pdf => "application/pdf",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Mime::Pdf => Kind::Pdf,
            _ => Kind::Image,
        }
    }

    /// The format of `bytes` from their first bytes; `None` for anything
    /// else (a renamed text file among them).
    pub fn sniff(bytes: &[u8]) -> Option<Mime> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Mime::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Mime::Jpeg)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Mime::Gif)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Mime::Webp)
        } else if bytes.starts_with(b"%PDF-") {
            Some(Mime::Pdf)
        } else {
            None
        }
    }
}

/// One attachment's bytes and what is known of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// The file's name (no folders), for the template descriptor.
    pub name: String,
    pub mime: Mime,
    pub data: Arc<[u8]>,
    /// Hex SHA-256 of `data`: the attachment in a request's identity.
    pub sha256: String,
    /// Width and height of an image, read from its header.
    pub dimensions: Option<(u64, u64)>,
    /// Pages of a PDF (its `/Type /Page` objects), at least 1.
    pub pages: Option<u64>,
    /// Where it was read from (absolute), when it came from a file: the
    /// journal keeps it so `--resume` can read the file again (the journal
    /// keeps no bytes).
    pub path: Option<std::path::PathBuf>,
}

/// Why a file cannot be an attachment.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    Read(crate::files::ReadError),
    #[error("not a PNG, JPEG, GIF or WebP image, nor a PDF (read from its first bytes)")]
    UnknownFormat,
    #[error("an image's header cannot be read: {0}")]
    BadImage(String),
    #[error("it is {found}, and the input is of type {expected}")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
    },
}

impl AttachError {
    pub fn hint(&self) -> &'static str {
        match self {
            AttachError::Read(e) => e.hint().unwrap_or(
                "the path is relative to the current directory (in a suite, to the suite file)",
            ),
            AttachError::UnknownFormat | AttachError::BadImage(_) => {
                "give a PNG, JPEG, GIF or WebP file for an image input, a PDF for a file input; the name's extension is not looked at"
            }
            AttachError::WrongKind { .. } => {
                "an `image` input takes PNG, JPEG, GIF or WebP; a `file` input takes PDF"
            }
        }
    }
}

impl Attachment {
    /// Reads the file at `path` (a regular file, at most
    /// [`MAX_ATTACHMENT_BYTES`]) as an attachment of `kind`.
    pub fn load(path: &Path, kind: Kind) -> Result<Attachment, AttachError> {
        let bytes = crate::files::read_bytes_limited(path, MAX_ATTACHMENT_BYTES)
            .map_err(AttachError::Read)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut a = Attachment::from_bytes(name, bytes, kind)?;
        a.path = std::path::absolute(path).ok();
        Ok(a)
    }

    pub fn from_bytes(name: String, bytes: Vec<u8>, kind: Kind) -> Result<Attachment, AttachError> {
        let mime = Mime::sniff(&bytes).ok_or(AttachError::UnknownFormat)?;
        if mime.kind() != kind {
            return Err(AttachError::WrongKind {
                found: if mime.kind() == Kind::Pdf {
                    "a PDF"
                } else {
                    "an image"
                },
                expected: if kind == Kind::Pdf { "file" } else { "image" },
            });
        }
        let (dimensions, pages) = match mime.kind() {
            Kind::Image => {
                let size = imagesize::blob_size(&bytes)
                    .map_err(|e| AttachError::BadImage(e.to_string()))?;
                (Some((size.width as u64, size.height as u64)), None)
            }
            Kind::Pdf => (None, Some(pdf_pages(&bytes))),
        };
        let sha256 = {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(&bytes);
            digest.iter().map(|b| format!("{b:02x}")).collect()
        };
        Ok(Attachment {
            name,
            mime,
            data: bytes.into(),
            sha256,
            dimensions,
            pages,
            path: None,
        })
    }

    /// What a template reading the input sees: never the bytes.
    pub fn descriptor(&self) -> Value {
        json!({"name": self.name, "mime": self.mime.as_str(), "bytes": self.data.len()})
    }

    pub fn base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.data)
    }

    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mime.as_str(), self.base64())
    }
}

/// A step's attachment: its input and, once the value is known, the bytes
/// (a plan without the file has only the declared kind).
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    pub input: String,
    pub kind: Kind,
    pub file: Option<Arc<Attachment>>,
}

impl Attached {
    /// The tokens a provider of `provider`'s family bills for it (see the
    /// module's rule).
    pub fn tokens(&self, provider: ProviderKind) -> u64 {
        let file = self.file.as_deref();
        match self.kind {
            Kind::Image => {
                let (w, h) = file.and_then(|f| f.dimensions).unwrap_or((1024, 1024));
                image_tokens(provider, w, h)
            }
            Kind::Pdf => {
                let pages = file.and_then(|f| f.pages).unwrap_or(1);
                pages
                    * if provider == ProviderKind::Gemini {
                        258
                    } else {
                        1_500
                    }
            }
        }
    }
}

/// All of a step's attachments' tokens on a provider of this kind.
pub fn tokens(list: &[Attached], provider: ProviderKind) -> u64 {
    list.iter().map(|a| a.tokens(provider)).sum()
}

fn image_tokens(provider: ProviderKind, w: u64, h: u64) -> u64 {
    let (w, h) = (w.max(1) as f64, h.max(1) as f64);
    match provider {
        ProviderKind::Anthropic => ((w * h / 750.0).ceil() as u64).clamp(1, 1_600),
        ProviderKind::Gemini | ProviderKind::Ollama => 258,
        _ => {
            let fit = (2048.0 / w.max(h)).min(1.0);
            let (w, h) = (w * fit, h * fit);
            let short = (768.0 / w.min(h)).min(1.0);
            let (w, h) = (w * short, h * short);
            let tiles = ((w / 512.0).ceil() * (h / 512.0).ceil()) as u64;
            85 + 170 * tiles
        }
    }
}

/// A PDF's pages: its `/Type /Page` objects (not `/Pages`), at least 1 and
/// at most [`MAX_COUNTED_PAGES`]. Compressed object streams hide them; then
/// the estimate is one page, which a plan shows as an estimate anyway.
fn pdf_pages(bytes: &[u8]) -> u64 {
    let mut count = 0u64;
    for (i, w) in bytes.windows(5).enumerate() {
        if w != b"/Page" {
            continue;
        }
        if bytes.get(i + 5) == Some(&b's') {
            continue;
        }
        // `/Type /Page` or `/Type/Page`: look back past spaces for `/Type`.
        let before = bytes[..i].trim_ascii_end();
        if before.ends_with(b"/Type") {
            count += 1;
            if count >= MAX_COUNTED_PAGES {
                break;
            }
        }
    }
    count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic_bytes_only() {
        assert_eq!(Mime::sniff(b"\x89PNG\r\n\x1a\nrest"), Some(Mime::Png));
        assert_eq!(Mime::sniff(b"%PDF-1.7\n"), Some(Mime::Pdf));
        assert_eq!(Mime::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Mime::Webp));
        assert_eq!(Mime::sniff(b"hello, I am text"), None);
    }

    #[test]
    fn token_rules_per_provider() {
        // 1024×1024: OpenAI scales to 768×768 → 4 tiles → 85 + 680.
        assert_eq!(image_tokens(ProviderKind::Openai, 1024, 1024), 765);
        // 512×512 is one tile.
        assert_eq!(image_tokens(ProviderKind::Openai, 512, 512), 255);
        assert_eq!(image_tokens(ProviderKind::Anthropic, 750, 100), 100);
        assert_eq!(image_tokens(ProviderKind::Anthropic, 4000, 4000), 1_600);
        assert_eq!(image_tokens(ProviderKind::Gemini, 4000, 4000), 258);
    }

    #[test]
    fn counts_pdf_pages_not_the_page_tree() {
        let pdf = b"%PDF-1.4\n1 0 obj <</Type /Pages /Kids [2 0 R 3 0 R]>>\n2 0 obj <</Type /Page>>\n3 0 obj <</Type/Page>>";
        assert_eq!(pdf_pages(pdf), 2);
        assert_eq!(pdf_pages(b"%PDF-1.4\n"), 1);
    }
}

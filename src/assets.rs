//! Templates and static files compiled into the binary, so that the binary alone serves every
//! page. `template_dir` and `static_dir` are optional overrides: a file there wins over the
//! embedded one of the same name (see `config::Settings::{template_dir, static_dir}` for the
//! defaults).
//!
//! Templates: `rocket_dyn_templates` only loads templates from a directory, and it derives a
//! page's `Content-Type` from the file name (`auth/login.html.hbs` → HTML). Templates registered
//! from memory in its customisation callback would be served as `text/plain`, so when no complete
//! override directory is in effect the embedded templates (overlaid with the override directory's
//! files, if any) are written to a private temporary directory that is its template root. A
//! complete directory (the checkout's `templates/` under `cargo run`) is used as the root itself,
//! so debug builds reload edited templates without a rebuild.
//!
//! Static files: `GET /static/<path..>` from the override directory, else from the binary, with
//! the extension's `Content-Type`, a strong `ETag` (SHA-256 of the content), `304 Not Modified`
//! for a matching `If-None-Match`, and `Cache-Control: public, max-age=3600`.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use rocket::http::{ContentType, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Responder, Response};
use rocket::State;
use rust_embed::RustEmbed;

/// How long browsers may reuse a static file without asking again.
pub const STATIC_CACHE_CONTROL: &str = "public, max-age=3600";
const TEMPLATE_SUFFIX: &str = ".hbs";

#[derive(RustEmbed)]
#[folder = "templates/"]
struct EmbeddedTemplates;

#[derive(RustEmbed)]
#[folder = "static/"]
struct EmbeddedStatic;

/// The directory `rocket_dyn_templates` loads from, and the temporary directory behind it (if
/// any), removed when this is dropped (kept in Rocket's managed state).
pub struct TemplateRoot {
    pub path: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

/// The relative paths (`auth/login.html.hbs`) of the embedded templates.
pub fn embedded_template_files() -> impl Iterator<Item = Cow<'static, str>> {
    EmbeddedTemplates::iter().filter(|name| name.ends_with(TEMPLATE_SUFFIX))
}

/// Choose (or build) the template root: `dir` itself when it holds every embedded template,
/// otherwise a private temporary directory with the embedded templates and `dir`'s on top. The
/// templates of `dir` are compiled first, so that a broken one is named at start.
pub fn template_root(dir: Option<&Path>) -> std::io::Result<TemplateRoot> {
    let overrides = match dir {
        Some(dir) => {
            let files = template_files(dir, Path::new(""))?;
            for relative in &files {
                let text = std::fs::read_to_string(dir.join(relative))?;
                rocket_dyn_templates::handlebars::Template::compile(&text).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", relative.display()))
                })?;
            }
            if embedded_template_files().all(|name| files.iter().any(|f| f == Path::new(&*name))) {
                return Ok(TemplateRoot { path: dir.to_path_buf(), _temporary: None });
            }
            files
        }
        None => Vec::new(),
    };
    // A new directory under a random name, readable by this user only.
    let mut builder = tempfile::Builder::new();
    builder.prefix("tokenvault-templates-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    let temporary = builder.tempdir()?;
    for name in embedded_template_files() {
        let file = EmbeddedTemplates::get(&name).expect("listed by iter()");
        write_under(temporary.path(), Path::new(&*name), &file.data)?;
    }
    if let Some(dir) = dir {
        for relative in &overrides {
            write_under(temporary.path(), relative, &std::fs::read(dir.join(relative))?)?;
        }
        tracing::info!(template_dir = %dir.display(), templates = ?overrides, "templates overridden from template_dir");
    }
    Ok(TemplateRoot { path: temporary.path().to_path_buf(), _temporary: Some(temporary) })
}

fn write_under(root: &Path, relative: &Path, contents: &[u8]) -> std::io::Result<()> {
    let path = root.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents)
}

/// The `*.hbs` files under `base.join(sub)`, recursively, relative to `base`, sorted.
fn template_files(base: &Path, sub: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(base.join(sub))? {
        let relative = sub.join(entry?.file_name());
        let path = base.join(&relative);
        if path.is_dir() {
            found.extend(template_files(base, &relative)?);
        } else if relative.to_string_lossy().ends_with(TEMPLATE_SUFFIX) {
            found.push(relative);
        }
    }
    found.sort();
    Ok(found)
}

/// Where `/static` looks on disk before the embedded files (managed state).
pub struct StaticFiles {
    pub dir: Option<PathBuf>,
}

/// The entity tags a request's `If-None-Match` lists.
pub struct IfNoneMatch(Vec<String>);

impl IfNoneMatch {
    /// Whether `etag` (quoted) is among them; `If-None-Match` uses the weak comparison.
    fn matches(&self, etag: &str) -> bool {
        self.0.iter().any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for IfNoneMatch {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let tags = req
            .headers()
            .get("If-None-Match")
            .flat_map(|value| value.split(','))
            .map(|tag| tag.trim().to_string())
            .filter(|tag| !tag.is_empty())
            .collect();
        Outcome::Success(IfNoneMatch(tags))
    }
}

/// A static file, or `304 Not Modified` when the client's copy is current.
pub struct Asset {
    body: Option<Cow<'static, [u8]>>,
    content_type: ContentType,
    etag: String,
}

impl<'r> Responder<'r, 'static> for Asset {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let mut response = Response::build();
        response.raw_header("ETag", self.etag).raw_header("Cache-Control", STATIC_CACHE_CONTROL);
        match self.body {
            Some(body) => response.header(self.content_type).sized_body(body.len(), Cursor::new(body)),
            None => response.status(Status::NotModified),
        };
        response.ok()
    }
}

/// The content of `relative` (a path Rocket has already cleaned of `..` and dotfiles) and its
/// SHA-256: from `dir` when the file is there, else from the binary.
async fn lookup(dir: Option<&Path>, relative: &Path) -> Option<(Cow<'static, [u8]>, [u8; 32])> {
    if let Some(dir) = dir {
        if let Ok(bytes) = rocket::tokio::fs::read(dir.join(relative)).await {
            use sha2::Digest;
            let hash: [u8; 32] = sha2::Sha256::digest(&bytes).into();
            return Some((Cow::Owned(bytes), hash));
        }
    }
    let name = relative.iter().map(|part| part.to_str()).collect::<Option<Vec<_>>>()?.join("/");
    let file = EmbeddedStatic::get(&name)?;
    Some((file.data, file.metadata.sha256_hash()))
}

#[rocket::get("/<path..>")]
async fn asset(path: PathBuf, files: &State<StaticFiles>, if_none_match: IfNoneMatch) -> Option<Asset> {
    let (bytes, hash) = lookup(files.dir.as_deref(), &path).await?;
    let etag = format!("\"{}\"", crate::util::hex(&hash));
    let content_type = path
        .extension()
        .and_then(|ext| ext.to_str())
        .and_then(ContentType::from_extension)
        .unwrap_or(ContentType::Binary);
    let body = if if_none_match.matches(&etag) { None } else { Some(bytes) };
    Some(Asset { body, content_type, etag })
}

/// The `/static` routes.
pub fn routes() -> Vec<rocket::Route> {
    rocket::routes![asset]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_and_stylesheet_is_embedded() {
        let names: Vec<_> = embedded_template_files().collect();
        for page in ["layouts/base.html.hbs", "auth/login.html.hbs", "errors/error.html.hbs"] {
            assert!(names.iter().any(|n| n == page), "{page} in {names:?}");
        }
        assert!(EmbeddedStatic::get("app.css").is_some());
        assert!(EmbeddedStatic::get("vendor/pico/pico.min.css").is_some());
    }

    #[test]
    fn a_partial_override_is_overlaid_on_the_embedded_templates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("auth")).unwrap();
        std::fs::write(dir.path().join("auth/login.html.hbs"), "custom").unwrap();
        let root = template_root(Some(dir.path())).unwrap();
        assert_ne!(root.path, dir.path(), "an incomplete directory is overlaid, not used alone");
        assert_eq!(std::fs::read_to_string(root.path.join("auth/login.html.hbs")).unwrap(), "custom");
        assert!(root.path.join("layouts/base.html.hbs").is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&root.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the temporary template root is private");
        }
        let path = root.path.clone();
        drop(root);
        assert!(!path.exists(), "removed with the Rocket");
    }

    #[test]
    fn a_complete_directory_is_the_root_itself() {
        let dir = tempfile::tempdir().unwrap();
        for name in embedded_template_files() {
            write_under(dir.path(), Path::new(&*name), b"x").unwrap();
        }
        assert_eq!(template_root(Some(dir.path())).unwrap().path, dir.path());
        let none = template_root(None).unwrap();
        assert!(none.path.join("auth/login.html.hbs").is_file());
    }

    #[test]
    fn a_broken_override_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::write(dir.path().join("home/landing.html.hbs"), "{{#if}}").unwrap();
        let err = template_root(Some(dir.path())).err().unwrap().to_string();
        assert!(err.contains("home/landing.html.hbs"), "{err}");
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let tags = IfNoneMatch(vec!["\"a\"".into(), "W/\"b\"".into()]);
        assert!(tags.matches("\"a\"") && tags.matches("\"b\""));
        assert!(!tags.matches("\"c\""));
        assert!(IfNoneMatch(vec!["*".into()]).matches("\"c\""));
        assert!(!IfNoneMatch(vec![]).matches("\"a\""));
    }
}

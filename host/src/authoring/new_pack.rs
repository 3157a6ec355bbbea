//! `wopbox pack new DIR --lang rust|python|js`: a pack project from a
//! template embedded in the binary (host/templates/), ready to build.
//!
//! Each template has one node with an input, a configuration and a typed
//! failure, a `pack.json` naming it, a `build.sh` that produces the entry the
//! manifest names, and a README. Python and JS projects get their own copy
//! of `wit/node-pack.wit` (the world they are compiled against); the Rust
//! one depends on the `wopbox-pdk` crate of a wopbox checkout by path.

use std::path::{Path, PathBuf};

/// The toolchain versions the templates pin (and `packs/build.sh` uses).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// The WIT world Python and JS packs are compiled against.
const NODE_PACK_WIT: &str = include_str!("../../../wit/node-pack.wit");

/// The checkout this binary was built from: its `pdk/` is the default
/// `wopbox-pdk` for Rust projects.
const BUILT_FROM_PDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../pdk");

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// wopbox-pdk, an RFC 0008 core module (wasm32-unknown-unknown).
    Rust,
    /// componentize-py, a `node-pack` component.
    Python,
    /// componentize-js, a `node-pack` component.
    Js,
}

/// Flags of `wopbox pack new`.
#[derive(clap::Args, Debug, Clone)]
pub struct PackNewArgs {
    /// The project directory to create (must not exist or be empty). Its
    /// last component names the project, the crate and the artifact.
    pub dir: PathBuf,
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The pack's name (reverse-DNS under vendor.*, community.* or
    /// private.*). Default: `vendor.example.<project>`.
    #[arg(long)]
    pub name: Option<String>,
    /// Path of the `wopbox-pdk` crate (Rust only). Default: the `pdk/` of the
    /// checkout this binary was built from.
    #[arg(long)]
    pub pdk: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PackNewError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What was created, for the CLI to print.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    pub dir: PathBuf,
    pub pack: String,
    pub node: String,
    pub entry: String,
    pub files: Vec<String>,
}

/// `my-Pack 2` -> `my_pack_2`: a crate name, a pack-name segment and a file
/// stem at once (lowercase ASCII letters, digits and `_`, starting with a letter).
fn project_slug(dir: &Path) -> Result<String, PackNewError> {
    let raw = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PackNewError::Usage(format!("`{}` has no usable name", dir.display())))?;
    let mut slug: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !slug.starts_with(|c: char| c.is_ascii_lowercase()) {
        slug.insert_str(0, "pack_");
    }
    Ok(slug)
}

/// (relative path, template text) of each file of `lang`'s project.
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml.tmpl"),
            ),
            (
                "src/lib.rs",
                include_str!("../../templates/rust/lib.rs.tmpl"),
            ),
            (
                "pack.json",
                include_str!("../../templates/rust/pack.json.tmpl"),
            ),
            (
                "build.sh",
                include_str!("../../templates/rust/build.sh.tmpl"),
            ),
            (
                "README.md",
                include_str!("../../templates/rust/README.md.tmpl"),
            ),
            (
                ".gitignore",
                include_str!("../../templates/rust/gitignore.tmpl"),
            ),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../../templates/python/app.py.tmpl")),
            (
                "pack.json",
                include_str!("../../templates/python/pack.json.tmpl"),
            ),
            (
                "build.sh",
                include_str!("../../templates/python/build.sh.tmpl"),
            ),
            (
                "README.md",
                include_str!("../../templates/python/README.md.tmpl"),
            ),
            (
                ".gitignore",
                include_str!("../../templates/python/gitignore.tmpl"),
            ),
            ("wit/node-pack.wit", NODE_PACK_WIT),
        ],
        Lang::Js => vec![
            ("app.js", include_str!("../../templates/js/app.js.tmpl")),
            (
                "package.json",
                include_str!("../../templates/js/package.json.tmpl"),
            ),
            (
                "pack.json",
                include_str!("../../templates/js/pack.json.tmpl"),
            ),
            ("build.sh", include_str!("../../templates/js/build.sh.tmpl")),
            (
                "README.md",
                include_str!("../../templates/js/README.md.tmpl"),
            ),
            (
                ".gitignore",
                include_str!("../../templates/js/gitignore.tmpl"),
            ),
            ("wit/node-pack.wit", NODE_PACK_WIT),
        ],
    }
}

fn pdk_path(args: &PackNewArgs) -> Result<String, PackNewError> {
    let given = args.pdk.is_some();
    let path = args
        .pdk
        .clone()
        .unwrap_or_else(|| PathBuf::from(BUILT_FROM_PDK));
    let path = std::fs::canonicalize(&path).map_err(|_| {
        PackNewError::Usage(if given {
            format!("--pdk {}: no such directory", path.display())
        } else {
            format!(
                "this wopbox was built from a checkout whose pdk/ is gone ({}); pass --pdk PATH to a wopbox checkout's pdk/",
                path.display()
            )
        })
    })?;
    if !path.join("Cargo.toml").is_file() {
        return Err(PackNewError::Usage(format!(
            "--pdk {}: not a crate directory (no Cargo.toml)",
            path.display()
        )));
    }
    // A TOML basic string: escape what would end or break it.
    Ok(path
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\""))
}

/// Create the project; refuses to touch a non-empty directory.
pub fn create(args: &PackNewArgs) -> Result<Created, PackNewError> {
    let slug = project_slug(&args.dir)?;
    let pack = args
        .name
        .clone()
        .unwrap_or_else(|| format!("vendor.example.{slug}"));
    // The server's own rule, so the project uploads as generated.
    if !crate::packs::manifest::name_matches_schema(&pack) || pack.starts_with("core.") {
        return Err(PackNewError::Usage(format!(
            "pack name `{pack}` must be reverse-DNS under vendor.*, community.* or private.* (e.g. vendor.acme.{slug})"
        )));
    }
    let node = format!("{pack}.greet");
    let entry = format!("{slug}.wasm");
    let pdk = match args.lang {
        Lang::Rust => pdk_path(args)?,
        Lang::Python | Lang::Js => String::new(),
    };
    if let Ok(mut it) = std::fs::read_dir(&args.dir) {
        if it.next().is_some() {
            return Err(PackNewError::Usage(format!(
                "{} exists and is not empty",
                args.dir.display()
            )));
        }
    }
    let fill = |text: &str| {
        text.replace("__PACK_NAME__", &pack)
            .replace("__NODE_TYPE__", &node)
            .replace("__CRATE__", &slug)
            .replace("__ARTIFACT__", &entry)
            .replace("__PDK_PATH__", &pdk)
            .replace("__COMPONENTIZE_PY__", COMPONENTIZE_PY_VERSION)
            .replace("__COMPONENTIZE_JS__", COMPONENTIZE_JS_VERSION)
    };
    let mut written = Vec::new();
    for (rel, text) in files(args.lang) {
        let path = args.dir.join(rel);
        let write_err = |source| PackNewError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        std::fs::write(&path, fill(text)).map_err(write_err)?;
        if rel.ends_with(".sh") {
            make_executable(&path).map_err(write_err)?;
        }
        written.push(rel.to_string());
    }
    Ok(Created {
        dir: args.dir.clone(),
        pack,
        node,
        entry,
        files: written,
    })
}

#[cfg(unix)]
fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, lang: Lang) -> PackNewArgs {
        PackNewArgs {
            dir: dir.to_path_buf(),
            lang,
            name: None,
            pdk: None,
        }
    }

    #[test]
    fn every_template_fills_every_placeholder_and_names_a_valid_pack() {
        let tmp = tempfile::tempdir().unwrap();
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let dir = tmp.path().join(format!("My-Pack {lang:?}"));
            let c = create(&args(&dir, lang)).unwrap();
            assert_eq!(
                c.pack,
                format!(
                    "vendor.example.my_pack_{}",
                    format!("{lang:?}").to_lowercase()
                )
            );
            for f in &c.files {
                let text = std::fs::read_to_string(dir.join(f)).unwrap();
                let placeholder = text
                    .match_indices("__")
                    .any(|(i, _)| text[i + 2..].starts_with(|c: char| c.is_ascii_uppercase()));
                assert!(!placeholder, "{lang:?} {f} keeps a placeholder:\n{text}");
            }
            let raw: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("pack.json")).unwrap()).unwrap();
            let m = crate::packs::manifest::validate_manifest(&raw).unwrap();
            assert_eq!(m.entry, c.entry);
            assert_eq!(m.nodes[0].type_id, c.node);
        }
    }

    #[test]
    fn refuses_bad_names_a_full_directory_and_a_missing_pdk() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = args(&tmp.path().join("p"), Lang::Js);
        a.name = Some("acme.x".into());
        assert!(matches!(create(&a), Err(PackNewError::Usage(m)) if m.contains("reverse-DNS")));

        std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
        let e = create(&args(tmp.path(), Lang::Python)).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
            "mine"
        );

        let mut a = args(&tmp.path().join("r"), Lang::Rust);
        a.pdk = Some(tmp.path().join("nope"));
        assert!(create(&a).unwrap_err().to_string().contains("--pdk"));
    }
}

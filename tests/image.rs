//! The operator image as a platform team gets it: the OCI archive that
//! `hack/image.sh` builds (no container daemon), unpacked with umoci the way
//! a runtime would, checked for what the chart and the README promise — the
//! user, the entrypoint, nothing but the binary in the filesystem, a size
//! budget — and run from the unpacked rootfs as uid 65532 on a read-only
//! root. A last test holds the Dockerfile to the same image.
//!
//! The archive comes from `BULKHEAD_IMAGE_ARCHIVE` when set (hack/test.sh
//! builds it once and sets it), else this test builds it with hack/image.sh
//! (a release build: minutes when cold). Running the binary needs root, as
//! CI has: `unshare --mount` for the read-only bind mount, `chroot` so the
//! binary sees only the image's files, `--userspec` to drop to 65532.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// What the image may weigh: the compressed layers (what a node pulls) and
/// the unpacked rootfs (what it stores). The stripped musl binary is about
/// 17 MiB, 7 MiB gzipped; these leave room to grow but catch a base image
/// or an unstripped binary slipping in.
const MAX_COMPRESSED_BYTES: u64 = 12 * 1024 * 1024;
const MAX_UNPACKED_BYTES: u64 = 30 * 1024 * 1024;

/// The uid and gid the image and the chart run as (distroless' "nonroot").
const USER: &str = "65532:65532";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The reference hack/image.sh tags (the chart's default image).
fn image_ref() -> String {
    stdout(&run(
        Command::new(repo().join("hack/image.sh")).arg("--print-ref")
    ))
    .trim()
    .to_string()
}

/// The archive under test: the one hack/test.sh built, or a fresh build.
fn archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| match std::env::var_os("BULKHEAD_IMAGE_ARCHIVE") {
        Some(path) => PathBuf::from(path),
        None => {
            let out = run(Command::new(repo().join("hack/image.sh")).stderr(Stdio::inherit()));
            let printed = stdout(&out);
            let last = printed.lines().last().expect("image.sh prints the archive");
            repo().join(last.trim())
        }
    })
}

/// The archive's OCI layout, and the bundle umoci unpacked from it.
struct Unpacked {
    layout: PathBuf,
    bundle: PathBuf,
    ref_name: String,
}

fn unpacked() -> &'static Unpacked {
    static UNPACKED: OnceLock<Unpacked> = OnceLock::new();
    UNPACKED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bulkhead-image-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let layout = dir.join("layout");
        std::fs::create_dir_all(&layout).expect("create layout dir");
        run(Command::new("tar")
            .arg("-xf")
            .arg(archive())
            .arg("-C")
            .arg(&layout));
        let index = json(&layout.join("index.json"));
        let ref_name = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("the archive's manifest names its reference")
            .to_string();
        let bundle = dir.join("bundle");
        // As root, umoci keeps the image's owners and modes, as a runtime does.
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{ref_name}", layout.display()))
            .arg(&bundle));
        Unpacked {
            layout,
            bundle,
            ref_name,
        }
    })
}

fn json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    layout.join("blobs").join("sha256").join(hex)
}

/// The image manifest and its config, straight from the layout's blobs.
fn manifest_and_config() -> (Value, Value) {
    let u = unpacked();
    let index = json(&u.layout.join("index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("index names a manifest");
    let manifest = json(&blob(&u.layout, digest));
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("manifest names a config");
    let config = json(&blob(&u.layout, config_digest));
    (manifest, config)
}

/// Every path under `root`, relative to it, with its metadata (symlinks
/// not followed).
fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.expect("dir entry");
            let meta = std::fs::symlink_metadata(entry.path()).expect("metadata");
            if meta.is_dir() {
                todo.push(entry.path());
            }
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_path_buf();
            out.push((rel, meta));
        }
    }
    out
}

#[test]
fn archive_is_tagged_with_the_charts_default_image() {
    assert_eq!(
        unpacked().ref_name,
        image_ref(),
        "the archive's reference must be what hack/image.sh --print-ref says (the chart's default image)"
    );
    let version = format!("bulkhead:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(image_ref(), version, "default image is bulkhead:<version>");
}

#[test]
fn image_config_runs_bulkhead_as_nonroot_with_labels() {
    let (_, config) = manifest_and_config();
    assert_eq!(config["os"], "linux");
    let c = &config["config"];
    assert_eq!(c["User"], USER, "{c:#}");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/bulkhead", "run"]),
        "{c:#}"
    );
    assert!(
        c["Cmd"].is_null() || c["Cmd"] == serde_json::json!([]),
        "no Cmd: the chart passes only flags: {c:#}"
    );
    assert!(c["ExposedPorts"]["8080/tcp"].is_object(), "{c:#}");
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(labels["org.opencontainers.image.title"], "bulkhead");
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    assert!(
        revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()),
        "revision label is a commit id: {labels:#}"
    );
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{labels:#}"
    );

    // The runtime bundle umoci made says the same (what a runtime would run).
    let runtime = json(&unpacked().bundle.join("config.json"));
    assert_eq!(runtime["process"]["user"]["uid"], 65532, "{runtime:#}");
    assert_eq!(runtime["process"]["user"]["gid"], 65532, "{runtime:#}");
    assert_eq!(
        runtime["process"]["args"],
        serde_json::json!(["/bulkhead", "run"])
    );
}

#[test]
fn rootfs_holds_only_the_binary_and_fits_the_budget() {
    let rootfs = unpacked().bundle.join("rootfs");
    let entries = walk(&rootfs);
    let files: Vec<String> = entries
        .iter()
        .filter(|(_, m)| !m.is_dir())
        .map(|(p, _)| p.display().to_string())
        .collect();
    // Not a shell, not a package manager, not a libc: one file.
    assert_eq!(files, ["bulkhead"], "the rootfs holds more than the binary");
    for (path, _) in &entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        for forbidden in [
            "sh", "bash", "ash", "dash", "busybox", "apt", "apt-get", "dpkg", "apk", "rpm", "yum",
            "dnf",
        ] {
            assert_ne!(name, forbidden, "{} in the image", path.display());
        }
    }

    use std::os::unix::fs::MetadataExt;
    let (_, bin) = entries
        .iter()
        .find(|(p, _)| p == Path::new("bulkhead"))
        .expect("the binary");
    assert_eq!((bin.uid(), bin.gid()), (0, 0), "root owns the binary");
    assert_eq!(bin.mode() & 0o7777, 0o555, "read-only, no setuid");

    let unpacked_bytes: u64 = entries.iter().map(|(_, m)| m.len()).sum();
    let (manifest, _) = manifest_and_config();
    let compressed: u64 = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["size"].as_u64().expect("layer size"))
        .sum();
    eprintln!(
        "image: {compressed} bytes compressed, {unpacked_bytes} unpacked, archive {} bytes",
        std::fs::metadata(archive()).map(|m| m.len()).unwrap_or(0)
    );
    assert!(
        compressed <= MAX_COMPRESSED_BYTES,
        "layers are {compressed} bytes, over the {MAX_COMPRESSED_BYTES} budget"
    );
    assert!(
        unpacked_bytes <= MAX_UNPACKED_BYTES,
        "rootfs is {unpacked_bytes} bytes, over the {MAX_UNPACKED_BYTES} budget"
    );
}

/// `bulkhead ARGS` from the unpacked rootfs: in a private mount namespace
/// the rootfs is bind-mounted onto itself read-only, then `chroot` makes it
/// the process' whole filesystem and `--userspec` drops to 65532 (groups:
/// 65532 only), as a runtime with readOnlyRootFilesystem and runAsUser does.
fn run_in_image(args: &[&str]) -> Output {
    let rootfs = unpacked().bundle.join("rootfs");
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            r#"root="$1"; shift
mount --bind "$root" "$root" && mount -o remount,bind,ro "$root" || exit 99
exec chroot --userspec=65532:65532 "$root" /bulkhead "$@""#,
        )
        .arg("sh")
        .arg(&rootfs)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare (util-linux)")
}

#[test]
fn binary_runs_from_the_image_as_nonroot_on_a_read_only_root() {
    let out = run_in_image(&["version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out).trim(),
        format!("bulkhead {}", env!("CARGO_PKG_VERSION"))
    );

    let out = run_in_image(&["crd"]);
    assert!(out.status.success(), "{out:?}");
    let crds = stdout(&out);
    for kind in ["Organization", "Environment", "DatabaseCluster"] {
        assert!(
            crds.contains(&format!("kind: {kind}\n")),
            "bulkhead crd from the image lacks {kind}"
        );
    }
    assert_eq!(
        crds,
        bulkhead::api::crds_yaml().expect("crds"),
        "the image's binary is this commit's"
    );

    // The root really is read-only there: writing fails, and says why.
    let out = run_in_image(&["crd", "--output-dir", "/crds"]);
    assert!(
        !out.status.success(),
        "wrote into the image's root: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
}

/// The Dockerfile's final stage, read as a person would: one value per
/// instruction, `LABEL` and `ARG` split into their pairs.
#[derive(Default, Debug)]
struct Stage {
    from: String,
    user: String,
    entrypoint: String,
    expose: String,
    labels: BTreeMap<String, String>,
    args: BTreeMap<String, String>,
}

fn dockerfile() -> (Stage, String) {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("read Dockerfile");
    // Join continuation lines, drop comments.
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                if !current.trim().is_empty() {
                    lines.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    let mut stage = Stage::default();
    let mut build = String::new();
    for line in lines {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let rest = rest.trim().to_string();
        match instruction {
            "FROM" => {
                stage = Stage {
                    from: rest,
                    ..Stage::default()
                }
            }
            "USER" => stage.user = rest,
            "ENTRYPOINT" => stage.entrypoint = rest,
            "EXPOSE" => stage.expose = rest,
            "LABEL" | "ARG" => {
                for (k, v) in pairs(&rest) {
                    let map = if instruction == "LABEL" {
                        &mut stage.labels
                    } else {
                        &mut stage.args
                    };
                    map.insert(k, v);
                }
            }
            "RUN" if rest.contains("cargo build") => build = rest,
            _ => {}
        }
    }
    (stage, build)
}

/// `k="v" k2=v2 k3` pairs, quotes removed.
fn pairs(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = match rest.find(['=', ' ']) {
            Some(i) if rest.as_bytes()[i] == b'=' => (&rest[..i], &rest[i + 1..]),
            Some(i) => {
                out.push((rest[..i].to_string(), String::new()));
                rest = rest[i..].trim_start();
                continue;
            }
            None => {
                out.push((rest.to_string(), String::new()));
                break;
            }
        };
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').expect("closing quote in Dockerfile");
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(' ').unwrap_or((after, "")),
        };
        out.push((key.to_string(), value.to_string()));
        rest = after.trim_start();
    }
    out
}

/// The `cargo build ...` command in a shell line, up to the next `&&`.
fn cargo_build(line: &str) -> String {
    let start = line.find("cargo build").expect("a cargo build command");
    let cmd = &line[start..];
    let end = cmd.find("&&").unwrap_or(cmd.len());
    cmd[..end].split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn dockerfile_describes_the_same_image_as_hack_image_sh() {
    let (stage, build) = dockerfile();
    let script = std::fs::read_to_string(repo().join("hack/image.sh")).expect("read image.sh");
    let script_build = script
        .lines()
        .find(|l| l.trim_start().starts_with("cargo build"))
        .expect("image.sh runs cargo build");
    assert_eq!(
        cargo_build(&build),
        cargo_build(script_build),
        "the Dockerfile and hack/image.sh build the binary differently"
    );

    assert_eq!(stage.from, "scratch", "both images start empty");
    let (_, config) = manifest_and_config();
    let c = &config["config"];
    assert_eq!(Some(stage.user.as_str()), c["User"].as_str());
    let entrypoint: Value = serde_json::from_str(&stage.entrypoint).expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint, c["Entrypoint"]);
    assert!(
        c["ExposedPorts"][format!("{}/tcp", stage.expose)].is_object(),
        "EXPOSE {} vs {c:#}",
        stage.expose
    );
    let labels = c["Labels"].as_object().expect("image labels");
    let keys = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    let mut image_keys: Vec<String> = labels.keys().cloned().collect();
    image_keys.sort();
    assert_eq!(keys(&stage.labels), image_keys, "the same label keys");
    for (key, value) in &stage.labels {
        // ${ARG} labels take the build's values; the fixed ones must match.
        let expected = match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
            Some(arg) if arg == "VERSION" => stage.args.get(arg).cloned().unwrap_or_default(),
            Some(_) => continue,
            None => value.clone(),
        };
        assert_eq!(labels[key], expected, "label {key}");
    }
    assert_eq!(
        stage.args.get("VERSION").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION")),
        "the Dockerfile's VERSION is Cargo.toml's"
    );
}

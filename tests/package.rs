//! The package rules (`package::collect`, `package::build`, `SuffixFilter`): which files go in,
//! and that the `.tgz` is byte-reproducible whatever the mtimes, permissions or location.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use mfbatch::launch::package::{
    self, collect, Manifest, SkipReason, Skipped, SuffixFilter, FIXED_MTIME,
};
use support::{sha256_hex, write_file};

const DEFAULT_SUFFIXES: &str = mfbatch::settings::DEFAULT_PACKAGE_SUFFIXES;

#[test]
fn suffix_filter_table() {
    // (suffix list, file name, in the package?)
    let cases = [
        (DEFAULT_SUFFIXES, "step.py", true),
        (DEFAULT_SUFFIXES, "STEP.PY", true),
        (DEFAULT_SUFFIXES, "model.R", true),
        (DEFAULT_SUFFIXES, "model.r", true),
        (DEFAULT_SUFFIXES, "fit.rds", true),
        (DEFAULT_SUFFIXES, "fit.RDS", true),
        (DEFAULT_SUFFIXES, "fit.Rds", true),
        (DEFAULT_SUFFIXES, "step.pyc", false),
        (DEFAULT_SUFFIXES, "step.py.bak", false),
        (DEFAULT_SUFFIXES, "notes.txt", false),
        (DEFAULT_SUFFIXES, "py", false),
        (DEFAULT_SUFFIXES, "Makefile", false),
        (".py, .Sh ,", "run.sh", true),
        (".py, .Sh ,", "RUN.SH", true),
        (".py, .Sh ,", "step.py", true),
        (".py, .Sh ,", "model.R", false),
        ("", "step.py", false),
        (".json", "config.JSON", true),
    ];
    for (list, name, want) in cases {
        assert_eq!(
            SuffixFilter::parse(list).matches(name),
            want,
            "suffixes {list:?}, file {name:?}"
        );
    }
    assert_eq!(
        SuffixFilter::parse(DEFAULT_SUFFIXES).describe(),
        ".py,.r,.rds"
    );
}

fn paths(manifest: &Manifest) -> Vec<&str> {
    manifest.files.iter().map(|f| f.path.as_str()).collect()
}

fn skipped(path: &str, reason: SkipReason) -> Skipped {
    Skipped {
        path: path.to_owned(),
        reason,
    }
}

#[test]
fn collect_skips_hidden_pycache_and_links_that_leave_the_root() {
    let outside = tempfile::tempdir().unwrap();
    write_file(outside.path(), "secret.py", "x = 1\n");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for rel in [
        "step.py",
        "lib/util.py",
        "lib/data.R",
        "lib/model.rds",
        "notes.txt",
        ".hidden.py",
        ".venv/site.py",
        "lib/.cache/cached.py",
        "__pycache__/step.cpython-311.pyc",
        "lib/__pycache__/util.py",
    ] {
        write_file(root, rel, rel);
    }
    symlink("lib/util.py", root.join("link_inside.py")).unwrap();
    symlink("lib", root.join("linked_dir")).unwrap();
    symlink(outside.path().join("secret.py"), root.join("outside.py")).unwrap();
    symlink(outside.path(), root.join("outside_dir")).unwrap();
    symlink("missing.py", root.join("dangling.py")).unwrap();
    symlink(".", root.join("loop")).unwrap();

    let manifest = collect(root, &SuffixFilter::parse(DEFAULT_SUFFIXES)).unwrap();
    assert_eq!(
        paths(&manifest),
        [
            "lib/data.R",
            "lib/model.rds",
            "lib/util.py",
            "link_inside.py",
            "linked_dir/data.R",
            "linked_dir/model.rds",
            "linked_dir/util.py",
            "step.py",
        ]
    );
    assert_eq!(
        manifest.skipped,
        [
            skipped("dangling.py", SkipReason::BrokenLink),
            skipped("loop", SkipReason::BrokenLink),
            skipped("outside.py", SkipReason::LinkOutsideRoot),
            skipped("outside_dir", SkipReason::LinkOutsideRoot),
        ]
    );
    let link = manifest
        .files
        .iter()
        .find(|f| f.path == "link_inside.py")
        .unwrap();
    assert_eq!(
        link.size,
        "lib/util.py".len() as u64,
        "a followed link packages its target's bytes"
    );
    assert!(manifest.contains("step.py") && !manifest.contains(".hidden.py"));
}

#[test]
fn entries_are_sorted_by_path_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Created in an order unlike the expected one.
    for rel in [
        "b.py", "a/z.py", "a.py", "B.py", "a-b.py", "a/b/c.py", "_x.py",
    ] {
        write_file(dir.path(), rel, rel);
    }
    let manifest = collect(dir.path(), &SuffixFilter::parse(".py")).unwrap();
    assert_eq!(
        paths(&manifest),
        ["B.py", "_x.py", "a-b.py", "a.py", "a/b/c.py", "a/z.py", "b.py"]
    );
}

/// Builds the package of `root`; returns its SHA-256 and bytes.
fn build(root: &Path) -> (String, Vec<u8>) {
    let manifest = collect(root, &SuffixFilter::parse(DEFAULT_SUFFIXES)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let built = package::build(&manifest, &out.path().join("p.tgz")).unwrap();
    let bytes = fs::read(&built.path).unwrap();
    assert_eq!(
        built.sha256,
        sha256_hex(&bytes),
        "the reported hash is the file's"
    );
    assert_eq!(built.size, bytes.len() as u64);
    (built.sha256, bytes)
}

fn sample_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "step.py", "print('hi')\n");
    write_file(dir.path(), "pkg/__init__.py", "");
    write_file(dir.path(), "pkg/model.py", "W = [1, 2, 3]\n");
    write_file(dir.path(), "pkg/fit.R", "fit <- function() 1\n");
    write_file(dir.path(), "run.py", "#!/usr/bin/env python3\n");
    set_mode(&dir.path().join("run.py"), 0o755);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Copies the regular files of `from` into `to`, in reverse order, with `mode(original)`.
fn copy_tree(from: &Path, to: &Path, mode: impl Fn(u32) -> u32) {
    let mut files: Vec<_> = walk(from);
    files.reverse();
    for rel in files {
        let source = from.join(&rel);
        let dest = write_file(to, &rel, fs::read(&source).unwrap());
        let original = fs::metadata(&source).unwrap().permissions().mode() & 0o777;
        set_mode(&dest, mode(original));
    }
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_same_code_gives_the_same_bytes() {
    let tree = sample_tree();
    let (sha, bytes) = build(tree.path());
    assert_eq!(build(tree.path()), (sha.clone(), bytes), "build twice");

    // Other mtimes.
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for rel in walk(tree.path()) {
        let file = fs::File::options()
            .write(true)
            .open(tree.path().join(rel))
            .unwrap();
        file.set_modified(past).unwrap();
    }
    assert_eq!(build(tree.path()).0, sha, "after touching every file");

    // Another place, another creation order, other group/other bits (as another umask gives);
    // only the owner's execute bit counts.
    for mode in [
        |m: u32| m & 0o700,
        |m: u32| m | 0o066,
        |m: u32| (m & 0o700) | 0o050,
    ] {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(tree.path(), copy.path(), mode);
        assert_eq!(build(copy.path()).0, sha, "a copy with other permissions");
    }
}

#[test]
fn content_and_the_owner_execute_bit_change_the_hash() {
    let tree = sample_tree();
    let (sha, _) = build(tree.path());

    write_file(tree.path(), "pkg/model.py", "W = [1, 2, 4]\n");
    let (changed, _) = build(tree.path());
    assert_ne!(changed, sha, "other content");

    set_mode(&tree.path().join("step.py"), 0o744);
    let (executable, _) = build(tree.path());
    assert_ne!(executable, changed, "step.py became executable");

    write_file(tree.path(), "pkg/new.py", "");
    assert_ne!(build(tree.path()).0, executable, "a new (empty) file");

    write_file(tree.path(), "README.md", "not packaged");
    assert_eq!(build(tree.path()).0, build(tree.path()).0);
}

#[test]
fn the_archive_has_fixed_owner_time_and_modes() {
    let tree = sample_tree();
    let (_, bytes) = build(tree.path());
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "gzip header time is zero");

    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry.path().unwrap().display().to_string();
        assert_eq!(header.entry_type(), tar::EntryType::Regular, "{path}");
        assert_eq!(
            (header.uid().unwrap(), header.gid().unwrap()),
            (0, 0),
            "{path}"
        );
        assert_eq!(header.username().unwrap().unwrap_or(""), "", "{path}");
        assert_eq!(header.groupname().unwrap().unwrap_or(""), "", "{path}");
        assert_eq!(header.mtime().unwrap(), FIXED_MTIME, "{path}");
        assert_eq!(FIXED_MTIME, 315_532_800);
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(
            content,
            fs::read(tree.path().join(&path)).unwrap(),
            "{path}"
        );
        seen.push((path, header.mode().unwrap()));
    }
    let want = [
        ("pkg/__init__.py", 0o644),
        ("pkg/fit.R", 0o644),
        ("pkg/model.py", 0o644),
        ("run.py", 0o755),
        ("step.py", 0o644),
    ];
    assert_eq!(seen, want.map(|(p, m)| (p.to_owned(), m)));
}

/// A built package's entries: `(path, bytes)`.
fn entries(tgz: &Path) -> Vec<(String, Vec<u8>)> {
    let gz = flate2::read::GzDecoder::new(fs::File::open(tgz).unwrap());
    let mut archive = tar::Archive::new(gz);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (e.path().unwrap().display().to_string(), bytes)
        })
        .collect()
}

#[test]
fn a_file_that_changes_size_after_the_walk_fails_the_build() {
    for (name, change) in [
        ("shrank", b"short".as_slice()),
        ("grew", b"a good deal longer than it was".as_slice()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "step.py", "print('hi')\n");
        let data = write_file(dir.path(), "data.py", "twelve bytes");
        let manifest = collect(dir.path(), &SuffixFilter::parse(".py")).unwrap();
        fs::write(&data, change).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = package::build(&manifest, &out.path().join("p.tgz")).unwrap_err();
        assert!(
            matches!(&err, mfbatch::error::PackageError::Changed { path, reason }
                if path.ends_with("data.py") && reason.contains(name)),
            "{name}: {err:?}"
        );
    }
    // Unchanged, the same manifest builds and holds exactly the bytes.
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "data.py", "twelve bytes");
    let manifest = collect(dir.path(), &SuffixFilter::parse(".py")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let built = package::build(&manifest, &out.path().join("p.tgz")).unwrap();
    assert_eq!(
        entries(&built.path),
        [("data.py".to_owned(), b"twelve bytes".to_vec())]
    );
}

#[test]
fn fifos_and_other_special_files_are_skipped_not_read() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "step.py", "print('hi')\n");
    let fifo = dir.path().join("pipe.py");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    symlink("pipe.py", dir.path().join("link_to_pipe.py")).unwrap();

    let manifest = collect(dir.path(), &SuffixFilter::parse(".py")).unwrap();
    assert_eq!(paths(&manifest), ["step.py"]);
    assert_eq!(
        manifest.skipped,
        [
            skipped("link_to_pipe.py", SkipReason::NotRegularFile),
            skipped("pipe.py", SkipReason::NotRegularFile),
        ]
    );

    // A file replaced by a FIFO after the walk fails the build instead of blocking it.
    let mut manifest = collect(dir.path(), &SuffixFilter::parse(".py")).unwrap();
    manifest.files[0].source = fifo;
    let out = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let target = out.path().join("p.tgz");
    std::thread::spawn(move || {
        let _ = tx.send(package::build(&manifest, &target).map(|_| ()));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the build does not block on a FIFO");
    assert!(
        matches!(result, Err(mfbatch::error::PackageError::Changed { .. })),
        "{result:?}"
    );
}

#[test]
fn names_that_are_not_utf8_are_skipped_and_never_merged() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "step.py", "print('hi')\n");
    // Latin-1 "café.py" and "cafè.py": both would be "caf\u{FFFD}.py" if converted lossily.
    for name in [b"caf\xe9.py".as_slice(), b"caf\xe8.py".as_slice()] {
        fs::write(dir.path().join(OsStr::from_bytes(name)), name).unwrap();
    }
    fs::create_dir(dir.path().join(OsStr::from_bytes(b"d\xff"))).unwrap();
    fs::write(
        dir.path().join(OsStr::from_bytes(b"d\xff")).join("in.py"),
        "x",
    )
    .unwrap();

    let manifest = collect(dir.path(), &SuffixFilter::parse(".py")).unwrap();
    assert_eq!(paths(&manifest), ["step.py"]);
    assert_eq!(manifest.skipped.len(), 3, "{:?}", manifest.skipped);
    assert!(manifest
        .skipped
        .iter()
        .all(|s| s.reason == SkipReason::NonUtf8Name));
}

#[test]
fn two_files_behind_one_archive_path_fail_the_build() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "a.py", "a");
    write_file(dir.path(), "b.py", "b");
    let mut manifest = collect(dir.path(), &SuffixFilter::parse(".py")).unwrap();
    manifest.files[1].path = "a.py".into();
    let out = tempfile::tempdir().unwrap();
    let err = package::build(&manifest, &out.path().join("p.tgz")).unwrap_err();
    assert!(
        matches!(&err, mfbatch::error::PackageError::DuplicatePath { path, .. } if path == "a.py"),
        "{err:?}"
    );
}

#[test]
fn packaging_stops_when_cancelled() {
    use std::sync::atomic::AtomicBool;
    let dir = sample_tree();
    let cancel = AtomicBool::new(true);
    let filter = SuffixFilter::parse(DEFAULT_SUFFIXES);
    assert!(matches!(
        package::collect_cancellable(dir.path(), &filter, &cancel),
        Err(mfbatch::error::PackageError::Cancelled)
    ));
    let manifest = collect(dir.path(), &filter).unwrap();
    let out = tempfile::tempdir().unwrap();
    assert!(matches!(
        package::build_cancellable(&manifest, &out.path().join("p.tgz"), &cancel),
        Err(mfbatch::error::PackageError::Cancelled)
    ));
}

//! Packaging throughput: mfbatch's reproducible `.tgz` of a generated tree (5,000 files, 50 MB)
//! against `tar czf` of the same tree, in the same run; also the peak memory of packaging.
//!
//! `cargo bench --bench package` (add `-- --files N --mb M --runs R` to change the tree).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mfbatch::launch::package::{build, collect, SuffixFilter};
use support::{arg, median, ms, peak_rss_kib};

fn main() {
    let (files, mb, runs) = (arg("--files", 5000), arg("--mb", 50), arg("--runs", 5));
    let tree = tempfile::tempdir().expect("temp dir");
    generate_tree(tree.path(), files, mb * 1024 * 1024);
    let out = tempfile::tempdir().expect("temp dir");
    let filter = SuffixFilter::parse(".py,.R,.RDS");

    let rss_before = peak_rss_kib();
    let mut ours = Vec::new();
    let mut size = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let manifest = collect(tree.path(), &filter).expect("collect");
        let built = build(&manifest, &out.path().join("p.tgz")).expect("build");
        ours.push(start.elapsed());
        size = built.size;
    }
    let rss_after = peak_rss_kib();

    let mut tar = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let status = Command::new("tar")
            .args(["czf", out.path().join("t.tgz").to_str().unwrap(), "-C"])
            .arg(tree.path())
            .arg(".")
            .status()
            .expect("tar runs");
        assert!(status.success());
        tar.push(start.elapsed());
    }
    // The same compression level as ours, for a like-for-like view.
    let mut tar_fast = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let status = Command::new("tar")
            .args([
                "-I",
                "gzip -1",
                "-cf",
                out.path().join("t1.tgz").to_str().unwrap(),
                "-C",
            ])
            .arg(tree.path())
            .arg(".")
            .status()
            .expect("tar runs");
        assert!(status.success());
        tar_fast.push(start.elapsed());
    }
    let (ours, tar, tar_fast) = (median(&mut ours), median(&mut tar), median(&mut tar_fast));
    let input = (mb * 1024 * 1024) as f64 / 1e6;
    println!("tree: {files} files, {mb} MiB; runs: {runs} (median)");
    println!(
        "mfbatch package: {:>8.1} ms  {:>6.1} MB/s  -> {:.1} MiB",
        ms(ours),
        input / ours.as_secs_f64(),
        size as f64 / 1048576.0
    );
    println!(
        "tar czf:         {:>8.1} ms  {:>6.1} MB/s",
        ms(tar),
        input / tar.as_secs_f64()
    );
    println!(
        "tar -I 'gzip -1': {:>7.1} ms  {:>6.1} MB/s",
        ms(tar_fast),
        input / tar_fast.as_secs_f64()
    );
    println!(
        "ratio against tar 'gzip -1': {:.2}",
        ours.as_secs_f64() / tar_fast.as_secs_f64()
    );
    println!(
        "ratio (mfbatch / tar czf time): {:.2}",
        ours.as_secs_f64() / tar.as_secs_f64()
    );
    println!(
        "peak RSS of the process: {} KiB before packaging, {} KiB after",
        rss_before, rss_after
    );
}

/// Python-like sources: half compressible text, half random bytes, spread over nested dirs.
fn generate_tree(root: &Path, files: usize, total_bytes: usize) {
    let mut rng = fastrand::Rng::with_seed(7);
    let per_file = total_bytes / files;
    for i in 0..files {
        let dir = root.join(format!("pkg{}/sub{}", i % 50, i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let mut body = Vec::with_capacity(per_file);
        while body.len() < per_file / 2 {
            body.extend_from_slice(
                format!(
                    "def f_{i}_{}(x):\n    return x * {}\n",
                    body.len(),
                    rng.u32(..)
                )
                .as_bytes(),
            );
        }
        while body.len() < per_file {
            body.push(rng.u8(..));
        }
        std::fs::write(dir.join(format!("mod_{i}.py")), body).unwrap();
    }
}

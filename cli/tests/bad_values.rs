//! Absurd values on the command line are errors that name the flag or field and its limit
//! (exit code 1), never a panic (exit code 101): time values, thread counts, TLS files.

use std::path::PathBuf;
use std::process::Command;

fn teacher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/teachers/llama_linear")
}

/// Runs edkd with `args`; returns (exit code, stderr).
fn edkd(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edkd"))
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(args: &[&str], needles: &[&str]) {
    let (code, stderr) = edkd(args);
    assert_eq!(code, Some(1), "{args:?}: exit {code:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: `{n}` not in\n{stderr}");
    }
}

#[test]
fn time_values_are_validated_not_panicked_on() {
    let model = teacher().display().to_string();
    for value in ["-1", "NaN", "1e300", "inf"] {
        let flag = format!("--max-wait-ms={value}");
        let args = [
            "teacher",
            "serve",
            "--model",
            &model,
            "--listen",
            "127.0.0.1:0",
            &flag,
        ];
        assert_refused(&args, &["--max-wait-ms", "milliseconds in [0, 10000]"]);
    }
    for value in ["-1", "NaN", "0", "1e300"] {
        let flag = format!("--timeout={value}");
        let tokenizer = teacher().join("tokenizer.json").display().to_string();
        let args = [
            "teacher",
            "query",
            &flag,
            "--text",
            "a b c",
            "--tokenizer",
            &tokenizer,
        ];
        assert_refused(&args, &["--timeout", "seconds in (0, 86400]"]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run").display().to_string();
    for value in ["-1", "nan", "inf"] {
        let set = format!("teacher.timeout_s={value}");
        let args = [
            "train",
            "--out",
            &out,
            "--set",
            "data.manifest=x",
            "--set",
            &set,
        ];
        assert_refused(&args, &["`teacher.timeout_s`", "(0, 86400]"]);
    }
    for value in ["-1", "nan"] {
        let flag = format!("--idle-timeout-s={value}");
        let args = ["teacher", "serve", "--model", &model, &flag];
        assert_refused(&args, &["--idle-timeout-s"]);
    }
}

#[test]
fn thread_counts_are_capped_by_the_cores() {
    let model = teacher().display().to_string();
    assert_refused(
        &["teacher", "serve", "--model", &model, "--threads", "100000"],
        &["--threads 100000", "cores of this machine"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run").display().to_string();
    assert_refused(
        &[
            "train",
            "--out",
            &out,
            "--set",
            "data.manifest=x",
            "--set",
            "threads=100000",
        ],
        &["`threads`", "cores of this machine"],
    );
}

#[test]
fn bad_tls_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let one = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let two = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = tmp.path().join("server-cert.pem");
    let key = tmp.path().join("other-key.pem");
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&cert, one.cert.pem()).unwrap();
    std::fs::write(&key, two.signing_key.serialize_pem()).unwrap();
    std::fs::write(&junk, "not a pem file").unwrap();
    let model = teacher().display().to_string();
    let path = |p: &PathBuf| p.display().to_string();
    let serve = |c: &PathBuf, k: &PathBuf| {
        let (c, k) = (path(c), path(k));
        let args = [
            "teacher",
            "serve",
            "--model",
            &model,
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
        ];
        edkd(
            &args
                .map(str::to_owned)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    };
    let (code, stderr) = serve(&cert, &key);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("other-key.pem is not the private key of the certificate in")
            && stderr.contains("server-cert.pem"),
        "{stderr}"
    );
    let (code, stderr) = serve(&junk, &key);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("junk.pem: holds no `-----BEGIN CERTIFICATE-----`"),
        "{stderr}"
    );
    let (code, stderr) = serve(&cert, &junk);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("junk.pem: no PEM private key"), "{stderr}");
    let tokenizer = teacher().join("tokenizer.json").display().to_string();
    let junk = path(&junk);
    assert_refused(
        &[
            "teacher",
            "query",
            "--tls-ca",
            &junk,
            "--text",
            "a b",
            "--tokenizer",
            &tokenizer,
        ],
        &["junk.pem: holds no"],
    );
}

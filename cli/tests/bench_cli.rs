//! `edkd bench efficiency` end to end on the tiny preset with no Python to be found: every
//! measurement in a worker process, the CSV, the options JSON and the figure under
//! `--out`, the summary on stdout.

use std::process::Command;

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Width and height from a PNG's IHDR chunk (the first, right after the signature).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(PNG_MAGIC), "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn efficiency_bench_writes_csv_json_and_figure_without_python() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edkd"))
        .args([
            "bench",
            "efficiency",
            "--preset",
            "tiny",
            "--input-lengths",
            "8,16",
            "--new-tokens",
            "4",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out",
        ])
        .arg(dir.path())
        .env("EDKD_PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("tiny student") && stdout.contains("paper:"),
        "{stdout}"
    );
    assert_eq!(stderr.matches("measuring ").count(), 4, "{stderr}");

    let csv = std::fs::read_to_string(dir.path().join("efficiency-tiny.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows[0].starts_with("8,4,") && rows[1].starts_with("16,4,"),
        "{csv}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("efficiency-tiny.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["input_lengths"], serde_json::json!([8, 16]));
    let png = std::fs::read(dir.path().join("efficiency-tiny.png")).unwrap();
    assert_eq!(png_size(&png), (1320, 520));
}

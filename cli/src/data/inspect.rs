//! `edkd data inspect`: a prepared dataset folder, or a teacher-logit cache folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use edkd_data::manifest::{Manifest, Verify};
use edkd_data::tokenizer::Tokenizer;
use edkd_data::{CacheReader, Dataset, OpenOptions, inspect};

#[derive(Parser)]
pub struct Args {
    /// A folder written by `edkd data prepare`, or a teacher-logit cache folder written by
    /// `edkd teacher annotate` (format, packing, bytes per target position, a few rows).
    dir: PathBuf,
    /// Tokenizer to decode examples with (default: tokenizer.json in or next to DIR, if its
    /// sha256 matches the manifest).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Examples to decode per split.
    #[arg(long, default_value_t = 3)]
    examples: usize,
    /// Also check every shard's sha256 against the manifest (a cache: decode every row).
    #[arg(long)]
    verify: bool,
}

/// A folder without a manifest holding `cache-*.arrow` shards is a teacher-logit cache.
fn is_cache(dir: &std::path::Path) -> bool {
    !dir.join("manifest.json").exists()
        && std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("cache-") && name.ends_with(".arrow")
            })
        })
}

fn inspect_cache(a: &Args) -> anyhow::Result<()> {
    let reader = CacheReader::open(&a.dir)?;
    print!("{}", reader.describe(a.examples)?);
    if a.verify {
        println!("all {} rows decode", reader.verify()?);
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if is_cache(&a.dir) {
        return inspect_cache(&a);
    }
    let manifest = Manifest::load(&a.dir)?;
    print!("{}", inspect::summary(&manifest));
    let tokenizer = match &a.tokenizer {
        Some(path) => Some(Tokenizer::load(path)?),
        None => find_tokenizer(&a.dir, &manifest.tokenizer.sha256),
    };
    for split in manifest.splits.keys() {
        let mut options = OpenOptions::new(split);
        options.verify = if a.verify {
            Verify::Full
        } else {
            Verify::RowCounts
        };
        let ds =
            Dataset::open(&a.dir, &options).with_context(|| format!("opening split {split}"))?;
        if a.verify {
            println!("\n[{split}] all shard checksums match");
        }
        match &tokenizer {
            Some(t) if a.examples > 0 => {
                println!(
                    "\n[{split}] first {} examples:",
                    a.examples.min(ds.len() as usize)
                );
                print!("{}", inspect::decode_examples(&ds, t, a.examples)?);
            }
            _ => {}
        }
    }
    if tokenizer.is_none() {
        println!("\n(no tokenizer with a matching sha256 found; pass --tokenizer to decode)");
    }
    Ok(())
}

fn find_tokenizer(dir: &std::path::Path, sha256: &str) -> Option<Tokenizer> {
    let candidates = [
        Some(dir.join("tokenizer.json")),
        dir.parent().map(|p| p.join("tokenizer.json")),
    ];
    candidates
        .into_iter()
        .flatten()
        .filter_map(|p| Tokenizer::load(&p).ok())
        .find(|t| t.sha256 == sha256)
}

//! Helpers shared by the integration tests: running the real `slim` binary, finding the
//! bundled data, reading outputs with a third-party reader, and (in [`cluster`]) running
//! coordinator and worker processes on the real RabbitMQ.

#![allow(dead_code)]

pub mod cluster;

// Not every test binary runs a cluster.
#[allow(unused_imports)]
pub use cluster::{
    Cluster, Metrics, Proc, Role, WAIT, amqp_url, assert_complete_once, json_lines, probe_parts,
};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The team's Amazon data folder (`../shared/data/amazon`), or `SLIM_DATA_DIR`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("SLIM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data/amazon"))
}

/// Runs `slim ARGS` from the repository root.
pub fn slim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slim"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the slim binary runs")
}

/// Runs `slim ARGS` and insists on success.
pub fn slim_ok(args: &[&str]) -> String {
    let out = slim(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "slim {args:?} failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Reads a Parquet file with pyarrow (a real third-party reader) and returns
/// `{"rows": N, "columns": [...], "types": {...}}` plus `extra` evaluated per table
/// (a Python expression over `t`, a pyarrow Table).
pub fn pyarrow_describe(path: &Path, extra: &str) -> serde_json::Value {
    let script = format!(
        r#"
import json, sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
out = {{"rows": t.num_rows, "columns": t.column_names, "types": {{f.name: str(f.type) for f in t.schema}},
        "compression": pq.ParquetFile(sys.argv[1]).metadata.row_group(0).column(0).compression}}
out["extra"] = {extra}
print(json.dumps(out))
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3 runs (install pyarrow: pip install pyarrow)");
    assert!(
        out.status.success(),
        "pyarrow could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pyarrow printed JSON")
}

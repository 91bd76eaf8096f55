//! The run on Azure Blob Storage, against Azurite (the Azure emulator, started here as a real
//! server on 127.0.0.1): inputs uploaded through the Blob API, the binary configured only by
//! the standard variables (`AZURE_STORAGE_USE_EMULATOR`, `AZURITE_BLOB_STORAGE_URL`), outputs
//! read back and compared with a local run. S3 has its own test (tests/it/s3.rs).
//!
//! Needs `SEGMENTER_EMULATORS` (scripts/setup-emulators.sh prints it; .ci/run sets it when
//! npm can install them, and says so when it cannot).
//! Google Cloud Storage is not tested: see README, "Object storage".

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bin, describe, pipeline, read_table, segmenter, shop};

const DATE: &str = "2026-10-31";

fn emulators() -> Option<PathBuf> {
    match std::env::var_os("SEGMENTER_EMULATORS") {
        Some(dir) => Some(PathBuf::from(dir)),
        // .ci/run sets it unless the emulators could not be installed (it says so).
        None => {
            eprintln!("SKIPPED: set SEGMENTER_EMULATORS=$(scripts/setup-emulators.sh) to run it");
            None
        }
    }
}

/// Azurite's blob service on a free port of 127.0.0.1, storing in a temporary directory,
/// stopped when dropped.
struct Azurite {
    child: Child,
    port: u16,
    emulators: PathBuf,
    _data: tempfile::TempDir,
}

impl Azurite {
    fn start(emulators: &Path) -> Azurite {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(emulators.join("node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(data.path())
            .args(["--silent", "--skipApiVersionCheck", "--loose"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Azurite did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Azurite {
            child,
            port,
            emulators: emulators.to_path_buf(),
            _data: data,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// scripts/azurite_upload.js with `args` after the account URL.
    fn blob_tool(&self, args: &[&str]) {
        let out = Command::new("node")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/azurite_upload.js"
            ))
            .arg(format!("{}/devstoreaccount1", self.base()))
            .args(args)
            .env("NODE_PATH", self.emulators.join("node_modules"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// segmenter with only Azurite's settings in the `AZURE_*` environment.
    fn segmenter(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = bin();
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AZURE") {
                cmd.env_remove(&k);
            }
        }
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", self.base())
            .output()
            .unwrap()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[test]
fn run_against_azurite_matches_the_local_run() {
    let Some(emulators) = emulators() else { return };
    let azurite = Azurite::start(&emulators);
    let data = shop().to_str().unwrap().to_string();
    azurite.blob_tool(&["shop", &data, "raw/"]);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("azure.toml");
    std::fs::write(
        &p,
        "[inputs]\norders = \"az://shop/raw/orders/\"\nevents = \"az://shop/raw/events/\"\n\
         customers = \"az://shop/raw/customers/\"\n[output]\nroot = \"az://shop/seg/\"\n",
    )
    .unwrap();
    let run = azurite.segmenter(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    assert!(run.status.success(), "{}", describe(&run));
    assert!(String::from_utf8_lossy(&run.stdout)
        .contains("az://shop/seg/_runs/2026-10-31/manifest.json"));
    // A rerun of the date replaces the attempt (the lock, conditional writes, the cleanup).
    let again = azurite.segmenter(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    assert!(again.status.success(), "{}", describe(&again));

    let back = tmp.path().join("back");
    azurite.blob_tool(&["shop", "--download", "seg/", back.to_str().unwrap()]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(back.join(format!("_runs/{DATE}/manifest.json"))).unwrap(),
    )
    .unwrap();
    let run_id = manifest["run_id"].as_str().unwrap();
    let files = crate::common::parquet_files(&back.join("customer_segments"));
    assert_eq!(files.len(), 1, "one attempt left: {files:?}");
    assert!(files[0].to_string_lossy().contains(run_id));
    assert!(
        !back.join(format!("_runs/{DATE}/_lock")).exists(),
        "lock released"
    );

    let local_out = tmp.path().join("local");
    let lp = pipeline(tmp.path(), shop(), &local_out, "");
    let local = segmenter(&["run", "--pipeline", lp.to_str().unwrap(), "--date", DATE]);
    assert!(local.status.success(), "{}", describe(&local));
    assert_eq!(
        read_table(&back.join("customer_segments")),
        read_table(&local_out.join("customer_segments")),
        "Azure and local customer_segments differ"
    );
}

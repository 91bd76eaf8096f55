//! The same run against a real S3-compatible server: an in-process s3s-fs server on
//! 127.0.0.1 (signature-checked with a fixed key pair), inputs uploaded through the S3 API,
//! the binary configured only through the standard `AWS_*` variables, outputs read back
//! through the S3 API and compared with a local run of the same shop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Float64Type, Int32Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use futures::TryStreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

use crate::common::{bin, describe, parquet_files, pipeline, read_table, segmenter, shop};

const ACCESS_KEY: &str = "SEGMENTERTESTKEY";
const SECRET_KEY: &str = "segmenter-integration-test-secret";
const REGION: &str = "us-east-1";
const RAW: &str = "shop-raw";
const MARTS: &str = "shop-marts";
const DATE: &str = "2026-10-31";
/// A run that has not finished by then is hung (e.g. retrying a failing request): kill it.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// An s3s-fs server on 127.0.0.1:<random port>, serving a temporary directory (one
/// subdirectory per bucket), for as long as this value lives.
struct S3Server {
    port: u16,
    /// A second listener on 127.0.0.1 in front of the same server that injects faults
    /// ([`Faults`]); `segmenter_via_faults` points the binary at it.
    faulty_port: u16,
    faults: Arc<Faults>,
    _root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The test's own runtime, for client calls.
    rt: tokio::runtime::Runtime,
}

impl S3Server {
    fn start(buckets: &[&str]) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir(root.path().join(b)).unwrap();
        }
        let fs_root = root.path().to_path_buf();
        let faults = Arc::new(Faults::default());
        let faults_in_server = Arc::clone(&faults);
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("s3s-fs".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(async move {
                    let fs = s3s_fs::FileSystem::new(&fs_root).expect("s3s-fs root");
                    let mut b = S3ServiceBuilder::new(fs);
                    b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                    let service = b.build();
                    let listener = TcpListener::bind(("127.0.0.1", 0))
                        .await
                        .expect("bind 127.0.0.1:0");
                    let front = TcpListener::bind(("127.0.0.1", 0))
                        .await
                        .expect("bind 127.0.0.1:0");
                    addr_tx
                        .send((listener.local_addr().unwrap(), front.local_addr().unwrap()))
                        .unwrap();
                    let http = ConnBuilder::new(TokioExecutor::new());
                    tokio::spawn(serve_with_faults(front, service.clone(), faults_in_server));
                    let mut stop = std::pin::pin!(stop_rx);
                    loop {
                        let socket = tokio::select! {
                            res = listener.accept() => match res {
                                Ok((socket, _)) => socket,
                                Err(_) => continue,
                            },
                            _ = &mut stop => break,
                        };
                        let conn = http
                            .serve_connection(TokioIo::new(socket), service.clone())
                            .into_owned();
                        tokio::spawn(async move {
                            // A client hanging up mid-request is not the test's concern.
                            conn.await.ok();
                        });
                    }
                });
                // Dropping the runtime here cancels the connections still open.
            })
            .unwrap();
        let (addr, faulty) = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("s3s-fs server did not start");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        S3Server {
            port: addr.port(),
            faulty_port: faulty.port(),
            faults,
            _root: root,
            stop: Some(stop_tx),
            thread: Some(thread),
            rt,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client for `bucket`, configured explicitly (not from this process's environment).
    fn bucket(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_bucket_name(bucket)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap()
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Uploads every Parquet file of `dir` (a local directory) to `bucket` under `prefix`,
    /// keeping the relative layout (e.g. `dt=2025-01/part-0.parquet`). Returns the keys.
    fn upload_dir(&self, dir: &Path, bucket: &str, prefix: &str) -> Vec<String> {
        let store = self.bucket(bucket);
        let mut keys = Vec::new();
        for file in parquet_files(dir) {
            let rel = file
                .strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .replace('\\', "/");
            let key = format!("{prefix}{rel}");
            let data = Bytes::from(std::fs::read(&file).unwrap());
            self.block_on(store.put(&ObjectPath::from(key.as_str()), PutPayload::from(data)))
                .unwrap_or_else(|e| panic!("uploading {key}: {e}"));
            keys.push(key);
        }
        assert!(
            !keys.is_empty(),
            "nothing to upload under {}",
            dir.display()
        );
        keys
    }

    fn list(&self, bucket: &str, prefix: &str) -> Vec<ObjectMeta> {
        let store = self.bucket(bucket);
        let prefix = ObjectPath::from(prefix);
        let mut all: Vec<ObjectMeta> = self
            .block_on(store.list(Some(&prefix)).try_collect())
            .unwrap_or_else(|e| panic!("listing s3://{bucket}/{prefix}: {e}"));
        all.sort_by(|a, b| a.location.cmp(&b.location));
        all
    }

    fn get(&self, bucket: &str, key: &str) -> Option<Bytes> {
        let store = self.bucket(bucket);
        self.block_on(async {
            match store.get(&ObjectPath::from(key)).await {
                Ok(r) => Some(
                    r.bytes()
                        .await
                        .unwrap_or_else(|e| panic!("reading s3://{bucket}/{key}: {e}")),
                ),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("getting s3://{bucket}/{key}: {e}"),
            }
        })
    }

    /// Runs the binary through the fault-injecting listener (see [`Faults`]).
    fn segmenter_via_faults(&self, args: &[&str]) -> Output {
        self.segmenter_at(&format!("http://127.0.0.1:{}", self.faulty_port), args)
    }

    /// Runs the binary with only this server's credentials and endpoint in the `AWS_*`
    /// environment (every inherited `AWS_*` and proxy variable removed).
    fn segmenter(&self, args: &[&str]) -> Output {
        self.segmenter_at(&self.endpoint(), args)
    }

    fn segmenter_at(&self, endpoint: &str, args: &[&str]) -> Output {
        let mut cmd = bin();
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name.starts_with("AWS_") || name.to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(&k);
            }
        }
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", REGION);
        output_within(cmd, RUN_TIMEOUT)
    }
}

/// What the fault-injecting listener does to each request: with probability `percent` / 100
/// one of three faults, in turn by a hash of the request's number: a 503 (S3's "slow down"), a
/// connection dropped before any response (reset), or a stall of 4 s (longer than the runs'
/// request timeout in these tests) before a 503. With `deny_writes`, every PUT, POST and
/// DELETE gets 403 AccessDenied (a read-only bucket); reads pass.
#[derive(Debug, Default)]
struct Faults {
    percent: AtomicU32,
    deny_writes: AtomicBool,
    requests: AtomicU64,
    injected: AtomicU64,
}

#[derive(Debug, PartialEq)]
enum Fault {
    Unavailable,
    Reset,
    Stall,
    Denied,
}

impl Faults {
    fn next(&self, method: &hyper::Method) -> Option<Fault> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let fault = if self.deny_writes.load(Ordering::SeqCst)
            && matches!(
                *method,
                hyper::Method::PUT | hyper::Method::POST | hyper::Method::DELETE
            ) {
            Some(Fault::Denied)
        } else {
            // splitmix64 of the request number: a fixed, well-spread sequence.
            let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let kind = match (z / 100) % 3 {
                0 => Fault::Unavailable,
                1 => Fault::Reset,
                _ => Fault::Stall,
            };
            ((z % 100) < u64::from(self.percent.load(Ordering::SeqCst))).then_some(kind)
        };
        if fault.is_some() {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        fault
    }
}

/// Serves `listener` with `service` behind the faults of `faults`.
async fn serve_with_faults(
    listener: TcpListener,
    service: s3s::service::S3Service,
    faults: Arc<Faults>,
) {
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let (service, faults) = (service.clone(), Arc::clone(&faults));
        let front = hyper::service::service_fn(
            move |req: hyper::Request<hyper::body::Incoming>| {
                let (service, faults) = (service.clone(), Arc::clone(&faults));
                async move {
                    let error = |status: u16, code: &str| {
                        let body = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
                    );
                        hyper::Response::builder()
                            .status(status)
                            .body(s3s::Body::from(body))
                            .map_err(std::io::Error::other)
                    };
                    match faults.next(req.method()) {
                        None => hyper::service::Service::call(&service, req)
                            .await
                            .map_err(|e| std::io::Error::other(format!("{e:?}"))),
                        Some(Fault::Unavailable) => error(503, "SlowDown"),
                        Some(Fault::Denied) => error(403, "AccessDenied"),
                        Some(Fault::Reset) => {
                            Err(std::io::Error::other("connection dropped by the test"))
                        }
                        Some(Fault::Stall) => {
                            tokio::time::sleep(Duration::from_secs(4)).await;
                            error(503, "SlowDown")
                        }
                    }
                }
            },
        );
        let conn = http
            .serve_connection(TokioIo::new(socket), front)
            .into_owned();
        tokio::spawn(async move {
            conn.await.ok();
        });
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // Err only if the server thread is already gone.
            stop.send(()).ok();
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the s3s-fs server thread panicked");
            }
        }
    }
}

/// Runs `cmd` to completion, killing it (by its own pid) if it takes longer than `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn segmenter");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver is gone only if the test already gave up on this run.
        tx.send(child.wait_with_output()).ok();
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for segmenter"),
        Err(_) => {
            let killed = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let out = rx
                .recv_timeout(Duration::from_secs(30))
                .ok()
                .and_then(Result::ok);
            panic!(
                "segmenter did not finish within {limit:?}; kill -9 {pid}: {killed:?}\n{}",
                out.as_ref().map(describe).unwrap_or_default()
            );
        }
    }
}

fn s3_pipeline(dir: &Path, orders: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join("pipeline-s3.toml");
    std::fs::write(
        &p,
        format!(
            "[inputs]\norders = \"{orders}\"\nevents = \"s3://{RAW}/events/\"\ncustomers = \"s3://{RAW}/customers/\"\n\n\
             [output]\nroot = \"s3://{MARTS}/seg/\"\n{extra}\n"
        ),
    )
    .unwrap();
    p
}

/// Uploads the generated shop's orders/, events/ (with its dt=YYYY-MM/ directories) and
/// customers/ to s3://shop-raw/.
fn upload_shop(server: &S3Server) -> BTreeMap<&'static str, Vec<String>> {
    let mut keys = BTreeMap::new();
    for table in ["orders", "events", "customers"] {
        keys.insert(
            table,
            server.upload_dir(&shop().join(table), RAW, &format!("{table}/")),
        );
    }
    assert!(
        keys["events"].iter().all(|k| k.starts_with("events/dt=")),
        "events keep their Hive layout: {:?}",
        keys["events"]
    );
    keys
}

fn read_parquet_bytes(data: Bytes, what: &str) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(data)
        .unwrap_or_else(|e| panic!("{what} is not Parquet: {e}"))
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Checks the CONTRACT columns of customer_segments and returns (customer_id → segment_id).
fn check_segments(segs: &RecordBatch, ctx: &str) -> BTreeMap<String, i32> {
    for (name, ty) in crate::common::CONTRACT_COLUMNS {
        let field = segs
            .schema()
            .field_with_name(name)
            .cloned()
            .unwrap_or_else(|_| {
                panic!(
                    "customer_segments lacks column {name}: {:?}\n{ctx}",
                    segs.schema()
                )
            });
        assert_eq!(field.data_type(), ty, "type of {name}\n{ctx}");
    }
    let text = |name: &str| {
        segs.column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .clone()
    };
    let one_of = |name: &str, allowed: &[&str]| {
        for (i, v) in text(name).iter().enumerate() {
            let v = v.unwrap_or_else(|| panic!("{name} is null at row {i}\n{ctx}"));
            assert!(
                allowed.contains(&v),
                "{name} = {v:?} at row {i}, expected one of {allowed:?}\n{ctx}"
            );
        }
    };
    for &(name, allowed) in crate::common::CONTRACT_VOCABULARIES {
        one_of(name, allowed);
    }

    let churn = segs
        .column_by_name("churn_risk_score")
        .unwrap()
        .as_primitive::<Float64Type>();
    for (i, v) in churn.iter().enumerate() {
        let v = v.unwrap_or_else(|| panic!("churn_risk_score null at row {i}"));
        assert!(
            (0.0..=1.0).contains(&v),
            "churn_risk_score {v} at row {i} outside [0,1]\n{ctx}"
        );
    }
    let value = segs
        .column_by_name("value_score")
        .unwrap()
        .as_primitive::<Float64Type>();
    for (i, v) in value.iter().enumerate() {
        let v = v.unwrap_or_else(|| panic!("value_score null at row {i}"));
        assert!(
            v.is_finite() && v >= 0.0,
            "value_score {v} at row {i}\n{ctx}"
        );
    }

    let ids = text("customer_id");
    let names = text("segment");
    let seg_ids = segs
        .column_by_name("segment_id")
        .unwrap()
        .as_primitive::<Int32Type>();
    let mut out = BTreeMap::new();
    let mut name_of: BTreeMap<i32, String> = BTreeMap::new();
    for i in 0..segs.num_rows() {
        let id = ids.value(i).to_string();
        let seg = seg_ids.value(i);
        let name = names.value(i);
        assert!(!name.is_empty(), "empty segment name at row {i}");
        let known = name_of.entry(seg).or_insert_with(|| name.to_string());
        assert_eq!(known, name, "segment_id {seg} carries two names\n{ctx}");
        assert!(
            out.insert(id.clone(), seg).is_none(),
            "customer {id} appears twice\n{ctx}"
        );
    }
    out
}

fn manifest_files<'a>(manifest: &'a serde_json::Value, table: &str) -> Vec<&'a str> {
    manifest["outputs"][table]
        .as_array()
        .unwrap_or_else(|| {
            panic!(
                "manifest.outputs.{table} is not a list: {:#}",
                manifest["outputs"]
            )
        })
        .iter()
        .map(|v| v.as_str().expect("file URL"))
        .collect()
}

#[test]
fn run_against_s3_matches_the_local_run() {
    let server = S3Server::start(&[RAW, MARTS]);
    let uploaded = upload_shop(&server);
    let tmp = tempfile::tempdir().unwrap();

    // The S3 run.
    let p = s3_pipeline(tmp.path(), &format!("s3://{RAW}/orders/"), "");
    let out = server.segmenter(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    let ctx = describe(&out);
    assert_eq!(out.status.code(), Some(0), "S3 run failed\n{ctx}");

    // The local run of the same shop.
    let local_out = tmp.path().join("local-out");
    let lp = pipeline(tmp.path(), shop(), &local_out, "");
    let local = segmenter(&["run", "--pipeline", lp.to_str().unwrap(), "--date", DATE]);
    assert!(
        local.status.success(),
        "local run failed\n{}",
        describe(&local)
    );

    // The manifest: published, parseable, and lists exactly the files that are there.
    let manifest_key = format!("seg/_runs/{DATE}/manifest.json");
    let manifest_bytes = server.get(MARTS, &manifest_key).unwrap_or_else(|| {
        panic!(
            "no s3://{MARTS}/{manifest_key}; objects: {:?}\n{ctx}",
            server.list(MARTS, "seg")
        )
    });
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest_bytes).expect("manifest.json parses");
    assert_eq!(manifest["run_date"], DATE, "manifest.run_date\n{ctx}");
    assert!(
        server
            .get(MARTS, &format!("seg/_runs/{DATE}/_lock"))
            .is_none(),
        "the run lock must be released\n{ctx}"
    );
    let seg_prefix = format!("seg/customer_segments/run_date={DATE}/");
    let listed: Vec<&str> = manifest_files(&manifest, "customer_segments");
    assert!(
        !listed.is_empty(),
        "manifest lists no customer_segments file\n{manifest:#}\n{ctx}"
    );
    let present: BTreeSet<String> = server
        .list(MARTS, &seg_prefix)
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    let listed_keys: BTreeSet<String> = listed
        .iter()
        .map(|u| {
            u.strip_prefix(&format!("s3://{MARTS}/"))
                .unwrap_or_else(|| panic!("manifest file {u} is not under s3://{MARTS}/"))
                .to_string()
        })
        .collect();
    assert_eq!(
        listed_keys, present,
        "manifest customer_segments vs objects in the bucket\n{ctx}"
    );

    // Inputs were all found through S3 listing (incl. the Hive dt= directories).
    let local_manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(local_out.join(format!("_runs/{DATE}/manifest.json"))).unwrap(),
    )
    .unwrap();
    for table in ["orders", "events", "customers"] {
        let (s3, loc) = (&manifest["inputs"][table], &local_manifest["inputs"][table]);
        assert_eq!(
            s3["files"].as_u64(),
            Some(uploaded[table].len() as u64),
            "inputs.{table}.files\n{s3:#}\n{ctx}"
        );
        assert_eq!(
            s3["location"],
            format!("s3://{RAW}/{table}/"),
            "inputs.{table}.location\n{ctx}"
        );
        for k in [
            "rows_in_files",
            "rows_used",
            "rows_after_cutoff",
            "bytes",
            "rejected",
        ] {
            assert_eq!(s3[k], loc[k], "inputs.{table}.{k}: S3 vs local\n{ctx}");
        }
    }

    // customer_segments, read through the S3 API.
    let mut batches = Vec::new();
    for key in &present {
        batches.extend(read_parquet_bytes(server.get(MARTS, key).unwrap(), key));
    }
    let segs = concat_batches(&batches[0].schema(), &batches).unwrap();
    let s3_assign = check_segments(&segs, &ctx);
    let local_segs = read_table(&local_out.join(format!("customer_segments/run_date={DATE}")));
    let local_assign = check_segments(&local_segs, &describe(&local));
    assert_eq!(
        segs.num_rows(),
        600,
        "one row per customer of the 600-customer shop\n{ctx}"
    );
    assert_eq!(
        manifest["customers"].as_u64(),
        Some(600),
        "manifest.customers\n{ctx}"
    );
    assert_eq!(
        s3_assign.len(),
        local_assign.len(),
        "customers: S3 vs local\n{ctx}"
    );
    let differing: Vec<_> = local_assign
        .iter()
        .filter(|(id, seg)| s3_assign.get(*id) != Some(seg))
        .take(10)
        .collect();
    assert!(
        differing.is_empty(),
        "segment assignments differ between the S3 and local runs, e.g. {differing:?}\n{ctx}"
    );

    // Exports: one CSV per segment, every customer in exactly one of them.
    let export_prefix = format!("seg/exports/run_date={DATE}/");
    let all_csvs: Vec<ObjectMeta> = server.list(MARTS, &export_prefix);
    let csvs: Vec<&ObjectMeta> = all_csvs
        .iter()
        .filter(|m| m.location.as_ref().contains("/segment_"))
        .collect();
    let k = manifest["clustering"]["k"].as_u64().expect("clustering.k") as usize;
    assert_eq!(
        csvs.len(),
        k,
        "one export per segment: {:?}\n{ctx}",
        csvs.iter()
            .map(|m| m.location.to_string())
            .collect::<Vec<_>>()
    );
    // … besides the default exports (retention, prospects, customer_match).
    assert_eq!(all_csvs.len(), k + 3, "{all_csvs:?}\n{ctx}");
    assert_eq!(
        manifest_files(&manifest, "exports").len(),
        k + 3,
        "manifest lists every export\n{ctx}"
    );
    let mut exported = BTreeSet::new();
    for m in csvs {
        let key = m.location.to_string();
        assert!(key.ends_with(".csv"), "{key}");
        let text = String::from_utf8(server.get(MARTS, &key).unwrap().to_vec()).unwrap();
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .is_some_and(|h| h.starts_with("customer_id,email,segment,")),
            "{key}: header: {:?}",
            text.lines().next()
        );
        for line in lines {
            let id = line.split(',').next().unwrap().to_string();
            assert!(s3_assign.contains_key(&id), "{key}: unknown customer {id}");
            assert!(exported.insert(id.clone()), "{id} exported twice");
        }
    }
    assert_eq!(
        exported.len(),
        600,
        "every customer is in one export\n{ctx}"
    );

    // A rerun of the date on S3 publishes a new manifest and deletes the first attempt's
    // files (list + delete through the S3 API), with the same assignments.
    let again = server.segmenter(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    let ctx2 = describe(&again);
    assert_eq!(again.status.code(), Some(0), "S3 rerun failed\n{ctx2}");
    let manifest2: serde_json::Value = serde_json::from_slice(
        &server
            .get(MARTS, &manifest_key)
            .expect("manifest after rerun"),
    )
    .expect("manifest.json parses");
    assert_ne!(
        manifest2["run_id"], manifest["run_id"],
        "the rerun publishes its own manifest\n{ctx2}"
    );
    for (table, prefix) in [
        ("customer_segments", &seg_prefix),
        ("exports", &export_prefix),
    ] {
        let listed: BTreeSet<String> = manifest_files(&manifest2, table)
            .iter()
            .map(|u| {
                u.strip_prefix(&format!("s3://{MARTS}/"))
                    .unwrap()
                    .to_string()
            })
            .collect();
        let present: BTreeSet<String> = server
            .list(MARTS, prefix)
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        assert_eq!(
            listed, present,
            "{table}: after the rerun only its files remain\n{ctx2}"
        );
    }
    let mut batches = Vec::new();
    for f in manifest_files(&manifest2, "customer_segments") {
        let key = f.strip_prefix(&format!("s3://{MARTS}/")).unwrap();
        batches.extend(read_parquet_bytes(server.get(MARTS, key).unwrap(), key));
    }
    let segs2 = concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(
        check_segments(&segs2, &ctx2),
        s3_assign,
        "rerun assignments"
    );
}

#[test]
fn s3_held_lock_exits_5_and_is_left_alone() {
    let server = S3Server::start(&[RAW, MARTS]);
    upload_shop(&server);
    // A live holder on another machine: an hour of its lease left.
    let (lock_key, body) = put_lease(
        &server,
        "someone-else",
        chrono::Duration::zero(),
        chrono::Duration::hours(1),
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = s3_pipeline(tmp.path(), &format!("s3://{RAW}/orders/"), "");
    let out = server.segmenter(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    let ctx = describe(&out);
    assert_eq!(
        out.status.code(),
        Some(5),
        "a held lock (create-only put refused) must exit 5\n{ctx}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("s3://{MARTS}/{lock_key}")),
        "stderr names the lock\n{ctx}"
    );
    assert!(
        stderr.contains("someone-else"),
        "stderr shows who holds it\n{ctx}"
    );
    assert_eq!(
        server.get(MARTS, &lock_key).as_deref(),
        Some(body.as_bytes()),
        "the other run's lock must be left as it was\n{ctx}"
    );
    assert_nothing_published(&server, "seg/customer_segments", &ctx);
}

#[test]
fn s3_orders_prefix_without_files_exits_2_naming_the_key() {
    let server = S3Server::start(&[RAW, MARTS]);
    upload_shop(&server);
    let tmp = tempfile::tempdir().unwrap();
    // `order/` is a string prefix of the real `orders/` keys, but not a directory of them.
    let empty = format!("s3://{RAW}/order/");
    let p = s3_pipeline(tmp.path(), &empty, "");
    let out = server.segmenter(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    let ctx = describe(&out);
    assert_eq!(out.status.code(), Some(2), "{ctx}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("inputs.orders"),
        "stderr must name the key inputs.orders\n{ctx}"
    );
    assert!(
        stderr.contains(&empty),
        "stderr must name the location {empty}\n{ctx}"
    );
    assert!(
        server
            .get(MARTS, &format!("seg/_runs/{DATE}/manifest.json"))
            .is_none(),
        "a failed run must not publish\n{ctx}"
    );
    assert!(
        server
            .get(MARTS, &format!("seg/_runs/{DATE}/_lock"))
            .is_none(),
        "a failed run must release its lock\n{ctx}"
    );
}

/// Writes the lock of DATE as held by `run_id` on another machine, started `started` ago and
/// expiring `expires_in` from now (negative: already expired); returns its key and body.
fn put_lease(
    server: &S3Server,
    run_id: &str,
    started: chrono::Duration,
    expires_in: chrono::Duration,
) -> (String, String) {
    let key = format!("seg/_runs/{DATE}/_lock");
    let now = chrono::Utc::now();
    let body = serde_json::json!({
        "format": 1,
        "run_id": run_id,
        "host": "another-host",
        "pid": 4242,
        "started_at": (now - started).to_rfc3339(),
        "expires_at": (now + expires_in).to_rfc3339(),
    })
    .to_string();
    server
        .block_on(server.bucket(MARTS).put(
            &ObjectPath::from(key.as_str()),
            PutPayload::from(body.clone()),
        ))
        .unwrap();
    (key, body)
}

/// No manifest for DATE, and no object under `prefix` of the marts bucket.
fn assert_nothing_published(server: &S3Server, prefix: &str, ctx: &str) {
    assert!(
        server
            .get(MARTS, &format!("seg/_runs/{DATE}/manifest.json"))
            .is_none(),
        "nothing published\n{ctx}"
    );
    assert!(
        server.list(MARTS, prefix).is_empty(),
        "nothing written under {prefix}\n{ctx}"
    );
}

/// The published customer_segments of the S3 run, as one batch.
fn s3_segments(server: &S3Server) -> RecordBatch {
    let manifest: serde_json::Value = serde_json::from_slice(
        &server
            .get(MARTS, &format!("seg/_runs/{DATE}/manifest.json"))
            .expect("published"),
    )
    .unwrap();
    let url = manifest_files(&manifest, "customer_segments")[0].to_string();
    let key = url
        .trim_start_matches(&format!("s3://{MARTS}/"))
        .to_string();
    let batches = read_parquet_bytes(server.get(MARTS, &key).unwrap(), &url);
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Tight retry settings so that the failing runs end quickly.
const FAST_RETRIES: &str = "[storage]\nmax_retries = 10\nretry_timeout_seconds = 60\nrequest_timeout_seconds = 2\nconnect_timeout_seconds = 2\n";

#[test]
fn s3_faults_on_one_request_in_ten_are_retried_and_change_nothing() {
    let server = S3Server::start(&[RAW, MARTS]);
    upload_shop(&server);
    let tmp = tempfile::tempdir().unwrap();
    let local_out = tmp.path().join("local-out");
    let lp = pipeline(tmp.path(), shop(), &local_out, "");
    let local = segmenter(&["run", "--pipeline", lp.to_str().unwrap(), "--date", DATE]);
    assert!(local.status.success(), "{}", describe(&local));

    server.faults.percent.store(10, Ordering::SeqCst);
    let p = s3_pipeline(tmp.path(), &format!("s3://{RAW}/orders/"), FAST_RETRIES);
    let out =
        server.segmenter_via_faults(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    let ctx = describe(&out);
    let injected = server.faults.injected.load(Ordering::SeqCst);
    let requests = server.faults.requests.load(Ordering::SeqCst);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{injected} of {requests} requests faulted\n{ctx}"
    );
    assert!(
        injected >= 5,
        "too few faults to mean anything: {injected} of {requests}"
    );
    eprintln!("faults: {injected} of {requests} requests (503, reset, 4 s stall), run succeeded");
    assert_eq!(
        s3_segments(&server),
        read_table(&local_out.join("customer_segments")),
        "customer_segments differ from a clean run's\n{ctx}"
    );
}

#[test]
fn s3_failing_every_request_exits_4_within_the_retry_budget_and_publishes_nothing() {
    let server = S3Server::start(&[RAW, MARTS]);
    upload_shop(&server);
    let tmp = tempfile::tempdir().unwrap();
    server.faults.percent.store(100, Ordering::SeqCst);
    let budget = "[storage]\nmax_retries = 3\nretry_timeout_seconds = 10\nrequest_timeout_seconds = 2\nconnect_timeout_seconds = 2\n";
    let p = s3_pipeline(tmp.path(), &format!("s3://{RAW}/orders/"), budget);
    let started = std::time::Instant::now();
    let out =
        server.segmenter_via_faults(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    let took = started.elapsed();
    let ctx = describe(&out);
    assert_eq!(out.status.code(), Some(4), "{ctx}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("s3://{MARTS}/seg/")),
        "names the path\n{ctx}"
    );
    // Four tries of at most 2 s each plus backoff, well inside the 10 s retry budget + slack.
    assert!(took < Duration::from_secs(40), "took {took:?}\n{ctx}");
    server.faults.percent.store(0, Ordering::SeqCst);
    assert_nothing_published(&server, "seg/customer_segments", &ctx);
}

#[test]
fn s3_read_only_destination_exits_4_naming_the_path_and_publishes_nothing() {
    let server = S3Server::start(&[RAW, MARTS]);
    upload_shop(&server);
    let tmp = tempfile::tempdir().unwrap();
    server.faults.deny_writes.store(true, Ordering::SeqCst);
    let p = s3_pipeline(tmp.path(), &format!("s3://{RAW}/orders/"), FAST_RETRIES);
    let out =
        server.segmenter_via_faults(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    let ctx = describe(&out);
    assert_eq!(out.status.code(), Some(4), "{ctx}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("s3://{MARTS}/seg/_runs/{DATE}/_lock")),
        "names the path\n{ctx}"
    );
    assert_nothing_published(&server, "seg/", &ctx);
}

#[test]
fn s3_expired_lock_is_taken_over() {
    let server = S3Server::start(&[RAW, MARTS]);
    upload_shop(&server);
    // A holder on another machine that stopped renewing a minute ago.
    let (lock_key, _) = put_lease(
        &server,
        "crashed-elsewhere",
        chrono::Duration::hours(1),
        -chrono::Duration::minutes(1),
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = s3_pipeline(tmp.path(), &format!("s3://{RAW}/orders/"), "");
    let out = server.segmenter(&["run", "--pipeline", p.to_str().unwrap(), "--date", DATE]);
    let ctx = describe(&out);
    assert_eq!(out.status.code(), Some(0), "{ctx}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("taking over a stale run lock"),
        "{ctx}"
    );
    assert!(
        server
            .get(MARTS, &format!("seg/_runs/{DATE}/manifest.json"))
            .is_some(),
        "{ctx}"
    );
    assert!(
        server.get(MARTS, &lock_key).is_none(),
        "lock released\n{ctx}"
    );
}

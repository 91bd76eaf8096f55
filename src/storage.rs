//! URL → object store: one small builder per scheme, registered with DataFusion so SQL and our
//! own reads/writes go through the same store.
//!
//! Credentials and endpoints come from the standard environment variables (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`), never from the pipeline file; plain-HTTP endpoints are refused
//! unless `AWS_ALLOW_HTTP=true` (object_store enforces this).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::prelude::SessionContext;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use url::Url;

use crate::config::{Location, StorageParams};
use crate::error::{Error, Result};

/// A store plus the key prefix a [`Location`] points at.
#[derive(Debug, Clone)]
pub struct StoreRef {
    /// The object store serving the location's scheme and bucket.
    pub store: Arc<dyn ObjectStore>,
    /// The location's key prefix inside that store.
    pub prefix: ObjectPath,
    /// The location itself, for messages.
    pub location: Location,
}

impl StoreRef {
    /// The key of `name` (relative, may contain `/`) under this location.
    pub fn key(&self, name: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    /// The local file of `name` when this location is a `file://` URL (object_store's local
    /// store maps key `a/b` to `/a/b`), for what only the filesystem offers (atomic rename).
    pub fn local_path(&self, name: &str) -> Option<std::path::PathBuf> {
        (self.location.url().scheme() == "file")
            .then(|| std::path::PathBuf::from(format!("/{}", self.key(name))))
    }

    /// The full URL of `name` under this location, for messages and the manifest.
    pub fn url_of(&self, name: &str) -> String {
        self.location
            .join(name)
            .as_str()
            .trim_end_matches('/')
            .to_string()
    }
}

/// Builds (or reuses) the store for a location and registers it with `ctx`.
pub fn open(
    ctx: &SessionContext,
    location: &Location,
    settings: &StorageParams,
) -> Result<StoreRef> {
    let store = store(location, settings)?;
    ctx.register_object_store(&store_root(location.url()), Arc::clone(&store.store));
    Ok(store)
}

/// Builds (or reuses) the store for a location, for this process's own reads and writes.
pub fn store(location: &Location, settings: &StorageParams) -> Result<StoreRef> {
    let url = location.url();
    let store = build_store(url, settings)?;
    let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| {
        Error::config(
            None,
            format!("{} is not a valid object path: {e}", location.as_str()),
        )
    })?;
    Ok(StoreRef {
        store,
        prefix,
        location: location.clone(),
    })
}

/// The object stores of a process that serves queries for others (a Ballista scheduler or
/// executor): whatever `file://`, `s3://`, `gs://` or `az://` URL a query names, its store is
/// built on first use from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), as the run's own
/// stores are, and kept.
#[derive(Debug, Default)]
pub struct StoresOnDemand {
    settings: StorageParams,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl StoresOnDemand {
    /// Stores with `settings`' retries and timeouts.
    pub fn new(settings: StorageParams) -> StoresOnDemand {
        StoresOnDemand {
            settings,
            stores: Mutex::default(),
        }
    }
}

impl datafusion::execution::object_store::ObjectStoreRegistry for StoresOnDemand {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.insert(store_root(url).to_string(), store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.remove(store_root(url).as_str()).ok_or_else(|| {
            datafusion::common::DataFusionError::Execution(format!("no store for {url}"))
        })
    }

    fn get_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        let root = store_root(url);
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = stores.get(root.as_str()) {
            return Ok(Arc::clone(store));
        }
        if url.scheme() == "memory" {
            return Err(datafusion::common::DataFusionError::Execution(format!(
                "{url}: this process cannot read another process's memory:// store"
            )));
        }
        let store = build_store(url, &self.settings)
            .map_err(|e| datafusion::common::DataFusionError::Execution(e.to_string()))?;
        stores.insert(root.to_string(), Arc::clone(&store));
        Ok(store)
    }
}

/// `scheme://bucket` — the key DataFusion's registry uses for a store.
fn store_root(url: &Url) -> Url {
    let text = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    Url::parse(&text).unwrap_or_else(|_| url.clone())
}

fn build_store(url: &Url, settings: &StorageParams) -> Result<Arc<dyn ObjectStore>> {
    let (retry, timeouts) = (retry_config(settings), client_settings(settings));
    let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error> = match url.scheme() {
        "file" => Ok(Arc::new(LocalFileSystem::new())),
        "memory" => Ok(memory_store(url.host_str().unwrap_or_default())),
        "s3" => timeouts
            .iter()
            .fold(s3_builder(url).with_retry(retry), |b, (k, v)| {
                b.with_config(AmazonS3ConfigKey::Client(*k), v)
            })
            .build()
            .map(|s| Arc::new(s) as _),
        "gs" => timeouts
            .iter()
            .fold(gcs_builder(url).with_retry(retry), |b, (k, v)| {
                b.with_config(GoogleConfigKey::Client(*k), v)
            })
            .build()
            .map(|s| Arc::new(s) as _),
        "az" | "abfs" | "abfss" => timeouts
            .iter()
            .fold(azure_builder(url).with_retry(retry), |b, (k, v)| {
                b.with_config(AzureConfigKey::Client(*k), v)
            })
            .build()
            .map(|s| Arc::new(s) as _),
        other => {
            return Err(Error::config(
                None,
                format!("URL scheme `{other}` is not supported"),
            ))
        }
    };
    built.map_err(|e| {
        Error::config(
            None,
            format!(
                "cannot configure object storage for {url}: {e}; check the AWS_*/GOOGLE_*/AZURE_* environment variables"
            ),
        )
    })
}

/// object_store's retry policy with the pipeline's budget (backoff: its defaults, 100 ms
/// doubling up to 15 s).
fn retry_config(settings: &StorageParams) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: settings.max_retries,
        retry_timeout: Duration::from_secs(settings.retry_timeout_seconds),
    }
}

/// The timeouts as client settings: set key by key, so the `AWS_*`/`GOOGLE_*`/`AZURE_*`
/// client settings from the environment (e.g. `AWS_ALLOW_HTTP`) are kept.
fn client_settings(settings: &StorageParams) -> [(ClientConfigKey, String); 2] {
    [
        (
            ClientConfigKey::Timeout,
            format!("{}s", settings.request_timeout_seconds),
        ),
        (
            ClientConfigKey::ConnectTimeout,
            format!("{}s", settings.connect_timeout_seconds),
        ),
    ]
}

/// S3 (and S3-compatible servers): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, … from the environment; the bucket from the URL.
pub fn s3_builder(url: &Url) -> AmazonS3Builder {
    AmazonS3Builder::from_env().with_url(url.as_str())
}

/// Google Cloud Storage: `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS` etc.
pub fn gcs_builder(url: &Url) -> GoogleCloudStorageBuilder {
    GoogleCloudStorageBuilder::from_env().with_url(url.as_str())
}

/// Azure Blob Storage: `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, … .
pub fn azure_builder(url: &Url) -> MicrosoftAzureBuilder {
    MicrosoftAzureBuilder::from_env().with_url(url.as_str())
}

/// `memory://NAME` stores live for the process, one per name, so a run's inputs and outputs
/// in memory (tests, examples) are seen by every stage.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut guard = stores.lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(
        guard
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(InMemory::new())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn s3_bucket_comes_from_the_url() {
        let url = Url::parse("s3://shop-raw/orders/").unwrap();
        let store = s3_builder(&url).with_region("us-east-1").build().unwrap();
        assert!(store.to_string().contains("shop-raw"), "{store}");
    }

    #[test]
    fn memory_stores_are_shared_by_name() {
        let ctx = SessionContext::new();
        let a = open(
            &ctx,
            &Location::parse("memory://t1/a/", Path::new("/")).unwrap(),
            &StorageParams::default(),
        )
        .unwrap();
        let b = open(
            &ctx,
            &Location::parse("memory://t1/b/", Path::new("/")).unwrap(),
            &StorageParams::default(),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&a.store, &b.store));
        assert_eq!(a.key("x/y.parquet").as_ref(), "a/x/y.parquet");
        assert_eq!(a.url_of("x/y.parquet"), "memory://t1/a/x/y.parquet");
    }

    #[test]
    fn local_paths_map_to_keys() {
        let ctx = SessionContext::new();
        let s = open(
            &ctx,
            &Location::parse("/tmp/seg out/", Path::new("/")).unwrap(),
            &StorageParams::default(),
        )
        .unwrap();
        assert_eq!(s.key("t/f.csv").as_ref(), "tmp/seg out/t/f.csv");
    }
}

//! The library's error type and its mapping to the exit codes CONTRACT.md promises.
//!
//! Every stage returns [`Result`]; the binary only calls [`Error::exit_code`]. Messages say what
//! was wrong, where (file, column, key, count) and what to do, and never carry personal data.

use datafusion::error::DataFusionError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file or command line is invalid (exit 2). Holds every problem found.
    #[error("invalid pipeline{}:\n  - {}", source_suffix(.file), .problems.join("\n  - "))]
    Config {
        /// The pipeline file, when there is one.
        file: Option<String>,
        /// Each problem, already phrased for the user.
        problems: Vec<String>,
    },
    /// Input data failed a schema or quality rule (exit 3).
    #[error("input rejected: {0}")]
    InputRejected(String),
    /// Object storage failed (exit 4).
    #[error("storage error while {context}: {source}")]
    Storage {
        /// What we were doing, with the (credential-free) location.
        context: String,
        /// The object_store error.
        #[source]
        source: object_store::Error,
    },
    /// The query engine failed (exit 4).
    #[error("query engine error while {context}: {source}")]
    Engine {
        /// What we were doing (which query, which table).
        context: String,
        /// The DataFusion error.
        #[source]
        source: Box<DataFusionError>,
    },
    /// Writing or reading Parquet failed (exit 4).
    #[error("parquet error while {context}: {source}")]
    Parquet {
        /// What we were doing.
        context: String,
        /// The parquet error.
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },
    /// The Ballista cluster could not be reached or stopped serving (exit 4).
    #[error("{0}")]
    Cluster(String),
    /// A model or the clustering could not be fitted (exit 4).
    #[error("model error: {0}")]
    Model(String),
    /// Another run holds the lock for this date (exit 5).
    #[error("the run lock {lock} is held by {holder}; wait for that run to finish (a lock whose process is gone from this host, or whose lease expired, is taken over automatically)")]
    Locked {
        /// Location of the lock object.
        lock: String,
        /// Who holds it: run id, host and pid, since and until when.
        holder: String,
    },
    /// A command used wrongly in a way only running it could tell, e.g. SQL the engine
    /// rejects (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Local I/O failed (exit 4).
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn source_suffix(file: &Option<String>) -> String {
    file.as_ref().map(|f| format!(" {f}")).unwrap_or_default()
}

impl Error {
    /// The process exit code CONTRACT.md assigns to this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config { .. } | Error::Usage(_) => 2,
            Error::InputRejected(_) => 3,
            Error::Storage { .. }
            | Error::Engine { .. }
            | Error::Parquet { .. }
            | Error::Model(_)
            | Error::Cluster(_)
            | Error::Io { .. } => 4,
            Error::Locked { .. } => 5,
        }
    }

    /// A configuration error with a single problem.
    pub fn config(file: Option<&str>, problem: impl Into<String>) -> Self {
        Error::Config {
            file: file.map(str::to_string),
            problems: vec![problem.into()],
        }
    }

    /// Wraps a DataFusion error with what we were doing. Schema and cast failures inside the
    /// engine are input problems, so they map to [`Error::InputRejected`].
    pub fn engine(context: impl Into<String>, source: DataFusionError) -> Self {
        let context = context.into();
        match source.find_root() {
            DataFusionError::ArrowError(e, _)
                if matches!(
                    **e,
                    datafusion::arrow::error::ArrowError::CastError(_)
                        | datafusion::arrow::error::ArrowError::ParseError(_)
                ) =>
            {
                Error::InputRejected(format!("{context}: {source}"))
            }
            _ => Error::Engine {
                context,
                source: Box::new(source),
            },
        }
    }

    /// Wraps an object_store error with what we were doing.
    pub fn storage(context: impl Into<String>, source: object_store::Error) -> Self {
        Error::Storage {
            context: context.into(),
            source,
        }
    }

    /// Wraps a parquet error with what we were doing.
    pub fn parquet(
        context: impl Into<String>,
        source: datafusion::parquet::errors::ParquetError,
    ) -> Self {
        Error::Parquet {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(Error::config(None, "x").exit_code(), 2);
        assert_eq!(Error::InputRejected("x".into()).exit_code(), 3);
        assert_eq!(Error::Model("x".into()).exit_code(), 4);
        let locked = Error::Locked {
            lock: "l".into(),
            holder: "h".into(),
        };
        assert_eq!(locked.exit_code(), 5);
    }

    #[test]
    fn config_error_lists_every_problem() {
        let e = Error::Config {
            file: Some("p.toml".into()),
            problems: vec!["a".into(), "b".into()],
        };
        let text = e.to_string();
        assert!(text.contains("p.toml") && text.contains("- a") && text.contains("- b"));
    }

    #[test]
    fn autotraits() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<Error>();
    }
}

//! Small value types that bridge.yaml spells in human terms: sizes (`1MiB`),
//! secrets that live outside the file (`{env: NAME}`, `{file: path}`), the MQTT
//! protocol version, and gRPC status codes by name.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// A size in bytes, written as a number or with a unit: `65536`, `64KiB`, `1 MB`.
/// `KiB`/`MiB`/`GiB` are powers of 1024; `KB`/`MB`/`GB` powers of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!(
                "{s:?} is not a size: write a whole number with an optional unit such as KiB or MB"
            )
        })?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" | "k" => 1024,
            "mb" => 1000 * 1000,
            "mib" | "m" => 1024 * 1024,
            "gb" => 1000 * 1000 * 1000,
            "gib" | "g" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?}: use B, KB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected a size such as 65536 or \"64KiB\""))?
        {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// A credential given inline, or (better) read from the environment or a file.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Inline(String),
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret::Inline(<redacted>)"),
            Secret::Env(name) => write!(f, "Secret::Env({name})"),
            Secret::File(path) => write!(f, "Secret::File({})", path.display()),
        }
    }
}

impl Secret {
    /// Reads the secret's value; relative file paths are taken from `base`.
    /// A file's trailing newline is dropped (as Kubernetes secrets often have one).
    pub fn resolve(&self, base: &Path) -> Result<String, String> {
        match self {
            Secret::Inline(s) => Ok(s.clone()),
            Secret::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set (or not UTF-8)")),
            Secret::File(path) => {
                let full = base.join(path);
                std::fs::read_to_string(&full)
                    .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                    .map_err(|e| format!("cannot read {}: {e}", full.display()))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Source {
            env: Option<String>,
            file: Option<PathBuf>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Inline(String),
            Source(Source),
        }
        const EXPECTED: &str = "expected a string, {env: VARIABLE} or {file: path}";
        match Raw::deserialize(d).map_err(|_| de::Error::custom(EXPECTED))? {
            Raw::Inline(s) => Ok(Secret::Inline(s)),
            Raw::Source(Source {
                env: Some(e),
                file: None,
            }) => Ok(Secret::Env(e)),
            Raw::Source(Source {
                env: None,
                file: Some(f),
            }) => Ok(Secret::File(f)),
            Raw::Source(_) => Err(de::Error::custom(EXPECTED)),
        }
    }
}

/// The MQTT protocol version the bridge speaks to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        let text = match &v {
            serde_yaml::Value::String(s) => s.trim().trim_start_matches(['v', 'V']).to_string(),
            serde_yaml::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match text.as_str() {
            "3.1.1" | "4" => Ok(Protocol::V311),
            "5" | "5.0" => Ok(Protocol::V5),
            _ => Err(de::Error::custom("protocol must be \"3.1.1\" or \"5\"")),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        })
    }
}

/// A gRPC status code by its canonical name, in snake case (`unavailable`,
/// `deadline_exceeded`, ...), for retry policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpcCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl GrpcCode {
    pub fn to_tonic(self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            GrpcCode::Cancelled => C::Cancelled,
            GrpcCode::Unknown => C::Unknown,
            GrpcCode::InvalidArgument => C::InvalidArgument,
            GrpcCode::DeadlineExceeded => C::DeadlineExceeded,
            GrpcCode::NotFound => C::NotFound,
            GrpcCode::AlreadyExists => C::AlreadyExists,
            GrpcCode::PermissionDenied => C::PermissionDenied,
            GrpcCode::ResourceExhausted => C::ResourceExhausted,
            GrpcCode::FailedPrecondition => C::FailedPrecondition,
            GrpcCode::Aborted => C::Aborted,
            GrpcCode::OutOfRange => C::OutOfRange,
            GrpcCode::Unimplemented => C::Unimplemented,
            GrpcCode::Internal => C::Internal,
            GrpcCode::Unavailable => C::Unavailable,
            GrpcCode::DataLoss => C::DataLoss,
            GrpcCode::Unauthenticated => C::Unauthenticated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!("65536".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("1 MB".parse::<ByteSize>().unwrap(), ByteSize(1_000_000));
        assert_eq!("2mib".parse::<ByteSize>().unwrap(), ByteSize::mib(2));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn protocol_accepts_common_spellings() {
        for (text, want) in [
            ("3.1.1", Protocol::V311),
            ("5", Protocol::V5),
            ("\"v5\"", Protocol::V5),
        ] {
            assert_eq!(
                serde_yaml::from_str::<Protocol>(text).unwrap(),
                want,
                "{text}"
            );
        }
        assert!(serde_yaml::from_str::<Protocol>("3").is_err());
    }

    #[test]
    fn secrets_come_from_inline_env_or_file() {
        assert_eq!(
            serde_yaml::from_str::<Secret>("pw").unwrap(),
            Secret::Inline("pw".into())
        );
        assert_eq!(
            serde_yaml::from_str::<Secret>("{env: X}").unwrap(),
            Secret::Env("X".into())
        );
        assert!(serde_yaml::from_str::<Secret>("{env: X, file: y}").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let s = Secret::File("pw".into());
        assert_eq!(s.resolve(dir.path()).unwrap(), "s3cret");
    }
}
